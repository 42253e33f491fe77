"""Products of 16 rows with an int8 matrix (one scale per 32 inputs) on JAX/XLA:CPU.

What ``quantization.grouped_matmul`` could do at batch > 1 in the decode
loop, each variant run inside a ``fori_loop`` of 4 steps (as in the decode
loop: buffers reused, the weights loop-invariant but the inputs not),
interleaved, best of 3; ms per step. Default shape: Gemma 3 270M's LM head
(16 x 640 by 640 x 262,144).

    python benchmarks/int8_batch_products.py [in out]

Variants: ``float32`` (float32 weights: the speed to match), ``int8->f32``
(dequantized to float32, then multiplied: the old path), ``int8->bf16``
(dequantized to bfloat16, bfloat16 product summed in float32; ``xN``: in N
blocks of output rows: the new path), ``q8 x q8 per group`` (inputs
quantized to int8 per 32 values as llama.cpp's Q8_0 does, one int32
product per group of 32, scaled and summed: the only exact int8 x int8
formula with per-group weight scales), ``q8 x q8 one scale`` (an int8 x
int8 product over the whole row, which needs one weight scale per row:
the speed an integer product would have, not a usable formula here).
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

STEPS = 4
ROWS = 16


def main():
    width, out = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (640, 262144)
    groups = width // 32
    rng = np.random.default_rng(0)
    levels = jnp.asarray(rng.integers(-127, 128, (out, width), dtype=np.int8))
    scales = jnp.asarray(rng.random((out, groups), dtype=np.float32) * 0.01)
    inputs = jnp.asarray(rng.standard_normal((ROWS, width), dtype=np.float32))

    def dequantize(levels, scales, dtype):
        grouped = levels.reshape(-1, groups, 32).astype(jnp.float32) * scales[:, :, None]
        return grouped.reshape(-1, width).astype(dtype)

    def product(a, w, accumulate=None):
        return jax.lax.dot_general(a, w, (((1,), (1,)), ((), ())), preferred_element_type=accumulate)

    def quantized_inputs(a):
        grouped = a.reshape(ROWS, groups, 32)
        step = jnp.max(jnp.abs(grouped), axis=-1) / 127.0
        safe = jnp.where(step == 0, 1.0, step)
        return jnp.round(grouped / safe[..., None]).astype(jnp.int8), step

    def bfloat16_blocks(blocks):
        def run(a, levels, scales):
            a = a.astype(jnp.bfloat16)
            size = out // blocks
            return jnp.concatenate([
                product(a, dequantize(levels[i * size:(i + 1) * size],
                                      scales[i * size:(i + 1) * size], jnp.bfloat16), jnp.float32)
                for i in range(blocks)], axis=1)
        return run

    def q8_per_group(a, levels, scales):
        q, step = quantized_inputs(a)
        sums = jax.lax.dot_general(levels.reshape(out, groups, 32), q, (((2,), (2,)), ((1,), (1,))),
                                   preferred_element_type=jnp.int32)  # (groups, out, rows)
        return jnp.sum(sums.astype(jnp.float32) * scales.T[:, :, None] * step.T[:, None, :], 0).T

    def q8_one_scale(a, levels, scales):
        q, step = quantized_inputs(a)
        whole = product(q.reshape(ROWS, width), levels, jnp.int32).astype(jnp.float32)
        return whole * step[:, :1] * scales[None, :, 0]

    weights = dequantize(levels, scales, jnp.float32)
    variants = {
        "float32": (lambda a, w: product(a, w), (weights,)),
        "int8->f32": (lambda a, l, s: product(a, dequantize(l, s, jnp.float32)), (levels, scales)),
        "int8->bf16": (bfloat16_blocks(1), (levels, scales)),
        "int8->bf16 x16": (bfloat16_blocks(16), (levels, scales)),
        "q8 x q8 per group": (q8_per_group, (levels, scales)),
        "q8 x q8 one scale": (q8_one_scale, (levels, scales)),
    }
    slice_width = min(width, out)

    def in_a_loop(step):
        def run(a, *weights):
            def body(_, carry):
                a, total = carry
                result = step(a, *weights)
                a = a.at[:, :slice_width].add(result[:, :slice_width] * 1e-9)
                return a, total + result[:, ::64].sum()
            return jax.lax.fori_loop(0, STEPS, body, (a, jnp.zeros((), jnp.float32)))
        return jax.jit(run)

    compiled = {name: (in_a_loop(f), w) for name, (f, w) in variants.items()}
    for function, w in compiled.values():
        jax.block_until_ready(function(inputs, *w))
    best = dict.fromkeys(compiled, float("inf"))
    for _ in range(3):
        for name, (function, w) in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(function(inputs, *w))
            best[name] = min(best[name], (time.perf_counter() - start) / STEPS * 1e3)
    reference = np.asarray(product(inputs, weights))
    print(f"{ROWS} x {width} by {width} x {out}, load {os.getloadavg()[0]:.1f}, ms per step "
          "(error: largest difference / largest float32 output)")
    for name, (f, w) in variants.items():
        error = np.abs(np.asarray(jax.jit(f)(inputs, *w)) - reference).max() / np.abs(reference).max()
        print(f"  {name:18s} {best[name]:8.2f} ms   error {error:.1e}")


if __name__ == "__main__":
    main()
