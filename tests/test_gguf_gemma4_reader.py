"""Our GGUF reader on Gemma 4 files (llama.cpp's ``gemma4`` layout).

Checked against things the reader did not compute:
- the original model: an f32 export reads back to the same network (same
  logits, same config); f16, bf16 and q8_0 ones within bounds measured here,
  and every stored weight within the error bound of its type;
- files laid out as llama.cpp's converter writes them where our writer
  differs (stacked expert gate/up projections, the unused keys of layers
  sharing keys and values, a ``"gemma4"`` vocabulary with merges), built
  here with the ``gguf`` package's writer; the vocabulary tokenizes as
  transformers does (tests/data/gemma4_tokenizer_oracle.json);
- a wrong norm convention in the reader is caught by these tests.
The exports themselves are checked against llama.cpp in test_export_gguf.py.
"""

import json
import re

import numpy as np
import pytest
from conftest import TESTS_DIR, to_numpy
from gguf_export_models import (
    GEMMA4_VARIANTS,
    cached_exports,
    gemma4_variant_model,
    storage_error_bound,
)
from tiny_models import PADDING_MASK, TOKEN_IDS

gguf = pytest.importorskip("gguf")

import keras_gemma  # noqa: E402
from keras_gemma.checkpoints import gguf as gguf_reader  # noqa: E402
from keras_gemma.checkpoints import gguf_gemma4  # noqa: E402
from keras_gemma.export import gguf as exporter  # noqa: E402
from keras_gemma.export.files import float_weights  # noqa: E402
from keras_gemma.layer_specs import layer_specs  # noqa: E402
from keras_gemma.tokenizer import GemmaTokenizer  # noqa: E402

Q = gguf.GGMLQuantizationType
DATA = TESTS_DIR / "data"
# dense: 5 sliding layers of head 16, a full one of head 24 with proportional
# RoPE on half of it; experts: top-2 of 8 beside the dense MLP, keys as values.
LAYOUTS = ("dense", *GEMMA4_VARIANTS, "experts")
QUANTIZATIONS = ("f32", "f16", "bf16", "q8_0")
# Largest logit error of a read-back export, as a fraction of the largest
# logit. Measured on JAX and torch (the worst layout, dense): f16 7.3e-3,
# bf16 4.7e-2, q8_0 7.2e-2 (keys_as_values 5e-4, 3e-3, 1.1e-2). These random
# models are sensitive: their weights are 0.3-0.7 and norms up to 1.9, so
# rounding grows layer by layer; every stored weight is within its type's
# error (test below). The expert model's weights are bfloat16 values, so its
# bf16 export is exact (f16: 1e-6); with q8_0 its top-2 routing flips on some
# tokens (error 0.55), so only its weights are checked.
LOGIT_BOUNDS = {"f32": 0.0, "f16": 1.5e-2, "bf16": 8e-2, "q8_0": 1.2e-1}
ROUTING_FLIPS = {("experts", "q8_0")}

_MODELS = {}


