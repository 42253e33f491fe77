"""int8 decode at batch 1 and 16, bfloat16 block products on and off, beside float32.

One process (JAX), real gemma3_270m: a float32 model and int8 models whose
decode loops are traced with ``backend.fast_bfloat16_dot`` forced on or off
(``quantization.grouped_matmul``'s batch > 1 path), timed interleaved,
best of ``--rounds``; then the greedy agreement of each int8 variant with
float32 on the batch's rows (leading equal tokens).

    KERAS_BACKEND=jax python benchmarks/int8_batch_ab.py --new 32 --rounds 3

Variants: ``f32``, ``int8`` (float32 dequantization), ``int8-bf16``
(bfloat16 blocks), ``int8-bf16-MiB`` (blocks of MiB mebibytes).
"""

import argparse
import os
import time

import numpy as np

import keras_gemma
from keras_gemma import backend, quantization


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="f32,int8,int8-bf16")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = args.variants.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 20000, (max(batches), 8)).astype("int32")
    ids[:, 0] = 2
    default_block = quantization.BFLOAT16_BLOCK_BYTES
    models = {}
    for variant in variants:
        kwargs = {"dtype": "float32"} if variant == "f32" else {"quantize": "int8"}
        models[variant] = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", **kwargs)
        models[variant].compile(sampler="greedy")

    def generate(variant, batch):
        parts = variant.split("-")
        backend.fast_bfloat16_dot = lambda: "bf16" in parts  # read when a loop is traced
        quantization.BFLOAT16_BLOCK_BYTES = int(parts[2]) * 2**20 if len(parts) > 2 else default_block
        inputs = {"token_ids": ids[:batch], "padding_mask": np.ones((batch, 8), bool)}
        start = time.perf_counter()
        out = models[variant].generate(inputs, max_length=8 + args.new, stop_token_ids=None)
        seconds = time.perf_counter() - start
        return seconds, np.asarray(out["token_ids"] if isinstance(out, dict) else out)[:, 8:]

    tokens = {}
    for batch in batches:
        for variant in variants:
            tokens[variant, batch] = generate(variant, batch)[1]  # compiles
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(args.rounds):
            for variant in variants:
                best[variant] = min(best[variant], generate(variant, batch)[0])
        speeds = ", ".join(f"{v} {batch * args.new / best[v]:.2f}" for v in variants)
        print(f"batch {batch}, load {os.getloadavg()[0]:.1f}: tokens/s {speeds}", flush=True)
    if "f32" in variants:
        batch = max(batches)
        for variant in variants:
            if variant != "f32":
                leading = []
                for a, b in zip(tokens["f32", batch], tokens[variant, batch]):
                    differ = np.nonzero(a != b)[0]
                    leading.append(int(differ[0]) if len(differ) else len(a))
                print(f"{variant}: leading tokens equal to float32, batch {batch} rows: {leading}")


if __name__ == "__main__":
    main()
