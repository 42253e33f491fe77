"""GemmaTextEmbedder (EmbeddingGemma) against sentence-transformers.

The oracle (tests/data/embedding_oracle.npz) and the tiny folder
(tests/data/st_tiny_embedding_gemma/) were written by
tests/data/make_embedding_oracle.py with transformers' Gemma3TextModel and
sentence-transformers' own modules; nothing here imports either.
"""

import json
import pathlib
import re

import numpy as np
import pytest

import keras_gemma
from keras_gemma import GemmaBackbone
from keras_gemma import GemmaTextEmbedder
from keras_gemma.backbone import CONFIG_DEFAULTS
from keras_gemma.backbone import GEMMA4_CONFIG_DEFAULTS
from keras_gemma.backbone import REQUIRED_CONFIG
from keras_gemma.text_embedder import MODEL_CARD_PROMPTS

DATA = pathlib.Path(__file__).resolve().parent / "data"
FOLDER = DATA / "st_tiny_embedding_gemma"
PRESET = pathlib.Path(__file__).resolve().parent.parent / "presets" / "embedding_gemma3_300m.json"
TOLERANCE = 1e-4

KERAS_HUB_PARAMETERS = 307_581_696  # keras-hub 0.32 gemma3_presets.py


@pytest.fixture(scope="module")
def oracle():
    return dict(np.load(DATA / "embedding_oracle.npz"))


@pytest.fixture(scope="module")
def embedder():
    return GemmaTextEmbedder.from_preset(str(FOLDER))


def _texts(oracle):
    return [str(t) for t in oracle["texts"]]


# -- the preset ------------------------------------------------------------------


def test_preset_matches_published_config(oracle):
    """Against the architecture keys of huggingface.co/google/embeddinggemma-300m's
    config.json, written out in the oracle script."""
    published = json.loads(str(oracle["published_config"]))
    preset = json.loads(PRESET.read_text())
    assert preset["name"] == "embedding_gemma3_300m"
    assert preset["name"] in keras_gemma.list_presets()
    b = preset["backbone"]
    # Gemma 1-3 presets leave Gemma 4's switches at their defaults.
    assert set(b) == set(REQUIRED_CONFIG) | (
        set(CONFIG_DEFAULTS) - set(GEMMA4_CONFIG_DEFAULTS)
    ) | {"use_bidirectional_attention"}
    assert b["vocabulary_size"] == published["vocab_size"]
    assert b["hidden_dim"] == published["hidden_size"]
    assert b["intermediate_dim"] == published["intermediate_size"]
    assert b["num_layers"] == published["num_hidden_layers"]
    assert b["num_query_heads"] == published["num_attention_heads"]
    assert b["num_key_value_heads"] == published["num_key_value_heads"]
    assert b["head_dim"] == published["head_dim"]
    assert b["query_pre_attn_scalar"] == published["query_pre_attn_scalar"]
    assert b["sliding_window_size"] == published["sliding_window"]
    assert b["sliding_window_pattern"] == published["sliding_window_pattern"]
    assert b["layer_norm_epsilon"] == published["rms_norm_eps"]
    assert b["rope_max_wavelength"] == published["rope_theta"]
    assert b["local_rope_max_wavelength"] == published["rope_local_base_freq"]
    assert b["use_bidirectional_attention"] is True
    assert b["use_query_key_norm"] and b["use_post_attention_norm"]
    assert preset["sequence_length"] == published["max_position_embeddings"]
    e = preset["embedder"]
    assert e["projection_dims"] == [3072, 768]
    assert e["projection_use_bias"] is False and e["normalize"] is True
    assert e["matryoshka_dims"] == [768, 512, 256, 128]
    assert e["prompts"] == MODEL_CARD_PROMPTS
    assert preset["sources"]["huggingface"] == "hf://google/embeddinggemma-300m"


def test_preset_parameter_count_matches_transformers(oracle):
    """transformers' Gemma3TextModel + sentence-transformers' Dense layers
    for the published config, counted on the meta device (cached)."""
    preset = json.loads(PRESET.read_text())
    text = int(oracle["published_text_parameters"])
    projections = int(oracle["published_projection_parameters"])
    assert GemmaBackbone.count_parameters(preset["backbone"]) == text
    assert GemmaTextEmbedder.count_parameters(
        preset["backbone"], preset["embedder"]["projection_dims"]
    ) == text + projections
    assert preset["parameters"] == text + projections == KERAS_HUB_PARAMETERS


