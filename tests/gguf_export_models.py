"""Tiny seeded models for the GGUF export tests and their cached oracle
(tests/data/make_gguf_export_oracle.py), rebuilt identically by both.

``EXPORT_CONFIGS`` are shaped so that llama.cpp's fixed rules hold (queries
scaled by head_dim, Gemma 3 local layers 5 of 6): one per architecture.
``ORACLE_CONFIGS`` also keep the settings transformers' GGUF loader does not
read from the file at their Hugging Face defaults (query scalar 256, hence
head_dim 256; Gemma 2's soft caps 50 and 30; no RoPE scaling), so
transformers builds the same network.
"""

import numpy as np

import keras_gemma
from keras_gemma.checkpoints import assign_weights
from tiny_models import TINY_CONFIGS, random_weights

from conftest import TESTS_DIR, VOCABULARY_PATH

EXPORT_CONFIGS = {
    "gemma": TINY_CONFIGS["gemma_mqa"],
    "gemma2": {**TINY_CONFIGS["gemma2"], "query_pre_attn_scalar": None},
    "gemma3": TINY_CONFIGS["gemma3"],
}

_ORACLE_SHAPE = dict(num_query_heads=2, num_key_value_heads=1, head_dim=256,
                     query_pre_attn_scalar=None)
ORACLE_CONFIGS = {
    "gemma2": {**TINY_CONFIGS["gemma2"], **_ORACLE_SHAPE,
               "attention_logit_soft_cap": 50.0, "final_logit_soft_cap": 30.0},
    "gemma3": {**TINY_CONFIGS["gemma3"], **_ORACLE_SHAPE, "rope_scaling_factor": 1.0},
}

# Strings whose token ids the exported vocabulary must keep.
TEXTS = [
    "Hello world",
    "  two leading spaces and trailing  ",
    "<start_of_turn>user\nhi<end_of_turn>\n",
    "tabs\tand\nnew\n\nlines",
    "ünïcödé ✓ 日本語",
    "a" * 40,
]


def tiny_causal_lm(config, seed=0, sequence_length=16):
    backbone = keras_gemma.GemmaBackbone(**config)
    assign_weights(backbone, random_weights(config, seed), "tiny")
    tokenizer = keras_gemma.GemmaTokenizer(str(VOCABULARY_PATH))
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length)
    return keras_gemma.GemmaCausalLM(backbone, preprocessor)


def storage_error_bound(original, qtype):
    """Largest error of storing ``original`` (numpy (rows, columns)) as the
    GGML type ``qtype``, per value."""
    import gguf  # the optional export extra

    Q = gguf.GGMLQuantizationType
    magnitude = np.abs(original)
    if qtype == Q.F32:
        return np.zeros_like(magnitude)
    if qtype == Q.F16:
        return magnitude * 2.0**-11 + 2.0**-25
    if qtype == Q.BF16:
        return magnitude * 2.0**-8 + 1e-38
    # Q8_0: half a level of the block's absmax / 127, plus the float16
    # rounding of that scale carried through up to 127 levels.
    rows, columns = original.shape
    blocks = magnitude.reshape(rows, columns // 32, 32).max(axis=-1, keepdims=True)
    per_block = blocks / 127 * (0.5 + 127 * 2.0**-11) + 2.0**-24
    return np.broadcast_to(per_block, (rows, columns // 32, 32)).reshape(rows, columns)


# Gemma 4 layouts with seeded random weights, from the tiny Hugging Face
# folders in tests/data: keys_as_values has the 26B/31B switches (full layers
# take their values from the keys and have 2 key/value heads, sliding layers
# 1); per_layer_embeddings is the E2B/E4B layout (per-layer embeddings, the
# last 5 layers sharing keys and values and twice as wide), with the last
# non-shared layer full and the one before it sliding, as llama.cpp needs.
GEMMA4_VARIANTS = {
    "keys_as_values": ("dense", dict(attention_k_eq_v=True, num_global_key_value_heads=2)),
    "per_layer_embeddings": ("ple", dict(num_kv_shared_layers=5)),
}


def gemma4_variant_model(variant):
    """The ``GemmaCausalLM`` of a ``GEMMA4_VARIANTS`` entry."""
    name, overrides = GEMMA4_VARIANTS[variant]
    source = str(TESTS_DIR / "data" / f"hf_tiny_gemma4_{name}")
    backbone = keras_gemma.GemmaBackbone(
        **{**keras_gemma.GemmaBackbone.from_preset(source)._config(), **overrides}
    )
    rng = np.random.default_rng(0)
    for variable in backbone.weights:
        if variable.path.endswith("layer_scalar"):
            value = np.ones(variable.shape)
        else:
            value = rng.normal(scale=0.3, size=variable.shape)
        variable.assign(value.astype("float32"))
    tokenizer = keras_gemma.GemmaTokenizer.from_preset(source)
    return keras_gemma.GemmaCausalLM(backbone, keras_gemma.GemmaCausalLMPreprocessor(tokenizer, 16))


def cached_exports(model_for, folder):
    """``get(name, quantization)``: the GGUF export of ``model_for(name)``,
    written into ``folder`` once per test module and reused."""
    from keras_gemma.export import gguf as exporter

    exports = {}

    def get(name, quantization):
        key = (name, quantization)
        if key not in exports:
            exports[key] = exporter.export_gguf(
                model_for(name), folder / f"{name}_{quantization}.gguf",
                quantization=quantization, progress=False,
            )
        return exports[key]

    return get
