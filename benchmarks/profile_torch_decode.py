"""Where a PyTorch decode step's time goes: matmuls, attention, LM head, the rest.

Runs keras_gemma's ``generate`` on PyTorch (the real ``gemma3_270m``, batch 1,
8-token prompt, greedy) under ``torch.profiler`` and sorts every ATen op's own
time into the buckets of benchmarks/README.md's profile table:

- LM head: the (rows, hidden) x (hidden, 262,144) matmul,
- matmuls: the other 2-D matmuls (projections, feed-forward),
- attention: the batched matmuls and softmax of attention,
- other ops: every other ATen op (norms, RoPE, masks, casts, cache writes),
- Python and dispatch: wall time not spent inside any ATen op.

Only the decode loop is profiled (the prompt is prefilled before).

    KERAS_BACKEND=torch python benchmarks/profile_torch_decode.py --new 16
    KERAS_GEMMA_TORCH_THREADS=2 python benchmarks/profile_torch_decode.py
"""

import argparse
import os
import time

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402


def bucket(event):
    name = event.key
    shapes = event.input_shapes or []
    if name in ("aten::mm", "aten::addmm") and shapes and len(shapes[-1]) == 2:
        return "lm_head" if 262144 in shapes[-1] or 262144 in shapes[0] else "matmul"
    if name in ("aten::bmm", "aten::_softmax", "aten::baddbmm"):
        return "attention"
    return "other"


def profile(model, ids, new):
    """Seconds per decoded token and their split, prefill left out."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    def start():
        # What generate() does before its decode loop: pad, prefill.
        token_ids = np.pad(ids, ((0, 0), (0, new)))
        return model._start_generation(token_ids, token_ids != 0, [], seed=0)

    state = start()
    model._decode(state, end=state["max_length"])  # warm up
    state = start()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        begin = time.perf_counter()
        model._decode(state, end=state["max_length"])
        wall = time.perf_counter() - begin
    steps = state["max_length"] - state["index"]
    split = {}
    for event in prof.key_averages(group_by_input_shape=True):
        key = bucket(event)
        split[key] = split.get(key, 0.0) + event.self_cpu_time_total / 1e6 / steps
    per_token = wall / steps
    split["python_dispatch"] = per_token - sum(split.values())
    return per_token, split


def main():
    import torch

    import keras_gemma

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=("float32", "int8"))
    args = parser.parse_args()
    kwargs = {"quantize": "int8"} if args.dtype == "int8" else {"dtype": args.dtype}
    model = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", **kwargs)
    model.compile(sampler="greedy")
    ids = np.array([[2, 651, 6037, 529, 7001, 563, 496, 3207]], "int32")
    from keras_gemma import backend

    per_token, split = profile(model, ids, args.new)
    print(f"{args.dtype}, threads {backend.torch_inference_threads()} "
          f"(torch {torch.get_num_threads()}), load average {os.getloadavg()[0]:.1f}: "
          f"{per_token * 1e3:.0f} ms per token (under the profiler)")
    for key in ("lm_head", "matmul", "attention", "other", "python_dispatch"):
        print(f"  {key:16s} {split.get(key, 0) * 1e3:7.1f} ms  {100 * split.get(key, 0) / per_token:5.1f}%")


if __name__ == "__main__":
    main()
