"""PyTorch: float32 products with a tall matrix (the tied LM head) at full bandwidth.

The LM head multiplies a few hidden states by the (vocabulary, hidden)
embedding matrix transposed: ``inputs @ embeddings.T``, 262,144 x 640
float32 for Gemma 3 (671 MB read per decoded token). PyTorch hands that to
MKL as one SGEMM with a single column, and MKL runs that shape at about
half the bandwidth the machine has (2-core AMD EPYC: 47-77 ms for one row,
13.7 GB/s, with one or two threads alike). The same product as a batch of
products over row blocks of the matrix (``torch.bmm``, MKL's SGEMM_BATCH)
reads it at 24-34 GB/s: 20-25 ms for one row, and 144-200 ms instead of
204-280 ms for 8 to 16 rows (benchmarks/README.md, "The LM head as a batch
of products"). Each logit is still one dot product of a hidden state with
one float32 row, summed by MKL's kernels: equal to the plain product up to
float32 rounding of the summation order.

``backend.matmul_transposed`` calls this; the model code stays ``keras.ops``.
"""

import torch

# Decode steps (batch up to 16, and a little beyond) gain; longer inputs
# (a prefill, training) are compute-bound and keep PyTorch's one product.
MAX_ROWS = 32
# Blocks of rows of the matrix, one product each: the most blocks, up to
# this many, that divide the matrix's rows into blocks of MIN_BLOCK_ROWS
# or more (32 for Gemma's 256,000 and 262,144 vocabularies).
MAX_BLOCKS = 32
MIN_BLOCK_ROWS = 1024


def blocks_for(out_dim):
    """How many equal row blocks ``matmul_transposed`` splits ``out_dim`` rows into."""
    blocks = MAX_BLOCKS
    while blocks > 1 and (out_dim % blocks or out_dim // blocks < MIN_BLOCK_ROWS):
        blocks //= 2
    return blocks


def matmul_transposed(inputs, matrix):
    """``inputs @ matrix.T`` for a (out, in) ``matrix``, as a batch of block products
    when that is faster (float32 on a CPU, at most ``MAX_ROWS`` input rows, a
    matrix of 2+ blocks), else ``torch.matmul``.
    """
    in_dim = inputs.shape[-1]
    rows = inputs.numel() // in_dim if in_dim else 0
    out_dim = matrix.shape[0]
    blocks = blocks_for(out_dim)
    if (
        blocks < 2
        or not 1 <= rows <= MAX_ROWS
        or inputs.dtype != torch.float32
        or matrix.dtype != torch.float32
        or matrix.device.type != "cpu"
        or inputs.device.type != "cpu"
        or not matrix.is_contiguous()
    ):
        return torch.matmul(inputs, matrix.T)
    columns = inputs.reshape(rows, in_dim).T.unsqueeze(0).expand(blocks, in_dim, rows)
    outputs = torch.bmm(matrix.view(blocks, out_dim // blocks, in_dim), columns)
    # (blocks, out / blocks, rows) -> (rows, out): a view for one row, one
    # copy of the logits (not of the matrix) for more.
    outputs = outputs.permute(2, 0, 1).reshape(rows, out_dim)
    return outputs.reshape(*inputs.shape[:-1], out_dim)
