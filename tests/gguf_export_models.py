"""Tiny seeded models for the GGUF export tests and their cached oracle
(tests/data/make_gguf_export_oracle.py), rebuilt identically by both.

``EXPORT_CONFIGS`` are shaped so that llama.cpp's fixed rules hold (queries
scaled by head_dim, Gemma 3 local layers 5 of 6): one per architecture.
``ORACLE_CONFIGS`` also keep the settings transformers' GGUF loader does not
read from the file at their Hugging Face defaults (query scalar 256, hence
head_dim 256; Gemma 2's soft caps 50 and 30; no RoPE scaling), so
transformers builds the same network.
"""

import keras_gemma
from keras_gemma.checkpoints import assign_weights
from tiny_models import TINY_CONFIGS, random_weights

from conftest import VOCABULARY_PATH

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
