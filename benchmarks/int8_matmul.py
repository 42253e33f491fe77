"""Micro-benchmark: one projection, float32 against int8 formulations, on JAX.

keras_gemma's int8 kernels hold levels as (out, in) with one scale per 32
inputs (``quantization.QuantizableDense``). XLA:CPU fuses the
dequantization into a matrix-vector product only while the vector is under
16 KiB and the output is a vector; this script measures, per shape, the
float32 product, the plain fused form, the 2048-wide slices behind a fusion
barrier that ``quantization.grouped_matmul`` uses at batch 1, and the 1 MiB
row blocks it uses with more rows. The weights are cycled through copies
larger than the CPU's last-level cache, so they stream from memory as in a
real decode step. Milliseconds per call, best of 3.

Outside a compiled loop each call allocates its float buffers afresh (page
faults), which makes every variant that writes a dequantized copy look far
slower than inside ``generate``'s decode loop; compare batch > 1 variants
in the real model (``profile_xla_decode.py``) rather than here.

    python benchmarks/int8_matmul.py                   # every shape, batch 1 and 16
    python benchmarks/int8_matmul.py --shapes 6144x1536 --batches 1
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

GROUP = 32
SHAPES = (  # in x out: Gemma 3 270M (MLP, q/kv, LM head), Gemma 4 E2B (MLP, double-wide)
    "640x2048,2048x640,640x1024,1024x640,640x262144,1536x6144,6144x1536,12288x1536"
)
STREAMED_BYTES = 256e6  # more than the 32 MiB L3 of the machine measured


def dequantized(levels, scales):
    out, width = levels.shape
    grouped = levels.reshape(out, scales.shape[1], -1).astype(jnp.float32)
    return (grouped * scales[:, :, None]).reshape(out, width)


def sliced(x, levels, scales, width=2048):
    total = None
    for begin in range(0, levels.shape[1], width):
        end = min(begin + width, levels.shape[1])
        part = x[:, begin:end] @ dequantized(
            levels[:, begin:end], scales[:, begin // GROUP : end // GROUP]
        ).T
        part = jax.lax.optimization_barrier(part)
        total = part if total is None else total + part
    return total


def row_blocks(x, levels, scales, block_bytes=1 << 20):
    step = max(1, block_bytes // (levels.shape[1] * 4))
    return jnp.concatenate(
        [x @ dequantized(levels[a : a + step], scales[a : a + step]).T
         for a in range(0, levels.shape[0], step)], axis=1)


VARIANTS = {
    "f32 (in out)": (False, lambda x, w: x @ w),
    "int8 fused": (True, lambda x, levels, scales: x @ dequantized(levels, scales).T),
    "int8 sliced+barrier": (True, sliced),
    "int8 1MiB row blocks": (True, row_blocks),
}


def milliseconds(function, x, weights):
    function(x, *weights[0]).block_until_ready()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for weight in weights:
            result = function(x, *weight)
        result.block_until_ready()
        best = min(best, (time.perf_counter() - start) / len(weights))
    return best * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    names = args.variants.split(",")
    print("in x out | batch | " + " | ".join(names))
    for shape in args.shapes.split(","):
        inputs, out = map(int, shape.split("x"))
        host = {
            False: (rng.standard_normal((inputs, out), dtype=np.float32),),
            True: (rng.integers(-127, 128, (out, inputs), dtype=np.int8),
                   rng.random((out, inputs // GROUP), dtype=np.float32)),
        }
        for batch in map(int, args.batches.split(",")):
            x = jnp.asarray(rng.standard_normal((batch, inputs), dtype=np.float32))
            row = []
            for name in names:
                is_int8, function = VARIANTS[name]
                arrays = host[is_int8]
                copies = max(1, int(STREAMED_BYTES // sum(a.nbytes for a in arrays)))
                weights = [tuple(jnp.array(a) for a in arrays) for _ in range(copies)]
                row.append(milliseconds(jax.jit(function), x, weights))
                del weights
            print(f"{shape} | {batch} | " + " | ".join(f"{t:.3f}" for t in row), flush=True)


if __name__ == "__main__":
    main()
