"""RMS normalization, with Gemma 1-3's ``(1 + scale)`` or Gemma 4's ``scale``."""

import keras
from keras import ops


class RMSNorm(keras.layers.Layer):
    """Root-mean-square normalization over the last axis.

    Gemma 1-3 store the scale as an offset from one (a fresh layer is the
    identity with ``scale == 0``); Gemma 4 multiplies by the stored scale
    directly (``scale_plus_one=False``, a fresh layer has ``scale == 1``).
    Either way checkpoints from Google, Hugging Face and keras-hub are
    copied in without changes. ``use_scale=False`` is Gemma 4's weightless
    norm (on attention values and in the expert router). The arithmetic
    always runs in float32, whatever the layer's compute dtype: the mean of
    squares of bfloat16 activations is too coarse otherwise.
    """

    def __init__(self, epsilon=1e-6, scale_plus_one=True, use_scale=True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.scale_plus_one = scale_plus_one
        self.use_scale = use_scale

    def build(self, input_shape):
        if self.use_scale:
            self.scale = self.add_weight(
                name="scale",
                shape=(input_shape[-1],),
                initializer="zeros" if self.scale_plus_one else "ones",
            )
        self.built = True

    def call(self, x):
        x = ops.cast(x, "float32")
        variance = ops.mean(ops.square(x), axis=-1, keepdims=True)
        x = x * ops.rsqrt(variance + self.epsilon)
        if self.use_scale:
            scale = ops.cast(self.scale, "float32")
            x = x * (1.0 + scale if self.scale_plus_one else scale)
        return ops.cast(x, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "scale_plus_one": self.scale_plus_one,
            "use_scale": self.use_scale,
        }
