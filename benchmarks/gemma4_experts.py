"""Decode cost of Gemma 4's expert mixture: it grows with top-k, not with
the number of experts.

Random weights, a reduced-but-wide 26B-A4B-like shape (hidden 1024, expert
width 352, 2 layers, no dense-MLP change), decode tokens/s with the KV cache
at batch 1 and 16, for (experts, top-k) in (16, 8), (128, 8), (128, 2).
keras-hub's Gemma4Backbone computes every expert for every token, so its
cost grows with the number of experts; ours gathers the chosen experts.

    KERAS_BACKEND=jax python benchmarks/gemma4_experts.py [--steps 32]

Prints one JSON line per row.
"""

import argparse
import json
import time

import numpy as np

SHAPE = dict(
    vocabulary_size=4096, num_layers=2, num_query_heads=8, num_key_value_heads=2,
    hidden_dim=1024, intermediate_dim=704, head_dim=128, global_head_dim=256,
    num_global_key_value_heads=1, attention_k_eq_v=True, query_pre_attn_scalar=1.0,
    use_post_attention_norm=True, use_post_feedforward_norm=True,
    use_query_key_norm=True, norm_scale_plus_one=False, use_value_norm=True,
    use_layer_scalar=True, sliding_window_size=512,
    layer_types=["sliding_attention", "full_attention"],
    rope_max_wavelength=1_000_000.0, local_rope_max_wavelength=10_000.0,
    rope_partial_rotary_factor=0.25, final_logit_soft_cap=30.0,
    expert_intermediate_dim=352,
)


def decode_tokens_per_second(lm, batch, steps, prompt=16):
    """Tokens/s of the compiled decode loop: generating ``steps`` more
    tokens, minus the same call generating one (prefill and overheads)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, SHAPE["vocabulary_size"], (batch, prompt)).astype("int32")
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}

    def timed(new):
        lm.generate(inputs, max_length=prompt + new, stop_token_ids=None)  # compile
        start = time.perf_counter()
        lm.generate(inputs, max_length=prompt + new, stop_token_ids=None)
        return time.perf_counter() - start

    return batch * (steps - 1) / max(timed(steps) - timed(1), 1e-9)


def main():
    import keras_gemma

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=32)
    args = parser.parse_args()
    for experts, top_k in ((16, 8), (128, 8), (128, 2)):
        backbone = keras_gemma.GemmaBackbone(
            **SHAPE, num_experts=experts, num_experts_per_token=top_k, dtype="float32"
        )
        lm = keras_gemma.GemmaCausalLM(backbone, preprocessor=None)
        for batch in (1, 16):
            rate = decode_tokens_per_second(lm, batch, args.steps)
            print(json.dumps({"experts": experts, "top_k": top_k, "batch": batch,
                              "decode_tokens_per_s": round(rate, 1)}), flush=True)


if __name__ == "__main__":
    main()
