"""Decode speed of 120 new tokens in a 128-position bucket against 128 in a 256-position one (the cache that grows, 2026-12-02).

Before the cache started small (causal_lm._cache_length), every step of the
second attended to 256 positions; now both attend to 128 until position 128.

    KERAS_BACKEND=jax python benchmarks/cache_growth.py float32
"""
import os, sys, time
import numpy as np
import keras_gemma
dtype = sys.argv[1] if len(sys.argv) > 1 else "float32"
kw = {"quantize": "int8"} if dtype == "int8" else {"dtype": dtype}
m = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", **kw)
m.compile(sampler="greedy")
rng = np.random.default_rng(0)
ids = rng.integers(10, 20000, (16, 8)).astype("int32"); ids[:, 0] = 2
def gen(b, max_length):
    x = ids[:b]
    t = time.perf_counter()
    m.generate({"token_ids": x, "padding_mask": np.ones_like(x, bool)}, max_length=max_length, stop_token_ids=None)
    return time.perf_counter() - t
for b in (1, 16):
    for L in (128, 136): gen(b, L)
    res = {128: [], 136: []}
    for r in range(3):
        for L in (128, 136): res[L].append(gen(b, L))
    t128, t136 = min(res[128]), min(res[136])
    print(f"b{b}: 120 tokens in bucket 128: {b*120/t128:.1f} tok/s; 128 tokens in bucket 256: {b*128/t136:.1f} tok/s; ms/step {t128/120*1e3:.1f} vs {t136/128*1e3:.1f} load {os.getloadavg()[0]:.1f}", flush=True)
