"""A tiny preset directory (keras-hub layout) for code written against presets.

Tests that run keras-hub-style code (``from_preset(name)``) pass the
directory this writes instead of a real preset name: a Gemma 3 shaped model
(a local and a global layer, query/key norms, post norms) with seeded
random weights and the 640-piece test vocabulary.
"""

import tempfile

import keras_gemma
from keras_gemma.checkpoints import assign_weights
from tiny_models import TINY_CONFIGS, random_weights

from conftest import VOCABULARY_PATH

# Gemma 3's switches on two layers (one local, one global): generation on
# eager PyTorch costs per layer and step.
CONFIG = {**TINY_CONFIGS["gemma3"], "num_layers": 2, "sliding_window_pattern": 2}


def write_tiny_preset(path, sequence_length=64, seed=0, dtype="float32"):
    """Writes the tiny preset to ``path`` and returns ``str(path)``.

    ``dtype`` is the stored dtype (keras-hub's Gemma presets are bfloat16).
    """
    backbone = keras_gemma.GemmaBackbone(**CONFIG, dtype=dtype)
    # Small embeddings: the loss starts near log(vocabulary), as for a real
    # untrained model, so a few training steps stay well-behaved.
    assign_weights(backbone, random_weights(CONFIG, seed, embedding_scale=0.3), "tiny")
    tokenizer = keras_gemma.GemmaTokenizer(str(VOCABULARY_PATH))
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length)
    keras_gemma.GemmaCausalLM(backbone, preprocessor).save_to_preset(path)
    return str(path)


_SHARED = {}


def shared_tiny_preset(dtype="float32"):
    """One tiny preset per dtype and test session (read-only: do not write
    into it)."""
    if dtype not in _SHARED:
        folder = tempfile.mkdtemp(prefix="keras_gemma_tiny_preset_")
        _SHARED[dtype] = write_tiny_preset(f"{folder}/tiny_gemma3", dtype=dtype)
    return _SHARED[dtype]
