"""RMS normalization with Gemma's ``(1 + scale)`` convention."""

import keras
from keras import ops


class RMSNorm(keras.layers.Layer):
    """Root-mean-square normalization over the last axis.

    Gemma stores the scale as an offset from one (a fresh layer is the
    identity with ``scale == 0``), so checkpoints from Google, Hugging Face
    and keras-hub can be copied in without changes. The arithmetic always
    runs in float32, whatever the layer's compute dtype: the mean of squares
    of bfloat16 activations is too coarse otherwise.
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],), initializer="zeros"
        )
        self.built = True

    def call(self, x):
        x = ops.cast(x, "float32")
        variance = ops.mean(ops.square(x), axis=-1, keepdims=True)
        x = x * ops.rsqrt(variance + self.epsilon)
        x = x * (1.0 + ops.cast(self.scale, "float32"))
        return ops.cast(x, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
