"""Token embedding whose matrix also projects hidden states to logits."""

import keras
from keras import ops


class TiedEmbedding(keras.layers.Layer):
    """``call(ids)`` looks rows up; ``call(hidden, reverse=True)`` gives logits.

    Gemma ties its input and output embeddings, so one matrix of shape
    (vocabulary_size, hidden_dim) serves both directions.
    """

    def __init__(self, vocabulary_size, hidden_dim, embeddings_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.embeddings_initializer = keras.initializers.get(
            embeddings_initializer or keras.initializers.RandomNormal(stddev=0.02)
        )

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocabulary_size, self.hidden_dim),
            initializer=self.embeddings_initializer,
        )
        self.built = True

    def call(self, inputs, reverse=False):
        embeddings = ops.cast(self.embeddings, self.compute_dtype)
        if reverse:
            return ops.matmul(inputs, ops.transpose(embeddings))
        return ops.take(embeddings, ops.cast(inputs, "int32"), axis=0)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "hidden_dim": self.hidden_dim,
        }
