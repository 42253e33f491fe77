"""Where a compiled decode step spends its time (JAX, TensorFlow).

Times ``generate``'s real decode loop per token, and beside it the pieces
of one step compiled alone with ``backend.compile_inference`` (so each is
one XLA program, like the loop): every dense projection of the decoder
blocks (query, key, value, output, gate, up, down), attention over the
cache (query-key product, mask, softmax, probabilities x values and the
cache write, for every layer, at the cache length ``generate`` uses), the LM
head (hidden states x the 262,144-row embedding, soft cap) and sampling
(greedy: argmax over the vocabulary). "other" is the loop's time per token
minus the pieces: norms, RoPE, residuals, the embedding lookup, the loop's
own bookkeeping, and what fusing inside one program saves or costs.

    KERAS_BACKEND=jax python benchmarks/profile_decode.py --batches 1,16
    KERAS_BACKEND=tensorflow python benchmarks/profile_decode.py --batches 1,16

``--preset`` defaults to the benchmark's keras-hub copy of gemma3_270m
(``~/.cache/keras_gemma_bench/gemma3_270m/keras_hub``, made by
``generate.py``), else ``gemma3_270m``.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BENCH_PRESET = Path.home() / ".cache/keras_gemma_bench/gemma3_270m/keras_hub"


def best_ms(function, reps):
    function()  # compile / warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def sync(value):
    from keras import ops

    leaves = value if isinstance(value, (tuple, list)) else [value]
    for leaf in leaves:
        ops.convert_to_numpy(leaf if not isinstance(leaf, (tuple, list)) else leaf[0])
    return value


def profile(model, batch, prompt_length, new_tokens, reps):
    import keras
    from keras import ops

    from keras_gemma import backend
    from keras_gemma import xla_cpu

    backbone = model.backbone
    rng = np.random.default_rng(0)
    vocabulary = backbone.vocabulary_size
    prompts = rng.integers(3, vocabulary, (batch, prompt_length)).astype("int32")
    max_length = prompt_length + new_tokens
    token_ids = np.zeros((batch, max_length), "int32")
    token_ids[:, :prompt_length] = prompts
    padding_mask = np.zeros((batch, max_length), bool)
    padding_mask[:, :prompt_length] = True

    def decode_loop():
        state = model._start_generation(token_ids.copy(), padding_mask.copy(), [], None)
        sync(state["cache"][0])
        start = time.perf_counter()
        model._decode(state, end=max_length)
        return time.perf_counter() - start

    decode_loop()
    step_ms = 1e3 * min(decode_loop() for _ in range(reps)) / new_tokens

    state = model._start_generation(token_ids.copy(), padding_mask.copy(), [], None)
    cache = state["cache"]
    cache_length = int(ops.shape(cache[0][0])[1])
    blocks = backbone.decoder_blocks
    hidden = ops.convert_to_tensor(rng.standard_normal((batch, 1, backbone.hidden_dim)), "float32")

    def matmuls(x):
        outputs = []
        for block in blocks:
            attention = block.attention
            h = block.pre_attention_norm(x)
            q = attention.query(h)
            k = attention.key(h)
            v = attention.value(h)
            o = attention.output_projection(q)
            gate = block.feedforward_gate(h)
            up = block.feedforward_up(h)
            down = block.feedforward_down(gate * up)
            outputs.append(ops.sum(o) + ops.sum(k) + ops.sum(v) + ops.sum(down))
        return ops.stack(outputs)

    mask = ops.convert_to_tensor(
        np.arange(cache_length)[None, None, :] < prompt_length + new_tokens // 2
    )
    mask = ops.broadcast_to(mask, (batch, 1, cache_length))

    def attention_core(cache, index):
        outputs, new_cache = [], []
        for block, (key_cache, value_cache) in zip(blocks, cache):
            attention = block.attention
            query = ops.ones((batch, 1, attention.num_query_heads, attention.head_dim))
            new = ops.ones((batch, 1, attention.num_key_value_heads, attention.head_dim))
            # As GemmaAttention.call does for one decoded token.
            output = attention._attend_one_step(
                query, (key_cache, value_cache), (new, new), mask, index, False
            )
            start = [0, index, 0, 0]
            new_cache.append((
                ops.slice_update(key_cache, start, xla_cpu.after(output, new)),
                ops.slice_update(value_cache, start, xla_cpu.after(output, new)),
            ))
            outputs.append(output)
        return ops.stack(outputs), new_cache

    def lm_head(x):
        return backbone.compute_logits(x)

    logits = backbone.compute_logits(hidden)[:, 0, :]
    uniforms = ops.ones((batch,), "float32")

    def sample(logits, uniforms):
        return model.sampler(logits, uniforms)

    compiled = {
        "matmuls": backend.compile_inference(model, matmuls),
        "attention": backend.compile_inference(model, attention_core, donate_argnums=(0,)),
        "lm_head": backend.compile_inference(model, lm_head),
        "sample": backend.compile_inference(model, sample),
    }
    cache_box = [cache]
    index = ops.convert_to_tensor(prompt_length, "int32")

    def run_attention():
        out, cache_box[0] = compiled["attention"](cache_box[0], index)
        sync(out)

    pieces = {
        "matmuls": best_ms(lambda: sync(compiled["matmuls"](hidden)), reps),
        "attention": best_ms(run_attention, reps),
        "lm_head": best_ms(lambda: sync(compiled["lm_head"](hidden)), reps),
        "sample": best_ms(lambda: sync(compiled["sample"](logits, uniforms)), reps),
    }
    pieces["other"] = step_ms - sum(pieces.values())
    return step_ms, cache_length, pieces


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--prompt", type=int, default=8)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import keras_gemma

    preset = args.preset or (str(BENCH_PRESET) if BENCH_PRESET.exists() else "gemma3_270m")
    model = keras_gemma.GemmaCausalLM.from_preset(preset, dtype="float32")
    model.compile(sampler="greedy")
    backend_name = os.environ.get("KERAS_BACKEND", "jax")
    print(f"| backend | batch | load | ms per step | matmuls | attention | LM head | sampling | other |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in [int(b) for b in args.batches.split(",")]:
        step, cache_length, pieces = profile(model, batch, args.prompt, args.new, args.reps)
        load = os.getloadavg()[0]
        cells = " | ".join(
            f"{pieces[k]:.1f} ({100 * pieces[k] / step:.0f}%)"
            for k in ("matmuls", "attention", "lm_head", "sample", "other")
        )
        print(f"| {backend_name} | {batch} | {load:.1f} | {step:.1f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
