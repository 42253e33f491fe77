"""The tiny models the traced-program export tests (SavedModel,
torch.export) export, and the transformers oracles they are checked with."""

import numpy as np
from conftest import TESTS_DIR, VOCABULARY_PATH, to_numpy
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights
from tiny_preset import CONFIG as TWO_LAYERS  # Gemma 3 switches, one local + one global layer

import keras_gemma
from keras_gemma.checkpoints import assign_weights

DATA = TESTS_DIR / "data"
GEMMA4 = np.load(DATA / "hf_gemma4_oracle.npz")
# transformers' logits of TOKEN_IDS for each model of ``oracle_models``.
ORACLE_LOGITS = {
    "gemma3": np.load(DATA / "hf_oracle.npz")["gemma3"],
    "gemma4": GEMMA4["ple_logits"],
}


def causal_lm(backbone):
    tokenizer = keras_gemma.GemmaTokenizer(str(VOCABULARY_PATH))
    return keras_gemma.GemmaCausalLM(
        backbone, keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=32)
    )


def gemma3_lm(config=TINY_CONFIGS["gemma3"]):
    """test_parity.py's Gemma 3 (7 layers, window 4), or ``config``'s."""
    backbone = keras_gemma.GemmaBackbone(**config)
    assign_weights(backbone, random_weights(config), "tiny")
    return causal_lm(backbone)


def gemma4_lm():
    """test_gemma4.py's ``ple`` model: per-layer embeddings, KV sharing."""
    return causal_lm(keras_gemma.GemmaBackbone.from_preset(str(DATA / "hf_tiny_gemma4_ple")))


def oracle_models(name):
    """The model of ``ORACLE_LOGITS[name]``."""
    return {"gemma3": gemma3_lm, "gemma4": gemma4_lm}[name]()


def int8_and_lora_models():
    """One-layer Gemma 3s: one quantized to int8, one with random LoRA
    adapters; and the float model's logits, which both must differ from."""
    config = {**TWO_LAYERS, "num_layers": 1}
    quantized = gemma3_lm(config)
    float_logits = our_logits(quantized)
    quantized.quantize("int8")
    adapted = gemma3_lm(config)
    adapted.backbone.enable_lora(4, target=("query", "value", "down"))
    rng = np.random.default_rng(0)
    for variable in adapted.backbone.trainable_weights:
        variable.assign(rng.standard_normal(variable.shape).astype("float32") * 0.2)
    return {"int8": quantized, "lora": adapted}, float_logits


def small_lm():
    return causal_lm(keras_gemma.GemmaBackbone(**{**TINY_CONFIGS["gemma_mqa"], "num_layers": 1}))


def our_logits(lm, token_ids=TOKEN_IDS, padding_mask=PADDING_MASK):
    return to_numpy(lm({"token_ids": token_ids, "padding_mask": padding_mask}))
