"""Weight-only int8 with one scale per group of 32 values.

Both int8 layers of the model live here: ``QuantizableDense`` (every
projection) and the helpers ``TiedEmbedding`` uses. A matrix is cut into
groups of ``GROUP_SIZE`` consecutive values along its input (reduction)
axis; each group is stored as int8 levels ``round(value * 127 / absmax)``
plus one float32 scale ``absmax / 127``. Activations stay in the compute
dtype: a matmul reads the int8 matrix, multiplies each group by its scale,
and multiplies as usual.

Why groups rather than Keras' one scale per output channel: on Gemma 3 270M
the per-channel version changed greedy continuations within a few tokens on
most benchmark prompts. Gemma's quantized checkpoints (GGUF Q8_0, Q4_K,
Q6_K) all use 32-value blocks, and Q8_0 blocks come through this scheme
unchanged.
"""

import keras
import numpy as np
from keras import ops

GROUP_SIZE = 32


def group_size(length):
    """GROUP_SIZE, or the whole axis when it does not divide into groups."""
    return GROUP_SIZE if length % GROUP_SIZE == 0 else length


def quantize_groups(values, axis):
    """numpy ``values`` -> (int8 levels of the same shape, float32 scales).

    Groups run along ``axis``; the scales have that axis divided by the
    group size.
    """
    values = np.moveaxis(np.asarray(values, "float32"), axis, -1)
    shape = values.shape
    grouped = values.reshape(*shape[:-1], -1, group_size(shape[-1]))
    # As Keras' AbsMaxQuantizer: levels = round(value * 127 / absmax).
    levels_per_unit = np.float32(127.0) / (np.abs(grouped).max(axis=-1) + np.float32(1e-7))
    levels = np.clip(np.round(grouped * levels_per_unit[..., None]), -127, 127)
    levels = np.moveaxis(levels.astype("int8").reshape(shape), -1, axis)
    scales = np.moveaxis((1.0 / levels_per_unit).astype("float32"), -1, axis)
    return levels, scales


def dequantize_groups(levels, scales, axis, dtype):
    """``levels * scales`` (broadcast over each group) as a ``dtype`` tensor."""
    levels = ops.moveaxis(ops.cast(levels, dtype), axis, -1)
    scales = ops.moveaxis(ops.cast(scales, dtype), axis, -1)
    shape = ops.shape(levels)
    groups = ops.shape(scales)[-1]
    grouped = ops.reshape(levels, (*shape[:-1], groups, shape[-1] // groups))
    values = ops.reshape(grouped * scales[..., None], shape)
    return ops.moveaxis(values, -1, axis)


class QuantizableDense(keras.layers.Dense):
    """``keras.layers.Dense`` whose ``quantize("int8")`` keeps group scales.

    Unquantized, it is exactly ``Dense``. Quantized, ``_kernel`` holds int8
    levels (in, out) and ``kernel_scale`` one scale per 32 inputs per output
    (in / 32, out); LoRA adapters (``enable_lora``) still train on top.
    """

    is_int8 = False

    def quantize(self, mode=None, type_check=True, config=None):
        if mode != "int8":
            raise NotImplementedError(
                f"{self.name}: keras_gemma supports quantize('int8') only, not {mode!r}."
            )
        if self.is_int8:
            return
        levels, scales = quantize_groups(ops.convert_to_numpy(self._kernel), axis=0)
        del self._kernel
        self._kernel = self.add_weight(
            name="kernel", shape=levels.shape, dtype="int8",
            initializer="zeros", trainable=False,
        )
        self.kernel_scale = self.add_weight(
            name="kernel_scale", shape=scales.shape, dtype="float32",
            initializer="ones", trainable=False,
        )
        self._kernel.assign(levels)
        self.kernel_scale.assign(scales)
        self.is_int8 = True

    @property
    def kernel(self):
        if not self.is_int8:
            return super().kernel
        kernel = dequantize_groups(self._kernel, self.kernel_scale, 0, self.compute_dtype)
        if self.lora_enabled:
            update = ops.matmul(self.lora_kernel_a, self.lora_kernel_b)
            kernel = kernel + ops.cast((self.lora_alpha / self.lora_rank) * update, kernel.dtype)
        return kernel

    def call(self, inputs, training=None):
        if not self.is_int8:
            return super().call(inputs, training=training)
        kernel = dequantize_groups(self._kernel, self.kernel_scale, 0, self.compute_dtype)
        outputs = ops.matmul(inputs, kernel)
        if self.lora_enabled:
            update = ops.matmul(ops.matmul(inputs, self.lora_kernel_a), self.lora_kernel_b)
            outputs = outputs + ops.cast((self.lora_alpha / self.lora_rank) * update, outputs.dtype)
        if self.bias is not None:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs
