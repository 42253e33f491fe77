"""The tied LM head's product in a compiled loop, by the matrix's layout (2026-12-02).

16 rows (``ROWS``) by Gemma 3 270M's (262,144, 640) float32 embedding, as
stored, or as a (640, 262,144) copy made once before the loop (what
``backend.transposes_lm_head`` chooses on TensorFlow). ms per product,
best of 3 loops of 32 products; the copy's time is in its row.

    python benchmarks/lm_head_layout.py tensorflow
    python benchmarks/lm_head_layout.py jax
"""
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
which = sys.argv[1] if len(sys.argv) > 1 else "tensorflow"
rows, steps = int(os.environ.get("ROWS", 16)), 32
matrix = np.random.default_rng(0).normal(size=(262144, 640)).astype("float32")
hidden = np.random.default_rng(1).normal(size=(rows, 640)).astype("float32")

if which == "tensorflow":
    import tensorflow as tf

    embedding = tf.Variable(matrix)

    def loop(transposed):
        @tf.function(jit_compile=True)
        def run(h):
            weight = tf.transpose(embedding) if transposed else embedding

            def body(i, total):
                x = h + tf.cast(i, tf.float32) * 1e-6
                out = tf.matmul(x, weight) if transposed else tf.matmul(x, weight, transpose_b=True)
                return i + 1, total + tf.reduce_max(out)

            return tf.while_loop(lambda i, total: i < steps, body, (0, 0.0))[1]

        return lambda: run(tf.constant(hidden)).numpy()
else:
    import jax
    import jax.numpy as jnp

    embedding = jnp.asarray(matrix)

    def loop(transposed):
        @jax.jit
        def run(h, e):
            weight = jax.lax.optimization_barrier(e.T.copy()) if transposed else e.T

            def body(i, total):
                return total + jnp.max((h + i * 1e-6) @ weight)

            return jax.lax.fori_loop(0, steps, body, 0.0)

        return lambda: run(jnp.asarray(hidden), embedding).block_until_ready()

runs = {"as stored (262144, 640)": loop(False), "transposed copy (640, 262144)": loop(True)}
best = {}
for name, run in runs.items():
    run()
for _ in range(3):
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        best[name] = min(best.get(name, 1e9), (time.perf_counter() - start) / steps * 1e3)
print(f"{which}, {rows} rows, load {os.getloadavg()[0]:.1f}")
for name, ms in best.items():
    print(f"  {name}: {ms:.1f} ms per product ({2 * rows * 640 * 262144 / ms / 1e6:.0f} GFLOP/s)")
