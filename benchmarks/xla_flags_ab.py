"""Decode speed of keras_gemma under two XLA flag settings, interleaved.

XLA reads ``XLA_FLAGS`` once per process, so two settings cannot share one
process. This script starts one worker process per setting (each loads the
real model and compiles its decode loops first), then asks them in turn,
A, B, A, B, ..., for one timed ``generate`` each, so that both see the
same machine load (the 2-core host is shared). It prints the best of the
rounds per setting, batch size and the ratio batch N / batch 1.

    KERAS_BACKEND=tensorflow python benchmarks/xla_flags_ab.py \\
        --flags="" --flags="--xla_cpu_experimental_ynn_fusion_type=dot,reduce" \\
        --dtype float32 --batches 1,16 --new 32 --rounds 4

A setting of ``default`` keeps the process's own ``XLA_FLAGS``; any other
setting is exported as ``XLA_FLAGS``. (keras_gemma adds no XLA flags: the
YNNPACK dot flag above was measured no faster for TensorFlow on a quiet
machine, benchmarks/README.md.)
"""

import argparse
import json
import os
import subprocess
import sys
import time


def worker(dtype, batches, new):
    import numpy as np

    import keras_gemma

    kwargs = {"quantize": "int8"} if dtype == "int8" else {"dtype": dtype}
    model = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", **kwargs)
    model.compile(sampler="greedy")
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 20000, (max(batches), 8)).astype("int32")
    ids[:, 0] = 2

    def generate(batch):
        inputs = {"token_ids": ids[:batch], "padding_mask": np.ones((batch, 8), bool)}
        start = time.perf_counter()
        model.generate(inputs, max_length=8 + new, stop_token_ids=None)
        return time.perf_counter() - start

    for batch in batches:
        generate(batch)  # compiles
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        batch = int(line)
        print(json.dumps({"batch": batch, "seconds": generate(batch)}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--flags", action="append", required=True,
                        help="an XLA_FLAGS value, or 'default'; give it twice or more")
    parser.add_argument("--dtype", default="float32", choices=["float32", "int8"])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker:
        return worker(args.dtype, batches, args.new)
    workers = []
    for flags in args.flags:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        if flags != "default":
            env["XLA_FLAGS"] = flags
        command = [sys.executable, __file__, "--worker", f"--flags={flags}", "--dtype", args.dtype,
                   "--batches", args.batches, "--new", str(args.new)]
        process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)
        workers.append(process)
        # One at a time: loading and compiling are what the others would disturb.
        while not json.loads(process.stdout.readline()).get("ready"):
            pass
    best = {}
    loads = []
    for _ in range(args.rounds):
        for batch in batches:
            for flags, process in zip(args.flags, workers):
                process.stdin.write(f"{batch}\n")
                process.stdin.flush()
                seconds = json.loads(process.stdout.readline())["seconds"]
                key = (flags, batch)
                best[key] = min(best.get(key, float("inf")), seconds)
        loads.append(os.getloadavg()[0])
    for process in workers:
        process.stdin.close()
        process.wait()
    backend = os.environ.get("KERAS_BACKEND", "?")
    print(f"backend {backend}, dtype {args.dtype}, {args.new} new tokens, best of {args.rounds} "
          f"interleaved rounds, load {min(loads):.1f}-{max(loads):.1f}")
    for flags in args.flags:
        speeds = {b: b * args.new / best[(flags, b)] for b in batches}
        text = ", ".join(f"b{b} {speeds[b]:.2f} tok/s" for b in batches)
        ratio = speeds[batches[-1]] / speeds[batches[0]]
        print(f"  [{flags}] {text}; b{batches[-1]}/b{batches[0]} {ratio:.2f}x")


if __name__ == "__main__":
    main()
