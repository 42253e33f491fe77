"""Token embedding whose matrix also projects hidden states to logits."""

import keras
from keras import ops

from keras_gemma import backend
from keras_gemma import quantization
from keras_gemma.quantization import dequantize_groups


class TiedEmbedding(keras.layers.Layer):
    """``call(ids)`` looks rows up; ``call(hidden, reverse=True)`` gives logits.

    Gemma ties its input and output embeddings, so one matrix of shape
    (vocabulary_size, hidden_dim) serves both directions. After
    ``quantize("int8")`` the matrix is stored as int8 with one float32 scale
    per 32 values of a row (see ``quantization.py``).
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
        if quantization.building_int8():
            self._add_int8_variables()
        else:
            self.embeddings = self.add_weight(
                name="embeddings",
                shape=(self.vocabulary_size, self.hidden_dim),
                initializer=self.embeddings_initializer,
            )
        self.built = True

    def call(self, inputs, reverse=False, transposed=None):
        """``transposed``: with ``reverse``, a (hidden_dim, vocabulary_size)
        copy of the matrix to multiply instead (see ``transposed_matrix``)."""
        if self.is_int8:
            return self._int8_call(inputs, reverse)
        if reverse and transposed is not None:
            return ops.matmul(inputs, transposed)
        embeddings = ops.cast(self.embeddings, self.compute_dtype)
        if reverse:
            return backend.matmul_transposed(inputs, embeddings)
        return ops.take(embeddings, ops.cast(inputs, "int32"), axis=0)

    def multiplies_transposed(self, rows):
        """Whether ``rows`` rows of a decode loop should multiply
        ``transposed_matrix()`` (see ``backend.transposes_lm_head``)."""
        return not self.is_int8 and backend.transposes_lm_head(rows, self.compute_dtype)

    def transposed_matrix(self):
        """The float matrix as a (hidden_dim, vocabulary_size) copy."""
        return ops.transpose(ops.cast(self.embeddings, self.compute_dtype))

    def _int8_call(self, inputs, reverse):
        dtype = self.compute_dtype
        if reverse:
            return quantization.grouped_matmul(
                inputs, self.embeddings_int8, self.embeddings_scale, dtype
            )
        ids = ops.cast(inputs, "int32")
        return dequantize_groups(
            ops.take(self.embeddings_int8, ids, axis=0),
            ops.take(self.embeddings_scale, ids, axis=0),
            -1,
            dtype,
        )

    def quantize(self, mode=None, type_check=True, config=None):
        """Weight-only int8, one scale per 32 values of a row (see quantization.py)."""
        if mode != "int8":
            raise NotImplementedError(
                f"TiedEmbedding supports quantize('int8') only, not {mode!r}."
            )
        if self.is_int8:
            return
        embeddings = ops.convert_to_numpy(self.embeddings)
        quantization.drop_float_variable(self, "embeddings")
        self._tracker.unlock()
        self._add_int8_variables()
        self._tracker.lock()
        self.assign_float_weight(embeddings)

    def _add_int8_variables(self):
        shape = (self.vocabulary_size, self.hidden_dim)
        self.embeddings_int8 = self.add_weight(
            name="embeddings_int8", shape=shape, dtype="int8",
            initializer="zeros", trainable=False,
        )
        self.embeddings_scale = self.add_weight(
            name="embeddings_scale",
            shape=(self.vocabulary_size, self.hidden_dim // quantization.group_size(self.hidden_dim)),
            dtype="float32", initializer="ones", trainable=False,
        )
        self.is_int8 = True

    @property
    def int8_variables(self):
        return (self.embeddings_int8, self.embeddings_scale)

    @property
    def float_weight(self):
        """(checkpoint path, float shape) of the matrix the int8 variables hold."""
        path = self.embeddings_int8.path.removesuffix("_int8")
        return path, (self.vocabulary_size, self.hidden_dim)

    def assign_float_weight(self, embeddings):
        """Quantizes a float (vocabulary, hidden) numpy matrix into the int8 variables."""
        levels, scales = quantization.quantize_groups(embeddings, axis=1)
        backend.assign_from_host(self.embeddings_int8, levels)
        backend.assign_from_host(self.embeddings_scale, scales)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "hidden_dim": self.hidden_dim,
        }
