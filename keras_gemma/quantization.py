"""Weight-only int8 with one scale per group of 32 values.

Both int8 layers of the model live here: ``QuantizableDense`` (every
projection) and the helpers ``TiedEmbedding`` uses. A matrix is cut into
groups of ``GROUP_SIZE`` consecutive values along its input (reduction)
axis; each group is stored as int8 levels ``round(value * 127 / absmax)``
plus one float32 scale ``absmax / 127``. Activations stay in the compute
dtype: a matmul reads the int8 matrix, multiplies each group by its scale,
and multiplies as usual.

Three things make that fast under XLA on CPU, where the gain is reading one
byte per weight instead of four: matrices are stored (out, in), which lets
XLA fuse the dequantization into a matrix-vector product instead of writing
a float copy first (``grouped_matmul``: contractions wider than 2048 are
cut into slices, the widest XLA fuses); and inside a compiled decode loop
the levels are made loop-variant (``levels_varying_with``) so that XLA
does not hoist a float copy of every weight out of the loop. Loading with
``quantize="int8"`` builds the layers as int8 (``build_int8``) and
quantizes each tensor as it is read.

Why groups rather than Keras' one scale per output channel: on Gemma 3 270M
the per-channel version changed greedy continuations within a few tokens on
most benchmark prompts. Gemma's quantized checkpoints (GGUF Q8_0, Q4_K,
Q6_K) all use 32-value blocks, and Q8_0 blocks come through this scheme
unchanged.
"""

import contextlib
import contextvars

import keras
import numpy as np
from keras import ops

from keras_gemma import backend
from keras_gemma import xla_cpu

GROUP_SIZE = 32

# See `levels_varying_with` and `build_int8`.
_LEVEL_FACTOR = contextvars.ContextVar("int8_level_factor", default=None)
_BUILD_INT8 = contextvars.ContextVar("build_int8", default=False)


@contextlib.contextmanager
def _setting(variable, value):
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)


def levels_varying_with(factor):
    """Int8 layers traced in this context multiply their levels by ``factor``.

    ``factor`` is a scalar equal to 1 that the compiler cannot prove
    constant (say, derived from a loop counter). Without it, XLA hoists the
    loop-invariant dequantization out of a compiled decode loop: the loop
    then reads a float32 copy of every weight, which is as slow as float32
    and holds that copy in memory for the whole generation.
    """
    return _setting(_LEVEL_FACTOR, factor)


def build_int8():
    """Layers built in this context get int8 variables straight away.

    Loading with ``quantize="int8"`` uses it: each float tensor read from a
    checkpoint is quantized as it is assigned (``assign_float_weight``), so
    the float model never exists in memory as a whole.
    """
    return _setting(_BUILD_INT8, True)


def building_int8():
    return _BUILD_INT8.get()


def levels_in_context(levels):
    factor = _LEVEL_FACTOR.get()
    return levels if factor is None else levels * ops.cast(factor, levels.dtype)


def drop_float_variable(layer, attribute):
    """``del layer.<attribute>`` for a float variable being replaced by int8.

    Keras' ``Layer.__delattr__`` runs ``gc.collect()`` for every deleted
    variable: over a few hundred projections that is minutes on a large
    heap (~1.2 s each on PyTorch). The variable's memory goes when its last
    reference does; the caller (``GemmaBackbone.quantize``) collects once.
    """
    layer._untrack_variable(getattr(layer, attribute))
    super(keras.layers.Layer, layer).__delattr__(attribute)


def group_size(length):
    """GROUP_SIZE, or the whole axis when it does not divide into groups."""
    return GROUP_SIZE if length % GROUP_SIZE == 0 else length


