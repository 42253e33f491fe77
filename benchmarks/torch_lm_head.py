"""Micro-benchmark: the PyTorch LM head product, float32 and int8, by number of rows.

The gemma3_270m LM head is ``hidden @ embeddings.T`` with a (262,144, 640)
matrix (random values here; only the shapes matter). Variants, interleaved
per row count in one process (milliseconds per call, best of ``--reps``):

- ``float mm``: ``torch.matmul`` (MKL: one SGEMM with 1-16 columns),
- ``float blocks``: ``torch_matmul.matmul_transposed`` (a ``torch.bmm`` over
  32 row blocks of the matrix: MKL's SGEMM_BATCH), what keras_gemma runs,
- ``int8 one reduction``: the earlier ``torch_int8`` kernel, one inductor
  reduction over (rows, out), which reads the matrix once per row,
- ``int8 per row``: ``torch_int8.grouped_int8_matmul``, one reduction per
  row fused into one pass over the matrix, what keras_gemma runs,
- ``int8 dequantize+mm``: the float copy then the product (eager PyTorch
  without the kernel).

Results are checked against float64. ``MKL_VERBOSE=1`` shows which MKL
routine each float variant calls.

    python benchmarks/torch_lm_head.py --rows 1,4,16 --threads 1,2
"""

import argparse
import os
import time

import torch

from keras_gemma import torch_int8
from keras_gemma import torch_matmul

VOCABULARY, HIDDEN, GROUP = 262_144, 640, 32


def one_reduction_int8(inputs, levels, scales):
    # The kernel before per-row reductions (kept here for the comparison).
    out_dim, in_dim = levels.shape
    groups = scales.shape[1]
    weights = levels.view(out_dim, groups, in_dim // groups).to(inputs.dtype)
    weights = weights * scales.to(inputs.dtype)[:, :, None]
    grouped_inputs = inputs.reshape(-1, 1, groups, in_dim // groups)
    return (grouped_inputs * weights[None]).sum((-1, -2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,4,16")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    matrix = torch.randn(VOCABULARY, HIDDEN) * 0.05
    levels = torch.randint(-127, 128, (VOCABULARY, HIDDEN), dtype=torch.int8)
    scales = torch.rand(VOCABULARY, HIDDEN // GROUP) * 1e-3
    dequantized = (levels.view(VOCABULARY, -1, GROUP).float() * scales[:, :, None]).view(VOCABULARY, HIDDEN)
    one_reduction = torch.compile(one_reduction_int8, dynamic=True)
    variants = {
        "float mm": (lambda x: torch.matmul(x, matrix.T), matrix),
        "float blocks": (lambda x: torch_matmul.matmul_transposed(x, matrix), matrix),
        "int8 one reduction": (lambda x: one_reduction(x, levels, scales), dequantized),
        "int8 per row": (lambda x: torch_int8.grouped_int8_matmul(x, levels, scales), dequantized),
        "int8 dequantize+mm": (lambda x: torch.matmul(x, (levels.view(VOCABULARY, -1, GROUP).float()
                                                          * scales[:, :, None]).view(VOCABULARY, HIDDEN).T),
                               dequantized),
    }
    for round_ in range(args.rounds):
        for rows in [int(r) for r in args.rows.split(",")]:
            inputs = torch.randn(rows, HIDDEN)
            for threads in [int(t) for t in args.threads.split(",")]:
                torch.set_num_threads(threads)
                cells = []
                for name, (function, reference) in variants.items():
                    result = function(inputs)  # warm up (compiles the int8 kernels)
                    expected = (inputs.double() @ reference.double().T).float()
                    torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-3)
                    times = []
                    for _ in range(args.reps):
                        begin = time.perf_counter()
                        function(inputs)
                        times.append(time.perf_counter() - begin)
                    cells.append(f"{name} {min(times) * 1e3:.1f}")
                print(f"round {round_}, {rows} rows, {threads} thread(s), load {os.getloadavg()[0]:.1f}: "
                      + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