def test_preset_parameter_count_matches_keras_hub():
    from test_presets import _keras_hub_presets

    keras_hub = _keras_hub_presets("gemma3")["embedding_gemma3_300m"]
    assert keras_hub["metadata"]["params"] == json.loads(PRESET.read_text())["parameters"]


@pytest.mark.slow
def test_preset_builds_with_published_count():
    embedder = GemmaTextEmbedder.from_preset(
        "embedding_gemma3_300m", load_weights=False, dtype="bfloat16")
    assert embedder.count_params() == KERAS_HUB_PARAMETERS
    assert embedder.matryoshka_dims == (768, 512, 256, 128)


# -- against sentence-transformers ------------------------------------------------


def test_folder_settings(embedder):
    assert embedder.projection_dims == (128, 32)
    assert embedder.normalize and embedder.add_bos and embedder.add_eos
    assert embedder.matryoshka_dims == (32, 16, 8)
    assert embedder.prompts["query"] == "task: search result | query: "
    assert embedder.backbone.use_bidirectional_attention


def test_long_texts_are_cut_as_sentence_transformers_does(embedder, oracle):
    prompt = embedder.prompts["query"]
    rows = embedder.tokenize([prompt + t for t in _texts(oracle)])
    assert max(len(r) for r in rows) == embedder.sequence_length == 48
    assert rows[1][-1] == embedder.tokenizer.eos_token_id


def test_token_ids_match_sentence_transformers(embedder, oracle):
    rows = embedder.tokenize(_texts(oracle))
    for row, ids, mask in zip(rows, oracle["token_ids"], oracle["padding_mask"]):
        assert row == ids[: mask.sum()].tolist()


@pytest.mark.parametrize("key, kwargs", [
    ("plain", {}),
    ("query", {"task": "query"}),
    ("document", {"task": "document"}),
    ("truncated_16", {"dim": 16}),
])
def test_embeddings_match_sentence_transformers(embedder, oracle, key, kwargs):
    embeddings = embedder.embed(_texts(oracle), **kwargs)
    assert embeddings.dtype == np.float32
    assert embeddings.shape == oracle[key].shape
    np.testing.assert_allclose(embeddings, oracle[key], atol=TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_batch_padding_does_not_change_embeddings(embedder, oracle):
    texts = _texts(oracle)
    alone = np.stack([embedder.embed(t) for t in texts])
    in_pairs = embedder.embed(texts, batch_size=2)
    np.testing.assert_allclose(alone, oracle["plain"], atol=TOLERANCE)
    np.testing.assert_allclose(in_pairs, oracle["plain"], atol=TOLERANCE)


def test_no_texts_give_an_empty_array(embedder):
    assert embedder.embed([], dim=8).shape == (0, 8)


def test_matryoshka_is_truncate_then_normalize(embedder, oracle):
    texts = _texts(oracle)
    full = embedder.embed(texts)
    for dim in (16, 8):
        cut = full[:, :dim] / np.linalg.norm(full[:, :dim], axis=1, keepdims=True)
        np.testing.assert_allclose(embedder.embed(texts, dim=dim), cut, atol=1e-6)


def test_prompts_and_titles(embedder, oracle):
    texts = _texts(oracle)
    np.testing.assert_allclose(
        embedder.embed_query(texts), oracle["query"], atol=TOLERANCE)
    np.testing.assert_allclose(
        embedder.embed_document(texts), oracle["document"], atol=TOLERANCE)
    titled = embedder.embed_document(texts[:2], titles=["Fox", None])
    by_hand = embedder.embed([
        "title: Fox | text: " + texts[0], "title: none | text: " + texts[1]])
    np.testing.assert_allclose(titled, by_hand, atol=1e-6)
    literal = embedder.embed(texts, prompt="task: search result | query: ")
    np.testing.assert_allclose(literal, oracle["query"], atol=TOLERANCE)


def test_model_card_prompts():
    assert MODEL_CARD_PROMPTS["query"] == "task: search result | query: "
    assert MODEL_CARD_PROMPTS["document"] == "title: none | text: "
    assert MODEL_CARD_PROMPTS["STS"] == "task: sentence similarity | query: "
    assert MODEL_CARD_PROMPTS["Classification"] == "task: classification | query: "
    assert MODEL_CARD_PROMPTS["Clustering"] == "task: clustering | query: "


# -- bidirectional attention ----------------------------------------------------------


def _hidden_states(backbone, token_ids):
    import keras

    hidden = backbone({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)})
    return np.asarray(keras.ops.convert_to_numpy(hidden))


