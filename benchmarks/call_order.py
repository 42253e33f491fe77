"""Decode speed by the order of calls in one process (TensorFlow's trace generalization, 2026-12-02).

Loads gemma3_270m once (``int8`` or a float dtype) and runs the given calls
in order, each three times (the first of a new shape compiles): ``first``
(one 8-token prompt, 1 new token), ``long`` (a 512-token prompt, 1 new
token), ``b1`` / ``b16`` (8-token prompts, 128 new tokens, batch 1 / 16).
``generate.py``'s order is ``first,long,b1,b16``.

    KERAS_BACKEND=tensorflow python benchmarks/call_order.py int8 first,long,b1,b16,b1
"""
import os, sys, time, resource
import numpy as np
import keras_gemma
dtype = sys.argv[1] if len(sys.argv) > 1 else "int8"
order = sys.argv[2].split(",") if len(sys.argv) > 2 else ["b16", "b1", "long", "b16", "b1"]
new = 128
REPS = int(os.environ.get("REPS", 3))
kw = {"quantize": "int8"} if dtype == "int8" else {"dtype": dtype}
m = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", **kw)
m.compile(sampler="greedy")
rng = np.random.default_rng(0)
ids = rng.integers(10, 20000, (16, 8)).astype("int32"); ids[:, 0] = 2
long = rng.integers(10, 20000, (1, 512)).astype("int32"); long[:, 0] = 2
def gen(x, n):
    t = time.perf_counter()
    m.generate({"token_ids": x, "padding_mask": np.ones_like(x, bool)}, max_length=x.shape[1] + n, stop_token_ids=None)
    return time.perf_counter() - t
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
for step in order:
    if step == "long":
        s = [gen(long, 1) for _ in range(REPS)]
        print(f"long prefill {min(s):.2f}s peak {rss():.2f}GB", flush=True)
    elif step == "first":
        print(f"first {gen(ids[:1], 1):.2f}s", flush=True)
    else:
        b = 16 if step == "b16" else 1
        s = [gen(ids[:b], new) for _ in range(REPS)]
        print(f"{step} " + " ".join(f"{b*new/x:.1f}" for x in s) + f" tok/s peak {rss():.2f}GB load {os.getloadavg()[0]:.1f}", flush=True)
