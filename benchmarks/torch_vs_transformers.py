"""keras_gemma on PyTorch against transformers, batch 1 decode, interleaved in one process.

keras_gemma float32 and int8 (default settings: traced step, automatic
threads) and transformers' eager Gemma3ForCausalLM (PyTorch's threads, and
one thread) decode the same 8-token prompt greedily, in rounds (A, B, C, D,
A, B, ...), so a noisy machine slows all alike. Per-token time is
(time for 26 new tokens - time for 2) / 24, i.e. the prefill left out;
the first ``generate`` of each keras_gemma model (tracing and the int8
kernel's compilation included) is printed first. Tokens are compared with
keras_gemma float32's. Needs the transformers folder that
``benchmarks/generate.py`` writes (~/.cache/keras_gemma_bench/gemma3_270m/hf).

    python benchmarks/torch_vs_transformers.py 3     # rounds
"""
import os, sys, time
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, torch
import keras_gemma
from keras_gemma import backend
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
new = 24
prompt = np.array([[2, 651, 6037, 529, 7001, 563, 496, 3207]], "int32")
kg = {}
for dtype in ("float32", "int8"):
    kwargs = {"quantize": "int8"} if dtype == "int8" else {"dtype": dtype}
    m = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", **kwargs); m.compile(sampler="greedy"); kg[dtype] = m
t = time.perf_counter()
from transformers import AutoModelForCausalLM
hf = AutoModelForCausalLM.from_pretrained(os.path.expanduser("~/.cache/keras_gemma_bench/gemma3_270m/hf"), dtype=torch.float32).eval()
print(f"transformers import+load {time.perf_counter()-t:.0f}s", flush=True)
def kg_gen(m, n):
    out = m.generate({"token_ids": np.pad(prompt, ((0,0),(0,n))), "padding_mask": np.pad(prompt != 0, ((0,0),(0,n)))}, max_length=8+n, stop_token_ids=None)
    return np.asarray(out["token_ids"])[0, 8:8+n]
def hf_gen(n):
    x = torch.from_numpy(prompt.astype("int64"))
    with torch.inference_mode():
        out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out.numpy()[0, 8:]
def per_token(gen):
    t = time.perf_counter(); gen(2); short = time.perf_counter() - t
    t = time.perf_counter(); toks = gen(2 + new); long = time.perf_counter() - t
    return (long - short) / new, toks
for dtype, m in kg.items():  # first call: trace (+ int8 kernel compile) in the time to first token
    t = time.perf_counter(); kg_gen(m, 1); print(f"keras_gemma {dtype} first generate (1 token, trace included) {time.perf_counter()-t:.2f}s", flush=True)
hf_gen(2)
for m in kg.values():
    kg_gen(m, 2); kg_gen(m, 26)
ref = None
for r in range(rounds):
    def hf1(n):
        before = torch.get_num_threads(); torch.set_num_threads(1)
        try: return hf_gen(n)
        finally: torch.set_num_threads(before)
    for name, gen in (("keras_gemma float32", lambda n: kg_gen(kg["float32"], n)),
                      ("transformers float32 (torch threads %d)" % torch.get_num_threads(), hf_gen),
                      ("transformers float32 (1 thread)", hf1),
                      ("keras_gemma int8", lambda n: kg_gen(kg["int8"], n))):
        load = os.getloadavg()[0]
        threads = backend.torch_inference_threads() if name.startswith("keras") else ("1" if "1 thread" in name else torch.get_num_threads())
        s, toks = per_token(gen)
        ref = ref if ref is not None else toks
        print(f"round {r} {name:40s} {s*1e3:6.0f} ms/token ({1/s:5.1f} tok/s)  threads {threads}  load {load:.1f}  tokens==kg-f32 {np.array_equal(toks, ref)}", flush=True)
