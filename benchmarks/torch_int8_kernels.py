"""PyTorch int8 kernel per call: dynamic shapes, static shapes, keras_gemma's op (2026-12-02).

Gemma 3 270M's matrix shapes (query, gate/up, down, LM head) with random
int8 levels and group scales, 1 and 16 input rows, microseconds per call:

- ``dynamic``: ``torch.compile(dynamic=True)`` of ``torch_int8``'s function
  (the kernel before round 6), called directly;
- ``static``: ``torch.compile(dynamic=False)`` of the same function;
- ``op``: ``torch.ops.keras_gemma.grouped_int8_matmul`` as keras_gemma
  calls it now (``make_fx`` + ``torch._inductor.compile``, one kernel per
  shape, through a ``torch.library`` op);
- ``float32``: ``x @ w.T`` with a float32 matrix of the same shape.

    python benchmarks/torch_int8_kernels.py --threads 2 --rows 1,16
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch  # noqa: E402

from keras_gemma import torch_int8  # noqa: E402

SHAPES = ((8, 32), (1024, 640), (2048, 640), (640, 2048), (262144, 640))


def per_call_us(function, calls):
    for _ in range(3):
        function()
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torch._dynamo

    torch._dynamo.config.recompile_limit = 64
    kernel = torch_int8._grouped_int8_matmul
    variants = {
        "dynamic": torch.compile(kernel, dynamic=True),
        "static": torch.compile(kernel, dynamic=False),
        "op": torch.ops.keras_gemma.grouped_int8_matmul,
    }
    print(f"threads {args.threads}, load {os.getloadavg()[0]:.1f}; us per call")
    with torch.no_grad():
        for rows in (int(r) for r in args.rows.split(",")):
            for out_dim, in_dim in SHAPES:
                levels = torch.randint(-127, 128, (out_dim, in_dim), dtype=torch.int8)
                scales = torch.rand(out_dim, in_dim // 32) * 0.01
                inputs = torch.randn(rows, in_dim)
                dequantized = (levels.view(out_dim, -1, 32).float() * scales[:, :, None]).view(out_dim, in_dim)
                expected = inputs @ dequantized.T
                calls = 10 if out_dim > 100_000 else 300
                cells = [f"{rows:2d} x {out_dim} x {in_dim}"]
                for name, function in variants.items():
                    result = function(inputs, levels, scales)
                    torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-4)
                    cells.append(f"{name} {per_call_us(lambda: function(inputs, levels, scales), calls):,.0f}")
                cells.append(f"float32 {per_call_us(lambda: inputs @ dequantized.T, calls):,.0f}")
                print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
