"""Per-token split of keras_gemma's compiled decode loop on JAX or TensorFlow.

Both backends compile ``generate``'s decode loop with XLA. This script
dumps the optimized HLO (``--xla_dump_to``), records one ``generate`` call
with the profiler (every XLA:CPU thunk appears as an event named after its
HLO instruction), maps each instruction to the Keras layer that emitted it
(the HLO metadata's ``op_name`` carries the layer scopes) and sums the
thunks' own time per token into: int8/float projections (every
``QuantizableDense``), LM head (the tied embedding's reverse call),
attention (the rest of the attention layers: scores, softmax, cache),
other ops, and loop/dispatch overhead (wall time outside any thunk).

    KERAS_BACKEND=jax python benchmarks/profile_xla_decode.py --dtype int8 --new 64
    KERAS_BACKEND=tensorflow python benchmarks/profile_xla_decode.py --dtype float32

Two threads run thunks concurrently, so the per-category times are thunk
times summed over threads divided by the number of tokens; "overhead" is
what is left of the wall time per token after the thunk time divided by the
average parallelism.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="gemma3_270m")
    parser.add_argument("--dtype", default="int8", choices=["float32", "int8"])
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=8)
    return parser.parse_args()


# Layer scopes: JAX writes decoder_block_3/attention/query/..., TensorFlow
# decoder_block_3_1/attention_1/query_1/...
_S = r"(?:_\d+)?/"
CATEGORIES = (  # first match wins, on the op_name of the instruction
    ("LM head", re.compile(r"token_embedding")),
    ("projections", re.compile(
        rf"/(attention{_S}(query|key|value|output){_S}|feedforward_\w+?{_S}|per_layer\w*?{_S}|experts{_S})"
    )),
    ("attention", re.compile(r"attention")),
)


def categorize(op_name):
    for label, pattern in CATEGORIES:
        if pattern.search(op_name):
            return label
    return "other ops"


def module_op_names(path):
    """HLO instruction name -> the op_name that best says what it computes.

    A fusion's own metadata names one of its instructions (often an
    elementwise one); a fusion holding a dot is named after the dot.
    """
    computations = collections.defaultdict(list)
    lines = []
    current = None
    for line in open(path):
        header = re.match(r"^(?:ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$", line)
        if header:
            current = header.group(1)
            continue
        found = re.match(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=.*?op_name=\"([^\"]*)\"", line)
        if found:
            computations[current].append(found.group(2))
            calls = re.search(r"calls=%([\w.\-]+)", line)
            lines.append((found.group(1), found.group(2), calls.group(1) if calls else None))
    names = {}
    for name, op_name, called in lines:
        inner = computations.get(called, []) if called else []
        dots = [o for o in inner if re.search(r"dot_general$|MatMul$|[Ee]insum$", o)]
        names[name] = dots[0] if dots else op_name
    return names


def trace_events(trace_dir):
    """The profiler's thunk events, grouped by XLA run (one run per executable call).

    JAX writes a Chrome trace (``*.trace.json.gz``); TensorFlow only the
    profiler's XSpace protobuf (``*.xplane.pb``), read here with the
    protobuf classes TensorFlow ships.
    """
    runs = collections.defaultdict(list)
    for path in glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True):
        for event in json.load(gzip.open(path))["traceEvents"]:
            if event.get("ph") == "X" and "hlo_op" in event.get("args", {}):
                args = event["args"]
                runs[(args.get("hlo_module"), args.get("run_id"))].append(event)
    for path in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True):
        from tensorflow.tsl.profiler.protobuf import xplane_pb2

        space = xplane_pb2.XSpace()
        with open(path, "rb") as file:
            space.ParseFromString(file.read())
        for plane in space.planes:
            event_names = {k: v.name for k, v in plane.event_metadata.items()}
            stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    stats = {stat_names.get(s.metadata_id): s for s in event.stats}
                    if "hlo_op" not in stats:
                        continue
                    start = (line.timestamp_ns * 1000 + event.offset_ps) / 1e6  # microseconds
                    module = stats["hlo_module"]  # a string, or a reference to one
                    module = module.str_value or stat_names.get(module.ref_value, "")
                    run = (module, stats["run_id"].int64_value or stats["run_id"].uint64_value)
                    runs[run].append(
                        {"name": event_names.get(event.metadata_id), "ts": start,
                         "dur": event.duration_ps / 1e6}
                    )
    if not runs:
        sys.exit(f"no trace written under {trace_dir}")
    return runs


def main():
    args = parse_args()
    dump_dir = tempfile.mkdtemp(prefix="xla_dump_")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump_dir} --xla_dump_hlo_as_text"
    )
    import keras
    import numpy as np

    import keras_gemma

    backend = keras.config.backend()
    kwargs = {"quantize": "int8"} if args.dtype == "int8" else {"dtype": args.dtype}
    model = keras_gemma.GemmaCausalLM.from_preset(args.preset, **kwargs)
    model.compile(sampler="greedy")
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 20000, (args.batch, args.prompt)).astype("int32")
    ids[:, 0] = 2
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}

    def run():
        start = time.perf_counter()
        model.generate(inputs, max_length=args.prompt + args.new, stop_token_ids=None)
        return time.perf_counter() - start

    run()  # compiles
    plain = run()
    trace_dir = tempfile.mkdtemp(prefix="xla_trace_")
    if backend == "jax":
        import jax

        jax.profiler.start_trace(trace_dir)
        traced = run()
        jax.profiler.stop_trace()
    else:
        import tensorflow as tf

        tf.profiler.experimental.start(trace_dir)
        traced = run()
        tf.profiler.experimental.stop()
    # The decode loop: TensorFlow names its module after the function
    # (decode_loop); JAX names every module jit_stateless, and the loop is
    # the run with the most thunk events (one per op per step).
    runs = trace_events(trace_dir)
    (module, _), run_events = max(
        runs.items(), key=lambda item: ("decode_loop" in (item[0][0] or ""), len(item[1]))
    )
    names_seen = {event["name"] for event in run_events}
    paths = glob.glob(os.path.join(dump_dir, f"*{module or ''}*after_optimizations.txt"))
    modules = [module_op_names(path) for path in paths]
    op_names = max(modules, key=lambda names: len(names_seen & names.keys()))
    totals = collections.Counter()
    top = collections.Counter()
    for event in run_events:
        op_name = op_names.get(event["name"], "?")
        label = categorize(op_name)
        totals[label] += event["dur"] / 1e3
        top[(event["name"], label, op_name[-100:])] += event["dur"] / 1e3
    tokens = args.new
    span = (max(e["ts"] + e["dur"] for e in run_events) - min(e["ts"] for e in run_events)) / 1e3
    if os.environ.get("PROFILE_TOP"):
        only = os.environ.get("PROFILE_CATEGORY")  # e.g. "other ops"
        listed = [item for item in top.most_common() if only in (None, item[0][1])]
        for (name, label, op_name), ms in listed[: int(os.environ["PROFILE_TOP"])]:
            print(f"{ms / tokens:7.3f} {label:12s} {name:28s} {op_name}")
    thunks = sum(totals.values()) / tokens
    print(f"backend {backend}, dtype {args.dtype}, batch {args.batch}, {args.new} new tokens, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"generate wall per new token: {plain * 1e3 / tokens:.2f} ms untraced, "
          f"{traced * 1e3 / tokens:.2f} ms traced; decode loop: {span / tokens:.2f} ms per step")
    for label in ("projections", "LM head", "attention", "other ops"):
        print(f"  {label:12s} {totals[label] / tokens:7.2f} ms/step (thunk time, both threads summed)")
    print(f"  all thunks   {thunks:7.2f} ms/step; loop span minus thunks: "
          f"{span / tokens - thunks:.2f} (one thread busy) to {span / tokens - thunks / 2:.2f} (two)")


if __name__ == "__main__":
    main()
