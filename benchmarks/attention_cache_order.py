"""Operand order of a decode step's attention products over the cache, per backend.

The keys x query and probabilities x values einsums of
``GemmaAttention._attend_one_step`` compute the same product in either
operand order, but XLA:CPU writes a transposed copy of the cache for the
order its version does not expect (``backend.cache_first_in_attention_products``).
18 layers x 128 positions x 256 values per head (gemma3_270m's shapes), a
new token's query through every layer's caches, compiled, best of 5;
"k1" = the key cache first, "v1" = the value cache first, ms per step:

    KERAS_BACKEND=tensorflow python benchmarks/attention_cache_order.py 16
    KERAS_BACKEND=jax python benchmarks/attention_cache_order.py 1
"""
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, keras
from keras import ops
B = int(sys.argv[1]) if len(sys.argv) > 1 else 16
S = 128; L = 18
rng = np.random.default_rng(0)
Ks = [ops.convert_to_tensor(rng.normal(size=(B, S, 1, 256)).astype("float32")) for _ in range(L)]
Vs = [ops.convert_to_tensor(rng.normal(size=(B, S, 1, 256)).astype("float32")) for _ in range(L)]
q = ops.convert_to_tensor(rng.normal(size=(B, 1, 1, 4, 256)).astype("float32"))
variants = {
  "k2_v1": lambda q, K, V: ops.einsum("bskh,bkgts->btkgh", V, ops.softmax(ops.einsum("btkgh,bskh->bkgts", q, K))),
  "k1_v1": lambda q, K, V: ops.einsum("bskh,bkgts->btkgh", V, ops.softmax(ops.einsum("bskh,btkgh->bkgts", K, q))),
  "k1_v2": lambda q, K, V: ops.einsum("bkgts,bskh->btkgh", ops.softmax(ops.einsum("bskh,btkgh->bkgts", K, q)), V),
  "k2_v2": lambda q, K, V: ops.einsum("bkgts,bskh->btkgh", ops.softmax(ops.einsum("btkgh,bskh->bkgts", q, K)), V),
}
be = keras.config.backend()
def compile(fn):
    def run(q, Ks, Vs):
        x = q
        for K, V in zip(Ks, Vs):
            x = x + 1e-3 * ops.reshape(fn(x, K, V), ops.shape(x))
        return x
    if be == "jax":
        import jax; return jax.jit(run)
    if be == "torch": return run
    import tensorflow as tf; return tf.function(run, jit_compile=True)
fns = {k: compile(f) for k, f in variants.items()}
outs = {k: np.asarray(f(q, Ks, Vs)) for k, f in fns.items()}
ref = outs["k2_v1"]
best = dict.fromkeys(fns, 1e9)
for r in range(5):
    for k, f in fns.items():
        t = time.perf_counter(); np.asarray(f(q, Ks, Vs)); best[k] = min(best[k], time.perf_counter() - t)
print(be, "B", B, "load", round(os.getloadavg()[0], 1), {k: round(v * 1e3, 2) for k, v in best.items()}, "maxdiff", max(float(np.abs(o - ref).max()) for o in outs.values()))
