"""Decode speed of keras_gemma under JAX on whatever device JAX sees.

Random weights of a preset's architecture (no checkpoint files needed), token
ids in and out, greedy, a fixed number of new tokens (no stopping), so every
run does identical work. Used for the H100 numbers in RESULTS.md:

    KERAS_BACKEND=jax python benchmarks/decode_device.py --preset gemma_2b_en \
        --dtype bfloat16 --batch-sizes 1,16 --bandwidth-gbs 3350

Prints one JSON object per measurement.
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

import keras_gemma  # noqa: E402


def timed(function, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gemma_2b_en")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prefill-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="memory bandwidth for the bound, GB/s")
    args = parser.parse_args()

    import jax

    start = time.perf_counter()
    backbone = keras_gemma.GemmaBackbone.from_preset(
        args.preset, load_weights=False, dtype=args.dtype
    )
    model = keras_gemma.GemmaCausalLM(backbone)
    if args.quantize:
        model.quantize(args.quantize)
    build_seconds = time.perf_counter() - start
    weight_bytes = sum(
        int(np.prod(v.shape)) * np.dtype(str(v.dtype)).itemsize for v in backbone.weights
    )
    device = str(jax.devices()[0].device_kind)
    rng = np.random.default_rng(0)
    vocabulary = backbone.vocabulary_size

    def prompts(batch, length):
        ids = rng.integers(3, vocabulary, size=(batch, length)).astype("int32")
        ids[:, 0] = 2
        return {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}

    base = dict(preset=args.preset, dtype=args.dtype, quantize=args.quantize,
                device=device, weight_bytes=weight_bytes, build_s=round(build_seconds, 2))

    # Prefill: one new token after a long prompt.
    inputs = prompts(1, args.prefill_length)
    first = timed(lambda: model.generate(inputs, max_length=args.prefill_length + 1,
                                         stop_token_ids=None), 1)
    prefill = timed(lambda: model.generate(inputs, max_length=args.prefill_length + 1,
                                           stop_token_ids=None), args.repeats)
    print(json.dumps({**base, "measure": "prefill", "tokens": args.prefill_length,
                      "first_call_s": round(first, 3),
                      "tokens_per_s": round(args.prefill_length / prefill, 1)}), flush=True)

    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        inputs = prompts(batch, args.prompt_length)
        short = args.prompt_length + 1
        full = args.prompt_length + args.new_tokens
        first = timed(lambda: model.generate(inputs, max_length=short, stop_token_ids=None), 1)
        model.generate(inputs, max_length=full, stop_token_ids=None)
        t_short = timed(lambda: model.generate(inputs, max_length=short, stop_token_ids=None),
                        args.repeats)
        t_full = timed(lambda: model.generate(inputs, max_length=full, stop_token_ids=None),
                       args.repeats)
        steps = args.new_tokens - 1
        per_sequence = steps / (t_full - t_short)
        record = {**base, "measure": "decode", "batch": batch,
                  "first_call_s": round(first, 3),
                  "tokens_per_s_per_sequence": round(per_sequence, 1),
                  "tokens_per_s_total": round(per_sequence * batch, 1)}
        if args.bandwidth_gbs:
            bound = args.bandwidth_gbs * 1e9 / weight_bytes
            record["bandwidth_bound_tokens_per_s"] = round(bound, 1)
            record["percent_of_bound"] = round(100 * per_sequence / bound, 1)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