def model_for(layout):
    if layout not in _MODELS:
        if layout in GEMMA4_VARIANTS:
            _MODELS[layout] = gemma4_variant_model(layout)
        else:
            folder = {"dense": "hf_tiny_gemma4_dense", "experts": "hf_tiny_gemma4_moe"}[layout]
            _MODELS[layout] = keras_gemma.GemmaCausalLM.from_preset(str(DATA / folder))
    return _MODELS[layout]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(layout, quantization) -> path of that export, written once."""
    return cached_exports(model_for, tmp_path_factory.mktemp("gemma4_exports"))


def logits_of(model):
    backbone = model.backbone
    hidden = backbone({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK})
    return to_numpy(backbone.compute_logits(hidden))[PADDING_MASK]


def relative_error(path, layout):
    expected = logits_of(model_for(layout))
    actual = logits_of(keras_gemma.GemmaCausalLM.from_preset(path))
    return np.abs(actual - expected).max() / np.abs(expected).max()


# -- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_after_reading_back(layout, quantization, exported):
    if (layout, quantization) in ROUTING_FLIPS:
        pytest.skip("top-2 routing flips under rounding; weights checked below")
    error = relative_error(exported(layout, quantization), layout)
    if quantization == "f32" or (layout, quantization) == ("experts", "bf16"):
        assert error <= 1e-6, f"{layout} {quantization}: {error}"
    else:
        assert 0 < error <= LOGIT_BOUNDS[quantization], f"{layout} {quantization}: {error}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_config_reads_back(layout, exported):
    original = model_for(layout).backbone._config()
    read = gguf_reader.read_gguf(exported(layout, "f32"), load_weights=False).config
    assert {**original, **read} == original  # every value read is the model's
    assert layer_specs(read) == layer_specs(original)
    # The switches each layout exercises (so a default could not pass).
    assert read["rope_partial_rotary_factor"] < 1 and read["norm_scale_plus_one"] is False
    if layout == "keys_as_values":
        assert read["attention_k_eq_v"] and read["num_global_key_value_heads"] == 2
    if layout == "per_layer_embeddings":
        assert read["num_kv_shared_layers"] == 5 and read["use_double_wide_mlp"]
        assert read["per_layer_input_dim"] == 4
    if layout == "experts":
        assert (read["num_experts"], read["num_experts_per_token"]) == (8, 2)


@pytest.mark.parametrize("quantization", ("f16", "bf16", "q8_0"))
@pytest.mark.parametrize("layout", ("per_layer_embeddings", "experts"))
def test_every_weight_within_its_types_error(layout, quantization, exported):
    path = exported(layout, quantization)
    originals = float_weights(model_for(layout).backbone)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    stored = gguf_reader.read_gguf(path, progress=False).weights
    assert set(stored) == set(originals)
    table = gguf_gemma4.expected_tensors(model_for(layout).backbone._config())
    for name, (ours, shape, conversion) in table.items():
        if ours is None:
            continue
        original, value = originals[ours], stored[ours]
        if conversion == "kernel":  # compare in the file's (out, in) layout
            original, value = original.T, value.T
        if conversion == "experts":
            original, value = np.swapaxes(original, 1, 2), np.swapaxes(value, 1, 2)
        if len(shape) == 1:  # norms, scalars: float32 in every export
            np.testing.assert_array_equal(value.reshape(shape), original.reshape(shape), err_msg=name)
            continue
        original = original.reshape(-1, shape[-1])
        value = value.reshape(-1, shape[-1])
        error = np.abs(value - original)
        assert np.all(error <= storage_error_bound(original, types[name])), name


def test_a_wrong_norm_convention_is_caught(exported, monkeypatch):
    # Gemma 1-3's convention (norms stored as 1 + scale) read into Gemma 4.
    path = exported("dense", "f32")
    table = gguf_gemma4.expected_tensors

    def one_plus_scale(config):
        return {name: (ours, shape, "norm" if ours and ours.endswith("/scale") else conversion)
                for name, (ours, shape, conversion) in table(config).items()}

    monkeypatch.setattr(gguf_gemma4, "expected_tensors", one_plus_scale)
    assert relative_error(path, "dense") > 0.05


# -- files as llama.cpp's converter writes them -----------------------------------------


def rewrite(source, destination, metadata=(), tensors=None):
    """A copy of the f32 GGUF file ``source`` with metadata entries replaced
    (``{key: (value, GGUFValueType, element type or None)}``, or None to drop)
    and each tensor ``(name, array)`` replaced by ``tensors(name, array)``'s
    list of pairs."""
    metadata = dict(metadata)
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(str(destination), "gemma4")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in metadata:
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    for key, entry in metadata.items():
        if entry is not None:
            writer.add_key_value(key, entry[0], entry[1], sub_type=entry[2])
    for tensor in reader.tensors:
        array = np.array(tensor.data)
        for name, value in (tensors or (lambda *pair: [pair]))(tensor.name, array):
            writer.add_tensor(name, np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(destination)


def test_stacked_expert_gate_up_projections(exported, tmp_path):
    # llama.cpp's converter keeps Gemma 4's experts.gate_up_proj whole.
    parts = {}

    def stack(name, array):
        match = re.match(r"(blk\.\d+\.)ffn_(gate|up)_exps\.weight$", name)
        if not match:
            return [(name, array)]
        parts[name] = array
        block = match.group(1)
        gate, up = parts.get(block + "ffn_gate_exps.weight"), parts.get(block + "ffn_up_exps.weight")
        if gate is None or up is None:
            return []
        return [(block + "ffn_gate_up_exps.weight", np.concatenate([gate, up], axis=1))]

    path = rewrite(exported("experts", "f32"), tmp_path / "stacked.gguf", tensors=stack)
    assert "blk.0.ffn_gate_up_exps.weight" in {t.name for t in gguf.GGUFReader(path).tensors}
    assert relative_error(path, "experts") <= 1e-6


def test_unused_keys_of_kv_shared_layers_are_skipped(exported, tmp_path):
    # llama.cpp's converter writes every layer's k_proj/v_proj/k_norm; the
    # layers sharing keys and values (5-9 here) do not use theirs.
    def add_unused(name, array):
        pairs = [(name, array)]
        match = re.match(r"blk\.(\d+)\.attn_q_norm\.weight$", name)
        if match and int(match.group(1)) >= 5:
            block = f"blk.{match.group(1)}."
            rng = np.random.default_rng(1)
            pairs += [(block + "attn_k.weight", rng.normal(size=(32, 32)).astype(np.float32)),
                      (block + "attn_v.weight", rng.normal(size=(32, 32)).astype(np.float32)),
                      (block + "attn_k_norm.weight", np.ones(array.shape, np.float32))]
        return pairs

    path = rewrite(exported("per_layer_embeddings", "f32"), tmp_path / "shared.gguf", tensors=add_unused)
    assert "blk.7.attn_k.weight" in {t.name for t in gguf.GGUFReader(path).tensors}
    assert relative_error(path, "per_layer_embeddings") <= 1e-6


def llama_cpp_gemma4_vocabulary(folder):
    """The tokenizer.* metadata llama.cpp's converter (Gemma4Model.set_vocab,
    gguf's LlamaHfVocab and SpecialVocab) writes for a Gemma 4 tokenizer.json."""
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tokenizer["added_tokens"] if t["special"]}
    special |= set(config.get("extra_special_tokens", []))
    special |= {config[f"{role}_token"] for role in ("bos", "eos", "pad", "unk", "mask")}
    visible = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
               "<tool_response|>", '<|"|>'}
    types = [gguf.TokenType.USER_DEFINED if t in visible
             else gguf.TokenType.BYTE if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t)
             else gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL
             for t in tokens]
    return tokens, types, [" ".join(pair) for pair in tokenizer["model"]["merges"]], {
        role: vocab[config[f"{role}_token"]] for role in ("bos", "eos", "pad", "unk")}