def quantize_groups(values, axis):
    """numpy ``values`` -> (int8 levels of the same shape, float32 scales).

    Groups run along ``axis``; the scales have that axis divided by the
    group size. A matrix is done a block of rows or columns at a time, so
    the float temporaries stay small next to a 262144-row embedding.
    """
    values = np.asarray(values)
    shape = values.shape
    groups = shape[axis] // group_size(shape[axis])
    levels = np.empty(shape, "int8")
    scales = np.empty((*shape[:axis], groups, *shape[axis + 1 :]), "float32")
    if values.ndim != 2:
        levels[...], scales[...] = _quantize_block(values, axis)
        return levels, scales
    other = 1 - axis
    step = max(1, _QUANTIZE_BLOCK_ELEMENTS // shape[axis])
    for begin in range(0, shape[other], step):
        block = [slice(None)] * 2
        block[other] = slice(begin, begin + step)
        block = tuple(block)
        levels[block], scales[block] = _quantize_block(values[block], axis)
    return levels, scales


_QUANTIZE_BLOCK_ELEMENTS = 1 << 21


def _quantize_block(values, axis):
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
    """``levels * scales`` (broadcast over each group) as a ``dtype`` tensor.

    Groups are consecutive along ``axis``, so splitting that axis in two is
    a free reshape; no transpose, which XLA's CPU backend makes as slow as
    the matmul it feeds.
    """
    shape = ops.shape(levels)
    axis = axis % len(shape)
    groups = ops.shape(scales)[axis]
    grouped_shape = (*shape[:axis], groups, shape[axis] // groups, *shape[axis + 1 :])
    grouped = ops.reshape(ops.cast(levels, dtype), grouped_shape)
    values = grouped * ops.expand_dims(ops.cast(scales, dtype), axis + 1)
    return ops.reshape(values, shape)


# XLA:CPU fuses the dequantization into a matrix-vector product, reading the
# int8 levels straight from memory, only while the vector is under 16 KiB
# (4096 float32 values; the CPU fusion rule for dots); past that it first
# writes a transposed float32 copy of the whole matrix, 20-40x slower
# (Gemma 4's 6144- and 12288-wide down projections). Longer contractions
# are therefore cut into slices of this many inputs, each its own fused
# product; a fusion barrier on each partial result stops XLA from merging
# the sum back into the products (which would undo the fusion).
MATVEC_SLICE = 2048


def grouped_matmul(inputs, levels, scales, dtype):
    """``inputs @ W.T`` for W (out, in) stored as int8 ``levels`` and group ``scales``.

    One row (a decode step at batch 1) on JAX/TensorFlow: a fused
    matrix-vector product, in slices when the contraction is wide, reading
    its vector from a buffer of its own inside a decode loop. More
    rows (batch > 1, prefill): the plain formula; XLA then writes the
    dequantized matrix out in float32 before the product (dequantizing in
    1 MiB blocks of rows instead was not faster on a quiet machine;
    benchmarks/README.md), except in the decode loop on JAX (CPU), where
    blocks dequantized to bfloat16 are multiplied as bfloat16
    (``_bfloat16_blocks_matmul``; JAX and TensorFlow on CPU). PyTorch: its fused kernel inside a traced decode
    step (``backend.fused_int8_matmul``), else the plain formula.
    """
    levels = levels_in_context(levels)
    if backend.compiles_loops():
        rows = _static_rows(inputs)
        if rows == 1:
            return _sliced_matvec(inputs, levels, scales, dtype)
        in_decode_loop = _LEVEL_FACTOR.get() is not None
        if in_decode_loop and rows is not None and dtype == "float32" and backend.fast_bfloat16_dot():
            return _bfloat16_blocks_matmul(inputs, levels, scales)
        if not in_decode_loop:
            # The prefill. The dequantizations read weights only, so XLA may
            # schedule them all before the first layer (it does in the
            # prefill), and then every dequantized matrix is live at once:
            # a temporary of 4 bytes per weight (Gemma 3 270M: 401 MB
            # against 11 MB), page-faulted in on every call (~98,000
            # faults, over half of an 8-token prefill, JAX and TensorFlow).
            # Made to depend on the inputs, each matrix is dequantized just
            # before its product, and the buffers are reused.
            levels = xla_cpu.after(inputs, levels)
    else:
        outputs = backend.fused_int8_matmul(inputs, levels, scales)
        if outputs is not None:
            return outputs
    return ops.matmul(inputs, ops.transpose(dequantize_groups(levels, scales, 1, dtype)))


def _sliced_matvec(inputs, levels, scales, dtype):
    # Else XLA recomputes the ops producing `inputs` for every output row
    # (the attention output projection: 5-10x slower; see xla_cpu.own_buffer).
    inputs = xla_cpu.own_buffer(inputs, _LEVEL_FACTOR.get())
    width = levels.shape[-1]
    if width <= MATVEC_SLICE or width % GROUP_SIZE:
        return ops.matmul(inputs, ops.transpose(dequantize_groups(levels, scales, 1, dtype)))
    total = None
    for begin in range(0, width, MATVEC_SLICE):
        end = min(begin + MATVEC_SLICE, width)
        matrix = dequantize_groups(
            levels[:, begin:end], scales[:, begin // GROUP_SIZE : end // GROUP_SIZE], 1, dtype
        )
        partial = ops.matmul(inputs[..., begin:end], ops.transpose(matrix))
        partial = backend.fusion_barrier(partial)
        total = partial if total is None else total + partial
    return total


# Output rows dequantized (to bfloat16) and multiplied per block at batch > 1:
# blocks of about this many bytes of bfloat16 weights, so that XLA can
# dequantize one block on one thread while the other multiplies the last.
BFLOAT16_BLOCK_BYTES = 16 * 2**20


def _bfloat16_blocks_matmul(inputs, levels, scales):
    """``inputs @ W.T`` with more than one row, as bfloat16 products (JAX on CPU).

    XLA:CPU has no product that reads int8, so with more than one row the
    matrix is dequantized first; in float32 that writes and reads 4 bytes
    per weight and the product runs at float32 GEMM speed, slower than
    float32 itself (Gemma 3 270M at batch 16: 92 against 159 tokens/s).
    Dequantized to bfloat16 instead (2 bytes per weight), a block of output
    rows at a time, each block multiplied with the inputs rounded to
    bfloat16 and accumulated in float32 (YNNPACK's bfloat16 GEMM, ~1.6x the
    float32 one here). Rounding: each weight ``level * scale`` and each
    input to bfloat16 (relative 2**-9, below the int8 step of 1/127 of a
    group's largest value).
    """
    out_rows, width = levels.shape
    block = max(1, BFLOAT16_BLOCK_BYTES // (2 * width))
    inputs = ops.cast(inputs, "bfloat16")
    products = []
    for begin in range(0, out_rows, block):
        end = min(begin + block, out_rows)
        matrix = dequantize_groups(levels[begin:end], scales[begin:end], 1, "float32")
        matrix = ops.cast(matrix, "bfloat16")
        products.append(backend.bfloat16_matmul_transposed(inputs, matrix))
    return products[0] if len(products) == 1 else ops.concatenate(products, axis=-1)


def _static_rows(inputs):
    rows = 1
    for size in inputs.shape[:-1]:
        if size is None:
            return None
        rows *= size
    return rows


class QuantizableDense(keras.layers.Dense):
    """``keras.layers.Dense`` whose ``quantize("int8")`` keeps group scales.

    Unquantized, it is exactly ``Dense``. Quantized, ``_kernel`` holds the
    int8 levels transposed, (out, in), and ``kernel_scale`` one scale per 32
    inputs per output, (out, in / 32); LoRA adapters (``enable_lora``) still
    train on top. The transposed layout is for speed: XLA's CPU backend
    fuses the dequantization into ``inputs @ levels.T``, reading one byte
    per weight, but materializes a float copy of a dequantized (in, out)
    matrix first (4x slower at batch 1 for Gemma's projections).
    """

    is_int8 = False

    def build(self, input_shape):
        if not building_int8() or self.use_bias:
            return super().build(input_shape)
        self._add_int8_variables(input_shape[-1])
        self.bias = None
        self.input_spec = keras.InputSpec(min_ndim=2, axes={-1: input_shape[-1]})
        self.built = True

    def quantize(self, mode=None, type_check=True, config=None):
        if mode != "int8":
            raise NotImplementedError(
                f"{self.name}: keras_gemma supports quantize('int8') only, not {mode!r}."
            )
        if self.is_int8:
            return
        kernel = ops.convert_to_numpy(self._kernel)
        drop_float_variable(self, "_kernel")
        self._add_int8_variables(kernel.shape[0])
        self.assign_float_weight(kernel)

    def _add_int8_variables(self, input_dim):
        self._kernel = self.add_weight(
            name="kernel", shape=(self.units, input_dim), dtype="int8",
            initializer="zeros", trainable=False,
        )
        self.kernel_scale = self.add_weight(
            name="kernel_scale",
            shape=(self.units, input_dim // group_size(input_dim)),
            dtype="float32", initializer="ones", trainable=False,
        )
        self.is_int8 = True

    # -- loading a float checkpoint into the int8 variables -------------------

    @property
    def int8_variables(self):
        return (self._kernel, self.kernel_scale)

    @property
    def float_weight(self):
        """(checkpoint path, float shape) of the kernel these int8 variables hold."""
        return self._kernel.path, (self._kernel.shape[1], self._kernel.shape[0])

    def assign_float_weight(self, kernel):
        """Quantizes a float (in, out) numpy kernel into the int8 variables."""
        levels, scales = quantize_groups(np.asarray(kernel).T, axis=1)
        backend.assign_from_host(self._kernel, levels)
        backend.assign_from_host(self.kernel_scale, scales)

    def _dequantized_transposed_kernel(self):
        levels = levels_in_context(self._kernel)
        return dequantize_groups(levels, self.kernel_scale, 1, self.compute_dtype)

    @property
    def kernel(self):
        if not self.is_int8:
            if not self.lora_enabled and self.quantization_mode is None:
                # What Dense.kernel returns here, without `super()` on a
                # property, which torch.compile cannot trace.
                return self._kernel
            return super().kernel
        kernel = ops.transpose(self._dequantized_transposed_kernel())
        if self.lora_enabled:
            update = ops.matmul(self.lora_kernel_a, self.lora_kernel_b)
            kernel = kernel + ops.cast((self.lora_alpha / self.lora_rank) * update, kernel.dtype)
        return kernel

    def call(self, inputs, training=None):
        if not self.is_int8:
            return super().call(inputs, training=training)
        outputs = grouped_matmul(inputs, self._kernel, self.kernel_scale, self.compute_dtype)
        if self.lora_enabled:
            update = ops.matmul(ops.matmul(inputs, self.lora_kernel_a), self.lora_kernel_b)
            outputs = outputs + ops.cast((self.lora_alpha / self.lora_rank) * update, outputs.dtype)
        if self.bias is not None:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs
