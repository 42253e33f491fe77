"""Gemma 4's per-layer embeddings (E2B, E4B): a small extra input per layer.

Besides the main embedding, each token looks up a row of a second table,
(per-layer vocabulary, layers * per_layer_dim), that holds one
``per_layer_dim`` vector for every decoder layer. It is mixed with a
projection of the (scaled) main embedding, normalized per layer:

    per_layer_inputs = (norm(project(x) / sqrt(hidden)) + table[ids] * sqrt(dim)) / sqrt(2)

and layer ``i`` receives ``per_layer_inputs[:, :, i]`` after its
feed-forward (see ``GemmaDecoderBlock``). The table is most of E2B's
bytes; it quantizes to int8 like the main embedding.
"""

import math

import keras
from keras import ops

from keras_gemma.embedding import TiedEmbedding
from keras_gemma.quantization import QuantizableDense
from keras_gemma.rms_norm import RMSNorm


class PerLayerEmbedding(keras.layers.Layer):
    """``call(token_ids, embeddings)`` -> (batch, time, num_layers, per_layer_dim)."""

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        num_layers,
        per_layer_dim,
        layer_norm_epsilon=1e-6,
        embeddings_initializer=None,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.per_layer_dim = per_layer_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        width = num_layers * per_layer_dim
        # A lookup-only use of the tied embedding class (its int8 lookup
        # path is what the table needs); it is never used to make logits.
        self.token_embedding = TiedEmbedding(
            vocabulary_size, width, embeddings_initializer=embeddings_initializer,
            dtype=self.dtype_policy, name="token_embedding",
        )
        self.projection = QuantizableDense(
            width, use_bias=False, kernel_initializer=kernel_initializer,
            dtype=self.dtype_policy, name="projection",
        )
        self.projection_norm = RMSNorm(
            layer_norm_epsilon, scale_plus_one=False, dtype=self.dtype_policy,
            name="projection_norm",
        )

    def build(self, input_shape=None):
        self.token_embedding.build()
        self.projection.build((None, None, self.hidden_dim))
        self.projection_norm.build((None, None, None, self.per_layer_dim))
        self.built = True

    def call(self, token_ids, embeddings):
        batch, time = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        shape = (batch, time, self.num_layers, self.per_layer_dim)
        from_tokens = self.token_embedding(token_ids)
        from_tokens = ops.reshape(from_tokens, shape) * ops.cast(
            math.sqrt(self.per_layer_dim), from_tokens.dtype
        )
        projected = self.projection(embeddings) * ops.cast(
            self.hidden_dim**-0.5, embeddings.dtype
        )
        projected = self.projection_norm(ops.reshape(projected, shape))
        return (projected + from_tokens) * ops.cast(2.0**-0.5, projected.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "per_layer_dim": self.per_layer_dim,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }
