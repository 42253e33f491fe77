"""Gemma language models on Keras 3: JAX, TensorFlow and PyTorch alike.

Importing ``keras_gemma`` does not import Keras yet: the classes load on
first use, so ``KERAS_BACKEND`` (or ``keras-gemma --backend``) can still be
chosen after ``import keras_gemma``. If no backend is chosen anywhere
(``KERAS_BACKEND``, or an installed backend named in ``~/.keras/keras.json``),
the first installed of JAX, TensorFlow and PyTorch is used.
"""

import importlib
import importlib.util
import json
import os
import sys

__version__ = "0.1.0"

SUPPORTED_BACKENDS = ("jax", "tensorflow", "torch")


def _unsupported(backend, where):
    return ValueError(
        f"{where}={backend!r} is not supported by keras_gemma. Set "
        f"KERAS_BACKEND to one of {', '.join(SUPPORTED_BACKENDS)}, e.g. "
        "`export KERAS_BACKEND=jax`."
    )


def _choose_backend():
    """Validates the requested backend, or picks an installed one.

    Runs before Keras is imported: Keras' own error for a bad backend is a
    deep import failure, and its default (TensorFlow) may not be installed.
    """
    requested = os.environ.get("KERAS_BACKEND")
    if requested is not None:
        # The `keras-gemma` command imports this package before it reads
        # --backend; it checks the backend itself and says so in one line.
        if requested not in SUPPORTED_BACKENDS and os.path.basename(sys.argv[0]) != "keras-gemma":
            raise _unsupported(requested, "KERAS_BACKEND")
        return
    if "keras" in sys.modules:
        return  # Keras already chose; checked on first use
    config_dir = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        with open(os.path.join(config_dir, "keras.json")) as f:
            configured = json.load(f).get("backend")
    except (OSError, ValueError):
        configured = None
    if configured is not None:
        if configured not in SUPPORTED_BACKENDS:
            raise _unsupported(configured, "the backend in keras.json")
        # Keras writes keras.json with its default (tensorflow) on first
        # import, so only trust it when that backend is installed.
        if importlib.util.find_spec(configured) is not None:
            return
    for backend in SUPPORTED_BACKENDS:
        if importlib.util.find_spec(backend) is not None:
            os.environ["KERAS_BACKEND"] = backend
            return


_choose_backend()

# Public name -> module that defines it, imported on first access.
_EXPORTS = {
    "GemmaBackbone": "keras_gemma.backbone",
    "GemmaCausalLM": "keras_gemma.causal_lm",
    "GemmaCausalLMPreprocessor": "keras_gemma.preprocessor",
    "GemmaTextEmbedder": "keras_gemma.text_embedder",
    "GemmaTokenizer": "keras_gemma.tokenizer",
    "LoRACheckpoint": "keras_gemma.lora",
    "chat_template": "keras_gemma.chat",
    "code_infill": "keras_gemma.fim",
    "function_calling_prompt": "keras_gemma.function_calling",
    "parse_function_calls": "keras_gemma.function_calling",
    "convert": "keras_gemma.preset_io",
    "list_presets": "keras_gemma.preset_io",
    "preset_info": "keras_gemma.preset_io",
}
# Submodules that mirror keras-hub's namespaces (keras_hub.models.*,
# keras_hub.samplers.*), so `import keras_gemma as keras_hub` works.
_SUBMODULES = ("models", "samplers")
__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name):
    if name in _SUBMODULES or name in _EXPORTS:
        from keras_gemma import backend

        backend.name()  # rejects a backend Keras chose that we do not support
        if name in _SUBMODULES:
            return importlib.import_module(f"keras_gemma.{name}")
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_gemma' has no attribute {name!r}")


def __dir__():
    return __all__
