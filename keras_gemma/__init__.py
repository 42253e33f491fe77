"""Gemma language models on Keras 3: JAX, TensorFlow and PyTorch alike."""

__version__ = "0.1.0"

import os as _os

_SUPPORTED = ("jax", "tensorflow", "torch")
if _os.environ.get("KERAS_BACKEND", "jax") not in _SUPPORTED:
    # Checked before Keras is imported, whose own error is less helpful.
    raise ValueError(
        f"KERAS_BACKEND={_os.environ['KERAS_BACKEND']!r} is not supported by "
        f"keras_gemma. Set it to one of {', '.join(_SUPPORTED)}, e.g. "
        "`export KERAS_BACKEND=jax`."
    )

from keras_gemma import backend as _backend  # noqa: E402

_backend.name()  # also rejects other backends chosen in ~/.keras/keras.json

from keras_gemma import samplers
from keras_gemma.backbone import GemmaBackbone
from keras_gemma.causal_lm import GemmaCausalLM
from keras_gemma.lora import LoRACheckpoint
from keras_gemma.preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.preset_io import convert
from keras_gemma.preset_io import list_presets
from keras_gemma.preset_io import preset_info
from keras_gemma.tokenizer import GemmaTokenizer