def test_llama_cpp_gemma4_vocabulary_tokenizes_as_transformers(tmp_path):
    tokens, types, merges, ids = llama_cpp_gemma4_vocabulary(DATA / "gemma4_tokenizer")
    writer = gguf.GGUFWriter(str(tmp_path / "vocab.gguf"), "gemma4")
    writer.add_tokenizer_model("gemma4")
    writer.add_token_list(tokens)
    writer.add_token_scores([-1000.0] * len(tokens))
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(ids["bos"])
    writer.add_eos_token_id(ids["eos"])
    writer.add_pad_token_id(ids["pad"])
    writer.add_unk_token_id(ids["unk"])
    writer.add_add_space_prefix(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    metadata, _ = gguf_reader.read_gguf_metadata(tmp_path / "vocab.gguf")
    tokenizer = GemmaTokenizer(gguf_reader.build_tokenizer_proto(metadata, "vocab.gguf"))
    oracle = json.loads((DATA / "gemma4_tokenizer_oracle.json").read_text())["synthetic"]
    for row in oracle:
        assert tokenizer.tokenize(row["text"]) == row["ids"], row["text"]
        assert tokenizer.detokenize(row["ids"]) == row["decoded"]
    assert tokenizer.tokenize("<|turn>user\n")[:1] == [tokens.index("<|turn>")]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (ids["bos"], ids["eos"])


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    "gemma4.attention.key_length_swa",
    "gemma4.attention.sliding_window_pattern",
    "gemma4.embedding_length_per_layer_input",
    "gemma4.attention.layer_norm_rms_epsilon",
])
def test_missing_metadata_is_named(key, exported, tmp_path):
    path = rewrite(exported("dense", "f32"), tmp_path / "bad.gguf", {key: None})
    with pytest.raises(ValueError, match=re.escape(key)):
        keras_gemma.GemmaCausalLM.from_preset(path)


