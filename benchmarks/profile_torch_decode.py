"""Where a PyTorch decode step's time goes: matmuls, attention, LM head, the rest.

Runs keras_gemma's ``generate`` on PyTorch (the real ``gemma3_270m``, batch 1,
8-token prompt, greedy) under ``torch.profiler`` and sorts every ATen op's own
time into the buckets of benchmarks/README.md's profile table:

- LM head: the (rows, hidden) x (hidden, 262,144) matmul (or its block products),
- matmuls: the other 2-D matmuls (projections, feed-forward),
- attention: the batched matmuls and softmax of attention,
- int8 fused: int8 matmuls run by keras_gemma/torch_int8.py's kernel
  (LM head included: the profiler does not tell its shapes apart),
- other ops: every other ATen op (norms, RoPE, masks, casts, cache writes),
- Python and dispatch: wall time not spent inside any ATen op.

Only the decode loop is profiled (the prompt is prefilled before).

    python benchmarks/profile_torch_decode.py --new 16 --threads 1,2 --modes eager,trace --batch 1,16

``--threads`` sets ``KERAS_GEMMA_TORCH_THREADS`` and ``--modes``
``KERAS_GEMMA_TORCH_COMPILE`` for each measurement in turn (``auto`` is
keras_gemma's default for both; for this model it traces the step).
``--lm-head plain,blocks`` runs the float32 LM head as one ``torch.matmul``
or as keras_gemma's block products (``keras_gemma/torch_matmul.py``, the
default), to compare them in one process.
With ``--rounds 2`` every setting is measured twice, interleaved. Batches above 1 are timed without
the profiler (wall time per decode step only).
"""

import argparse
import os
import time

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402


def bucket(event):
    name = event.key
    shapes = event.input_shapes or []
    if name in ("aten::mm", "aten::addmm") and shapes:
        return "lm_head" if any(262144 in shape for shape in shapes) else "matmul"
    if name == "aten::bmm" and shapes and len(shapes[0]) == 3 and shapes[0][0] * shapes[0][1] == 262144:
        return "lm_head"  # keras_gemma/torch_matmul.py's block products
    if "grouped_int8_matmul" in name or name.startswith(("Torch-Compiled Region", "## Call CompiledFxGraph")):
        return "int8_fused"  # keras_gemma/torch_int8.py's kernel, LM head included
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


def step_time(model, ids, new):
    """Wall seconds per decode step (no profiler), prefill left out."""
    token_ids = np.pad(ids, ((0, 0), (0, new)))
    for _ in range(2):  # warm up, then timed
        state = model._start_generation(token_ids, token_ids != 0, [], seed=0)
        begin = time.perf_counter()
        model._decode(state, end=state["max_length"])
        wall = time.perf_counter() - begin
    return wall / (state["max_length"] - state["index"])


def main():
    import torch

    import keras_gemma
    from keras_gemma import backend
    from keras_gemma import torch_matmul

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=("float32", "int8"))
    parser.add_argument("--threads", default="auto", help="comma-separated settings")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes")
    parser.add_argument("--modes", default="auto", help="comma-separated KERAS_GEMMA_TORCH_COMPILE settings")
    parser.add_argument("--lm-head", default="blocks", help="comma-separated: blocks, plain")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    kwargs = {"quantize": "int8"} if args.dtype == "int8" else {"dtype": args.dtype}
    model = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", **kwargs)
    model.compile(sampler="greedy")
    prompt = np.array([2, 651, 6037, 529, 7001, 563, 496, 3207], "int32")
    settings = [(batch, mode, threads, lm_head)
                for _ in range(args.rounds)
                for batch in [int(b) for b in args.batch.split(",")]
                for mode in args.modes.split(",")
                for threads in args.threads.split(",")
                for lm_head in args.lm_head.split(",")]
    block_rows = torch_matmul.MAX_ROWS
    for batch, mode, threads, lm_head in settings:
        torch_matmul.MAX_ROWS = block_rows if lm_head == "blocks" else 0
        ids = np.tile(prompt, (batch, 1))
        os.environ[backend.TORCH_THREADS_SETTING] = threads
        os.environ[backend.TORCH_COMPILE_SETTING] = mode
        model._generate_functions = {}  # a new trace per setting
        used = backend.torch_inference_threads()
        head = (f"{args.dtype}, batch {batch}, step {backend.torch_step_mode(model)}, LM head {lm_head}, "
                f"{used} thread(s) (torch {torch.get_num_threads()}), "
                f"load average {os.getloadavg()[0]:.1f}:")
        if batch > 1:
            print(f"{head} {step_time(model, ids, args.new) * 1e3:.0f} ms per step", flush=True)
            continue
        per_token, split = profile(model, ids, args.new)
        print(f"{head} {per_token * 1e3:.0f} ms per token (under the profiler)")
        for key in ("lm_head", "matmul", "int8_fused", "attention", "other", "python_dispatch"):
            share = split.get(key, 0)
            print(f"  {key:16s} {share * 1e3:7.1f} ms  {100 * share / per_token:5.1f}%", flush=True)


if __name__ == "__main__":
    main()
