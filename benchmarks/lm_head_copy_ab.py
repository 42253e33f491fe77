"""Decode with and without the LM head copy (float32: transposed; int8: bfloat16), alternating in one process (2026-12-02).

Compiles both variants (backend.TRANSPOSED_LM_HEAD_MIN_ROWS 8, or never),
then alternates b1 and b16 calls (8-token prompts, 128 new tokens) for
ROUNDS rounds; prints every call, the b16/b1 ratio of the best calls, and
whether the batch-16 tokens are the same.

    KERAS_BACKEND=tensorflow python benchmarks/lm_head_copy_ab.py [float32|int8]
"""
import os, sys, time
import numpy as np
import keras_gemma
from keras_gemma import backend
dtype = sys.argv[1] if len(sys.argv) > 1 else "float32"
kw = {"quantize": "int8"} if dtype == "int8" else {"dtype": dtype}
m = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", **kw)
m.compile(sampler="greedy")
rng = np.random.default_rng(0)
ids = rng.integers(10, 20000, (16, 8)).astype("int32"); ids[:, 0] = 2
new = 128
def gen(b):
    x = ids[:b]
    t = time.perf_counter()
    out = m.generate({"token_ids": x, "padding_mask": np.ones_like(x, bool)}, max_length=x.shape[1] + new, stop_token_ids=None)
    return b * new / (time.perf_counter() - t), out
fns = {}
outs = {}
for mode, thr in (("as_stored", 10**9), ("copy", 8)):
    backend.TRANSPOSED_LM_HEAD_MIN_ROWS = thr
    m._generate_functions = {}
    gen(16); gen(1)
    fns[mode] = m._generate_functions
res = {k: {"b1": [], "b16": []} for k in fns}
for r in range(int(os.environ.get("ROUNDS", 3))):
    for mode, thr in (("as_stored", 10**9), ("copy", 8)):
        backend.TRANSPOSED_LM_HEAD_MIN_ROWS = thr
        m._generate_functions = fns[mode]
        for b in (1, 16):
            tps, out = gen(b)
            res[mode][f"b{b}"].append(tps)
            outs.setdefault(b, {})[mode] = np.asarray(out["token_ids"] if isinstance(out, dict) else out)
for mode in res:
    b1, b16 = max(res[mode]["b1"]), max(res[mode]["b16"])
    print(mode, "b1", [round(x,1) for x in res[mode]["b1"]], "b16", [round(x,1) for x in res[mode]["b16"]], f"ratio {b16/b1:.2f}", flush=True)
print("same tokens b16:", np.array_equal(outs[16]["as_stored"], outs[16]["copy"]), "load", os.getloadavg()[0])
