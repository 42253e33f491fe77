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
row (16 rows of the LM head: 470-710 ms against 165-170 ms float32). The
kernel is compiled once per number of rows, for any matrix shape
(``dynamic=True``; a few seconds each, kept in inductor's on-disk cache
for later processes), and used for matmuls of at most ``MAX_ROWS`` input
rows (decoding, up to batch 16); longer inputs (a prefill) keep the float
copy, whose one matmul then serves every row. The LM head (262,144 x 640)
with one thread, load ~3 (benchmarks/README.md, "The LM head as a batch of
products; int8 rows in one pass"): 1 row 22-24 ms fused against 25 ms
float32 and 660-920 ms dequantize-then-matmul; 4 rows 31-46 / 43-49 ms;
16 rows 142-151 / 176-212 ms.
It is a ``torch.library`` op so that a traced decode step
(``backend._traced_step``) records it as one op. ``backend`` calls it; the
model code stays ``keras.ops``.
"""

import functools

import torch

MAX_ROWS = 16


def _grouped_int8_matmul(inputs, levels, scales):
    out_dim, in_dim = levels.shape
    groups = scales.shape[1]
    weights = levels.view(out_dim, groups, in_dim // groups).to(inputs.dtype)
    weights = weights * scales.to(inputs.dtype)[:, :, None]
    grouped_inputs = inputs.reshape(-1, groups, in_dim // groups)
    # One reduction per row (unrolled: dynamo specializes on the row count)
    # over the same matrix: inductor fuses them into one pass over it.
    return torch.stack([(grouped_inputs[row] * weights).sum((-1, -2)) for row in range(inputs.shape[0])])


@functools.cache
def _compiled():
    return torch.compile(_grouped_int8_matmul, dynamic=True)


# (rows, dtype) the kernel has been compiled for. Each row count is its own
# program of the one function, and dynamo stops compiling a function after
# ``recompile_limit`` (8) programs, running it as plain PyTorch (a float
# copy of the matrix per row); the first call of each new count raises that
# limit to room for every row count in a few dtypes.
_COMPILED_FOR = set()


def _run_compiled(inputs, levels, scales):
    key = (inputs.shape[0], inputs.dtype)
    if key in _COMPILED_FOR:
        return _compiled()(inputs, levels, scales)
    import torch._dynamo

    limit = max(torch._dynamo.config.recompile_limit, 4 * MAX_ROWS)
    with torch._dynamo.config.patch(recompile_limit=limit):
        outputs = _compiled()(inputs, levels, scales)
    _COMPILED_FOR.add(key)
    return outputs


@torch.library.custom_op("keras_gemma::grouped_int8_matmul", mutates_args=())
def grouped_int8_matmul_op(inputs: torch.Tensor, levels: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    # Detached: torch.compile keeps an nn.Parameter's (a Keras variable's)
    # shape static whatever ``dynamic`` says, so each matrix shape would
    # compile again, and past dynamo's recompile limit the kernel would run
    # as plain PyTorch, materializing (rows, out, in) floats.
    return _run_compiled(inputs.detach(), levels.detach(), scales.detach())


@grouped_int8_matmul_op.register_fake
def _(inputs, levels, scales):
    return inputs.new_empty((inputs.shape[0], levels.shape[0]))


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
    outputs = grouped_int8_matmul_op(inputs.reshape(rows, inputs.shape[-1]), levels, scales)
    return outputs.reshape(*inputs.shape[:-1], levels.shape[0])