def test_tensor_of_the_wrong_shape_is_named(exported, tmp_path):
    def shrink(name, array):
        return [(name, array[:-1] if name == "blk.5.attn_q.weight" else array)]

    path = rewrite(exported("dense", "f32"), tmp_path / "bad.gguf", tensors=shrink)
    with pytest.raises(ValueError, match=r"'blk\.5\.attn_q\.weight'.*shape \(95, 32\).*\(96, 32\)"):
        keras_gemma.GemmaCausalLM.from_preset(path)


def test_missing_tensor_is_named(exported, tmp_path):
    def drop(name, array):
        return [] if name == "rope_freqs.weight" else [(name, array)]

    path = rewrite(exported("dense", "f32"), tmp_path / "bad.gguf", tensors=drop)
    with pytest.raises(ValueError, match=r"rope_freqs\.weight.*missing"):
        keras_gemma.GemmaCausalLM.from_preset(path)


@pytest.mark.parametrize("metadata, message", [
    ({"gemma4.rope.scaling.type": ("linear", gguf.GGUFValueType.STRING, None)}, "RoPE scaling"),
    ({"gemma4.rope.dimension_count_swa": (8, gguf.GGUFValueType.UINT32, None)},
     r"rope\.dimension_count_swa` is 8"),
    ({"gemma4.attention.head_count": ([4, 4, 4, 4, 4, 2], gguf.GGUFValueType.ARRAY,
                                      gguf.GGUFValueType.UINT32)}, "varies across layers"),
    ({"gemma4.attention.sliding_window_pattern": ([True] * 5, gguf.GGUFValueType.ARRAY,
                                                  gguf.GGUFValueType.BOOL)}, "expected 6 bools"),
    # Layers 4 and 5 sharing, layer 3 sliding: keras_gemma takes the keys of
    # sliding layer 4 from layer 3, llama.cpp from layer 2.
    ({"gemma4.attention.shared_kv_layers": (2, gguf.GGUFValueType.UINT32, None),
      "gemma4.attention.sliding_window_pattern": ([True, True, False, True, True, False],
                                                  gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.BOOL)},
     "layer 4 reuses the keys and values of layer 3, but llama.cpp takes those of layer 2"),
])
def test_settings_keras_gemma_cannot_run_are_refused(metadata, message, exported, tmp_path):
    path = rewrite(exported("dense", "f32"), tmp_path / "bad.gguf", metadata)
    with pytest.raises(ValueError, match=message):
        keras_gemma.GemmaCausalLM.from_preset(path)


def test_rope_freqs_that_are_not_proportional_rope_are_refused(exported, tmp_path):
    def llama3_like(name, array):
        if name == "rope_freqs.weight":
            array = np.linspace(1, 8, len(array), dtype=np.float32)
        return [(name, array)]

    path = rewrite(exported("dense", "f32"), tmp_path / "bad.gguf", tensors=llama3_like)
    with pytest.raises(ValueError, match="proportional RoPE only"):
        keras_gemma.GemmaCausalLM.from_preset(path)


def test_export_refuses_what_the_reader_would_read_otherwise(tmp_path):
    # The writer hands its metadata to this reader first: llama.cpp's gemma4
    # does not scale queries and always normalizes values.
    model = model_for("dense")
    backbone = keras_gemma.GemmaBackbone(**{**model.backbone._config(), "query_pre_attn_scalar": 256.0,
                                            "use_value_norm": False})
    changed = keras_gemma.GemmaCausalLM(backbone, model.preprocessor)
    with pytest.raises(ValueError, match=r"(?s)query_pre_attn_scalar: the model has 256.0, a gemma4 "
                       r"GGUF file gives 1.0.*use_value_norm"):
        exporter.export_gguf(changed, tmp_path / "x.gguf", progress=False)
    assert not list(tmp_path.iterdir())
