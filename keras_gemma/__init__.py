"""Gemma language models on Keras 3: JAX, TensorFlow and PyTorch alike."""

__version__ = "0.1.0"

from keras_gemma import samplers
from keras_gemma.backbone import GemmaBackbone
from keras_gemma.causal_lm import GemmaCausalLM
from keras_gemma.preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.preset_io import list_presets
from keras_gemma.preset_io import preset_info
from keras_gemma.tokenizer import GemmaTokenizer
