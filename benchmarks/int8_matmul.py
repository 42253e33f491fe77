"""Micro-benchmark: one projection, float32 against our int8 formulation, on JAX.

keras_gemma's int8 kernels hold levels as (out, in) with one scale per 32
inputs, dequantized inside the matmul (``quantization.QuantizableDense``).
On XLA:CPU that fused form is fast for Gemma 3's shapes but slow once the
input dimension is large (Gemma 4's 6144- and 12288-wide down projections)
and at batch 16; this script measures each shape so a new formulation can
be compared on the same footing. Milliseconds per call, best of a few.

    .venv/bin/python benchmarks/int8_matmul.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = [  # (in, out): Gemma 3 270M's feed-forward, Gemma 4 E2B's, its double-wide one
    (640, 2048), (2048, 640), (1536, 6144), (6144, 1536), (1536, 12288), (12288, 1536),
]
GROUP = 32


def milliseconds(function, *args, repeats=30):
    function(*args).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        result = function(*args)
    result.block_until_ready()
    return (time.perf_counter() - start) / repeats * 1e3


def dequantized(levels, scales):
    out, inputs = levels.shape
    grouped = levels.reshape(out, inputs // GROUP, GROUP).astype(jnp.float32)
    return (grouped * scales[:, :, None]).reshape(out, inputs)


def main():
    rng = np.random.default_rng(0)
    float_in_out = jax.jit(lambda x, w: x @ w)
    float_out_in = jax.jit(lambda x, w: x @ w.T)
    ours = jax.jit(lambda x, levels, scales: x @ dequantized(levels, scales).T)
    print("in     out    batch  f32 (in,out)  f32 (out,in)  int8 ours (out,in)")
    for inputs, out in SHAPES:
        for batch in (1, 16):
            x = jnp.asarray(rng.standard_normal((batch, inputs)), jnp.float32)
            w = jnp.asarray(rng.standard_normal((inputs, out)), jnp.float32)
            levels = jnp.asarray(rng.integers(-127, 128, (out, inputs)), jnp.int8)
            scales = jnp.asarray(rng.random((out, inputs // GROUP)), jnp.float32)
            print(f"{inputs:<6} {out:<6} {batch:<6} "
                  f"{milliseconds(float_in_out, x, w):<13.3f} "
                  f"{milliseconds(float_out_in, x, jnp.asarray(w.T)):<13.3f} "
                  f"{milliseconds(ours, x, levels, scales):.3f}", flush=True)


if __name__ == "__main__":
    main()
