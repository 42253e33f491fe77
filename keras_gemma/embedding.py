"""Token embedding whose matrix also projects hidden states to logits."""

import keras
import numpy as np
from keras import ops


class TiedEmbedding(keras.layers.Layer):
    """``call(ids)`` looks rows up; ``call(hidden, reverse=True)`` gives logits.

    Gemma ties its input and output embeddings, so one matrix of shape
    (vocabulary_size, hidden_dim) serves both directions. After
    ``quantize("int8")`` the matrix is stored as int8 with one float32 scale
    per row (per vocabulary entry), which is both the lookup's row scale and
    the logits' output-channel scale.
    """

    def __init__(self, vocabulary_size, hidden_dim, embeddings_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomNormal(stddev=0.02)
        )
        self.is_int8 = False

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocabulary_size, self.hidden_dim),
            initializer=self.embeddings_initializer,
        )
        self.built = True

    def call(self, inputs, reverse=False):
        if self.is_int8:
            return self._int8_call(inputs, reverse)
        embeddings = ops.cast(self.embeddings, self.compute_dtype)
        if reverse:
            return ops.matmul(inputs, ops.transpose(embeddings))
        return ops.take(embeddings, ops.cast(inputs, "int32"), axis=0)

    def _int8_call(self, inputs, reverse):
        dtype = self.compute_dtype
        if reverse:
            # Scales are per vocabulary row, i.e. per output channel, so they
            # apply after the matmul on the integer-valued matrix.
            logits = ops.matmul(inputs, ops.transpose(ops.cast(self.embeddings_int8, dtype)))
            return logits * ops.cast(self.embeddings_scale, dtype)
        ids = ops.cast(inputs, "int32")
        rows = ops.cast(ops.take(self.embeddings_int8, ids, axis=0), dtype)
        return rows * ops.cast(ops.take(self.embeddings_scale, ids, axis=0), dtype)[..., None]

    def quantize(self, mode=None, type_check=True, config=None):
        """Weight-only int8 with per-row absmax scales (Keras' quantize hook)."""
        if mode != "int8":
            raise NotImplementedError(
                f"TiedEmbedding supports quantize('int8') only, not {mode!r}."
            )
        if self.is_int8:
            return
        values = np.asarray(ops.convert_to_numpy(self.embeddings), "float32")
        # As Keras' AbsMaxQuantizer: levels = round(value * 127 / absmax).
        levels_per_unit = np.float32(127.0) / (np.abs(values).max(axis=1) + np.float32(1e-7))
        quantized = np.clip(np.round(values * levels_per_unit[:, None]), -127, 127).astype("int8")
        scale = (1.0 / levels_per_unit).astype("float32")
        del values
        del self.embeddings
        self._tracker.unlock()
        self.embeddings_int8 = self.add_weight(
            name="embeddings_int8", shape=quantized.shape, dtype="int8",
            initializer="zeros", trainable=False,
        )
        self.embeddings_scale = self.add_weight(
            name="embeddings_scale", shape=scale.shape, dtype="float32",
            initializer="ones", trainable=False,
        )
        self._tracker.lock()
        self.embeddings_int8.assign(quantized)
        self.embeddings_scale.assign(scale)
        self.is_int8 = True

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "hidden_dim": self.hidden_dim,
        }
