"""PyTorch: int8 matmuls that read one byte per weight.

Eager PyTorch runs ``quantization.py``'s int8 matmul as written: a float
copy of the whole matrix (levels times group scales), then the matmul, so
each decoded token writes and reads every weight in float32 again (6x
slower than the float model for gemma3_270m). Here the same arithmetic,
``inputs @ (levels * scales).T`` with one scale per 32 levels, is one
loop compiled by inductor: each output sums ``x * level * scale`` over its
row, reading the int8 row once (a different summation order than the
matmul, so the same numbers up to float rounding).

Each input row is its own reduction in the one kernel (the loop over rows
is unrolled when the kernel is compiled), so inductor fuses them into one
loop over the matrix that reads each int8 row once for all input rows; a
single reduction over (rows, out) instead read the whole matrix once per
row (16 rows of the LM head: 470-710 ms against 165-170 ms float32).

Kernels are compiled for static shapes, one per (rows, matrix shape,
dtype, thread count): inductor then knows the row length and vectorizes it without
remainders, 2.5-3.5x faster than one kernel for dynamic shapes (Gemma 3
270M's LM head at 1 row: 8.5 against 28.6 ms; its 1024 x 640 query
projection 48 against 161 us; benchmarks/README.md, "Sixth round").
They are compiled straight from the function's ATen graph
(``make_fx``, then ``torch._inductor.compile``): no dynamo frame and no
guards to check on each call, ~10 us per call against ~100 us through
``torch.compile`` and ``torch.library.custom_op``. A kernel takes
0.2-5 s to compile, and inductor keeps it in its on-disk cache for later
processes. They serve matmuls of at most ``MAX_ROWS`` input rows
(decoding, up to batch 16); longer inputs (a prefill) keep the float copy,
whose one matmul then serves every row.

It is a ``torch.library`` op so that a traced decode step
(``backend._traced_step``) records it as one op. ``backend`` calls it; the
model code stays ``keras.ops``.
"""

import threading

import torch

MAX_ROWS = 16


def _grouped_int8_matmul(inputs, levels, scales):
    out_dim, in_dim = levels.shape
    groups = scales.shape[1]
    weights = levels.view(out_dim, groups, in_dim // groups).to(inputs.dtype)
    weights = weights * scales.to(inputs.dtype)[:, :, None]
    grouped_inputs = inputs.reshape(-1, groups, in_dim // groups)
    # One reduction per row (unrolled: traced for a fixed row count) over
    # the same matrix: inductor fuses them into one pass over it.
    return torch.stack([(grouped_inputs[row] * weights).sum((-1, -2)) for row in range(inputs.shape[0])])


# (input shape, levels shape, scales shape, dtypes, threads) -> compiled
# kernel; inductor writes the thread count into the kernel it compiles.
_KERNELS = {}
_COMPILING = threading.Lock()


def _kernel_for(inputs, levels, scales):
    key = (inputs.shape, levels.shape, scales.shape, inputs.dtype, scales.dtype, torch.get_num_threads())
    kernel = _KERNELS.get(key)
    if kernel is None:
        with _COMPILING:
            kernel = _KERNELS.get(key)
            if kernel is None:
                from torch.fx.experimental.proxy_tensor import make_fx

                graph = make_fx(_grouped_int8_matmul)(inputs, levels, scales)
                kernel = torch._inductor.compile(graph, [inputs, levels, scales])
                _KERNELS[key] = kernel
    return kernel


def _run_kernel(inputs, levels, scales):
    # Contiguous and detached: each kernel was compiled for the strides of
    # its first inputs, and an nn.Parameter (a Keras variable) may be passed.
    inputs, levels, scales = (t.detach().contiguous() for t in (inputs, levels, scales))
    return _kernel_for(inputs, levels, scales)(inputs, levels, scales)


_LIBRARY = torch.library.Library("keras_gemma", "FRAGMENT")
_LIBRARY.define("grouped_int8_matmul(Tensor inputs, Tensor levels, Tensor scales) -> Tensor")
_LIBRARY.impl("grouped_int8_matmul", _run_kernel, "CPU")
_LIBRARY.impl(
    "grouped_int8_matmul",
    lambda inputs, levels, scales: inputs.new_empty((inputs.shape[0], levels.shape[0])),
    "Meta",
)


def grouped_int8_matmul(inputs, levels, scales):
    """``inputs @ dequantized.T`` for (out, in) int8 ``levels`` and (out, in / g)
    ``scales``, or None where the float copy is the better road (more than
    ``MAX_ROWS`` rows, gradients wanted, not on a CPU).
    """
    rows = inputs.numel() // inputs.shape[-1]
    if (
        rows > MAX_ROWS
        or torch.is_grad_enabled()
        or inputs.device.type != "cpu"
        or levels.dtype != torch.int8
    ):
        return None
    outputs = torch.ops.keras_gemma.grouped_int8_matmul(inputs.reshape(rows, inputs.shape[-1]), levels, scales)
    return outputs.reshape(*inputs.shape[:-1], levels.shape[0])