def test_bidirectional_differs_from_causal(embedder, oracle):
    bidirectional = embedder.backbone
    config = {**bidirectional._config(), "use_bidirectional_attention": False}
    causal = GemmaBackbone(**config)
    causal.set_weights(bidirectional.get_weights())
    assert "use_bidirectional_attention" not in causal._config()
    ids = oracle["token_ids"][1:2, :20]
    changed = ids.copy()
    changed[0, -1] = 7
    # Causal: the first position never sees the last token.
    np.testing.assert_allclose(
        _hidden_states(causal, ids)[0, 0], _hidden_states(causal, changed)[0, 0], atol=1e-6)
    # Bidirectional: the global layer carries it back to the first position.
    difference = np.abs(
        _hidden_states(bidirectional, ids)[0, 0] - _hidden_states(bidirectional, changed)[0, 0])
    assert difference.max() > 1e-3
    assert np.abs(_hidden_states(causal, ids) - _hidden_states(bidirectional, ids)).max() > 1e-2


# -- config -------------------------------------------------------------------------


def test_get_config_round_trip(embedder, oracle):
    config = json.loads(json.dumps(embedder.get_config()))
    restored = GemmaTextEmbedder.from_config(config)
    assert restored.get_config() == embedder.get_config()
    assert restored.backbone.use_bidirectional_attention
    restored.set_weights(embedder.get_weights())
    restored.tokenizer = embedder.tokenizer
    np.testing.assert_allclose(
        restored.embed(_texts(oracle)), oracle["plain"], atol=TOLERANCE)


def test_docstring_example_runs():
    doc = GemmaTextEmbedder.__doc__
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    code = re.sub(r"^    ", "", code, flags=re.M)
    namespace = {}
    exec(compile(code, "GemmaTextEmbedder docstring", "exec"), namespace)
    assert namespace["vectors"].shape == (2, 16)
    assert namespace["queries"].shape == (32,)


# -- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("dim", [100, 64, 0, True, 16.0, "16"])
def test_unsupported_dim(embedder, dim):
    with pytest.raises(ValueError, match="Matryoshka sizes 32, 16, 8"):
        embedder.embed(["hello"], dim=dim)


@pytest.mark.parametrize("texts", ["", "   ", ["hello", ""]])
def test_empty_text(embedder, texts):
    with pytest.raises(ValueError, match="empty"):
        embedder.embed(texts)


def test_bad_task_and_prompt(embedder):
    with pytest.raises(ValueError, match="Unknown task 'search'.*query"):
        embedder.embed(["hello"], task="search")
    with pytest.raises(ValueError, match="not both"):
        embedder.embed(["hello"], task="query", prompt="x: ")
    with pytest.raises(TypeError, match="strings"):
        embedder.embed(["hello", 3])
    with pytest.raises(ValueError, match="2 titles for 1 documents"):
        embedder.embed_document(["hello"], titles=["a", "b"])


def test_embedder_is_not_a_causal_lm():
    with pytest.raises(ValueError, match="text embedding model.*GemmaTextEmbedder"):
        keras_gemma.GemmaCausalLM.from_preset(str(FOLDER))
    with pytest.raises(ValueError, match="text embedding model.*GemmaTextEmbedder"):
        keras_gemma.GemmaCausalLM.from_preset("embedding_gemma3_300m")


def test_causal_lm_is_not_an_embedder():
    with pytest.raises(ValueError, match="not a text embedding model.*GemmaCausalLM"):
        GemmaTextEmbedder.from_preset(str(DATA / "hf_tiny_gemma3"))
    with pytest.raises(ValueError, match="not a text embedding model.*GemmaCausalLM"):
        GemmaTextEmbedder.from_preset("gemma3_270m")
    causal = GemmaBackbone(
        vocabulary_size=640, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32, head_dim=8)
    with pytest.raises(ValueError, match="bidirectional"):
        GemmaTextEmbedder(causal, projection_dims=())


def test_bidirectional_backbone_cannot_generate(embedder):
    lm = keras_gemma.GemmaCausalLM(embedder.backbone)
    with pytest.raises(ValueError, match="cannot generate"):
        lm.generate({"token_ids": np.array([[2, 17, 0, 0]]),
                     "padding_mask": np.array([[1, 1, 0, 0]])}, max_length=4)


# -- folder variants ------------------------------------------------------------------


def _copy_folder(tmp_path):
    import shutil

    target = tmp_path / "embedder"
    shutil.copytree(FOLDER, target)
    return target


def _write(path, content):
    path.write_text(json.dumps(content))


def test_sentence_transformers_5_layout(tmp_path, oracle):
    """The published folder was written by sentence-transformers 5: other
    module paths, pooling flags, max_seq_length, tokenizer flags."""
    folder = _copy_folder(tmp_path)
    modules = json.loads((folder / "modules.json").read_text())
    for module, kind in zip(modules, ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]):
        module["type"] = f"sentence_transformers.models.{kind}"
    _write(folder / "modules.json", modules)
    _write(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False,
        "include_prompt": True})
    # 48, as the oracle's tokenizer: the longest prompted text is cut.
    _write(folder / "sentence_bert_config.json", {"max_seq_length": 48, "do_lower_case": False})
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    _write(folder / "tokenizer_config.json",
           {**tokenizer_config, "add_bos_token": True, "add_eos_token": True})
    (folder / "tokenizer.json").unlink()
    embedder = GemmaTextEmbedder.from_preset(str(folder))
    assert embedder.sequence_length == 48
    np.testing.assert_allclose(
        embedder.embed(_texts(oracle), task="query"), oracle["query"], atol=TOLERANCE)


def test_unsupported_pipelines(tmp_path):
    folder = _copy_folder(tmp_path)
    _write(folder / "1_Pooling" / "config.json", {"embedding_dimension": 32, "pooling_mode": "cls"})
    with pytest.raises(ValueError, match="pooling 'cls' is not supported"):
        GemmaTextEmbedder.from_preset(str(folder))
    folder = _copy_folder(tmp_path / "second")
    dense = json.loads((folder / "2_Dense" / "config.json").read_text())
    _write(folder / "2_Dense" / "config.json",
           {**dense, "activation_function": "torch.nn.modules.activation.ReLU"})
    with pytest.raises(ValueError, match="activation .*ReLU.* not supported"):
        GemmaTextEmbedder.from_preset(str(folder))
    (folder / "2_Dense" / "model.safetensors").unlink()
    _write(folder / "2_Dense" / "config.json", dense)
    with pytest.raises(FileNotFoundError, match="2_Dense: model.safetensors is missing"):
        GemmaTextEmbedder.from_preset(str(folder))


def test_keras_hub_embedding_preset_is_refused(tmp_path):
    folder = tmp_path / "keras_hub_embedding"
    folder.mkdir()
    _write(folder / "config.json", {
        "class_name": "Gemma3Backbone", "registered_name": "keras_hub>Gemma3Backbone",
        "config": {"is_embedding_model": True}})
    (folder / "model.weights.h5").write_bytes(b"")
    for load in (GemmaTextEmbedder.from_preset, keras_gemma.GemmaCausalLM.from_preset):
        with pytest.raises(ValueError, match="keras-hub EmbeddingGemma preset.*Hugging Face"):
            load(str(folder))


def test_bfloat16_embeddings_are_close(oracle):
    embedder = GemmaTextEmbedder.from_preset(str(FOLDER), dtype="bfloat16")
    embeddings = embedder.embed(_texts(oracle))
    assert embeddings.dtype == np.float32
    cosine = np.sum(embeddings * oracle["plain"], axis=1)
    assert cosine.min() > 0.99
