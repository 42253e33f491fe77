"""Tiny model configs and seeded random weights shared by the parity tests.

The weights depend only on numpy's seeded generator, so the oracle script
(tests/data/make_hf_oracle.py) and the tests rebuild identical models
without storing weights.
"""

import numpy as np

VOCABULARY_SIZE = 640  # tests/data/test_vocabulary.spm

TINY_CONFIGS = {
    # Multi-query, head_dim (16) != hidden_dim / heads (8).
    "gemma_mqa": dict(
        vocabulary_size=VOCABULARY_SIZE, num_layers=2, num_query_heads=4,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64, head_dim=16,
    ),
    # Multi-head, head_dim (12) != hidden_dim / heads (8).
    "gemma_mha": dict(
        vocabulary_size=VOCABULARY_SIZE, num_layers=2, num_query_heads=3,
        num_key_value_heads=3, hidden_dim=24, intermediate_dim=48, head_dim=12,
    ),
    # Gemma 2: grouped-query, soft caps small enough to bite, alternating
    # sliding window shorter than the test prompts.
    "gemma2": dict(
        vocabulary_size=VOCABULARY_SIZE, num_layers=3, num_query_heads=4,
        num_key_value_heads=2, hidden_dim=32, intermediate_dim=64, head_dim=16,
        query_pre_attn_scalar=24, attention_logit_soft_cap=2.0,
        final_logit_soft_cap=10.0, use_post_attention_norm=True,
        use_post_feedforward_norm=True, sliding_window_size=4,
        sliding_window_pattern=2, local_rope_max_wavelength=10_000.0,
    ),
    # Gemma 3: 5 local layers then 1 global (and one more local), query/key
    # norms, separate RoPE bases, linear RoPE scaling on global layers.
    "gemma3": dict(
        vocabulary_size=VOCABULARY_SIZE, num_layers=7, num_query_heads=4,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64, head_dim=16,
        query_pre_attn_scalar=16, use_post_attention_norm=True,
        use_post_feedforward_norm=True, use_query_key_norm=True,
        sliding_window_size=4, sliding_window_pattern=6,
        rope_max_wavelength=1_000_000.0, rope_scaling_factor=2.0,
        local_rope_max_wavelength=10_000.0,
    ),
}

# Token ids for a right-padded batch of 2, longer than the sliding window.
TOKEN_IDS = np.array(
    [
        [2, 17, 230, 45, 88, 301, 9, 77, 412, 53, 600, 31],
        [2, 99, 5, 160, 271, 42, 0, 0, 0, 0, 0, 0],
    ],
    dtype="int32",
)
PADDING_MASK = TOKEN_IDS != 0


def weight_shapes(config):
    """Our variable path -> shape, written out from the architecture."""
    hidden, head_dim = config["hidden_dim"], config["head_dim"]
    ff = config["intermediate_dim"]
    shapes = {"token_embedding/embeddings": (config["vocabulary_size"], hidden),
              "final_norm/scale": (hidden,)}
    for i in range(config["num_layers"]):
        p = f"decoder_block_{i}/"
        shapes.update({
            p + "pre_attention_norm/scale": (hidden,),
            p + "attention/query/kernel": (hidden, config["num_query_heads"] * head_dim),
            p + "attention/key/kernel": (hidden, config["num_key_value_heads"] * head_dim),
            p + "attention/value/kernel": (hidden, config["num_key_value_heads"] * head_dim),
            p + "attention/output/kernel": (config["num_query_heads"] * head_dim, hidden),
            p + "pre_feedforward_norm/scale": (hidden,),
            p + "feedforward_gate/kernel": (hidden, ff),
            p + "feedforward_up/kernel": (hidden, ff),
            p + "feedforward_down/kernel": (ff, hidden),
        })
        if config.get("use_query_key_norm"):
            shapes[p + "attention/query_norm/scale"] = (head_dim,)
            shapes[p + "attention/key_norm/scale"] = (head_dim,)
        if config.get("use_post_attention_norm"):
            shapes[p + "post_attention_norm/scale"] = (hidden,)
        if config.get("use_post_feedforward_norm"):
            shapes[p + "post_feedforward_norm/scale"] = (hidden,)
    return shapes


def random_weights(config, seed=0, embedding_scale=1.0):
    """Seeded float32 weights in our layout (Dense kernels are (in, out)).

    The default large embeddings make logits spread widely, which the parity
    tests want; training tests use a small ``embedding_scale`` so the loss
    starts near log(vocabulary_size), as for a real untrained model.
    """
    weights = {}
    for index, (path, shape) in enumerate(sorted(weight_shapes(config).items())):
        rng = np.random.default_rng([seed, index])
        if path.endswith("scale"):
            scale = 0.3
        elif path.startswith("token_embedding"):
            scale = embedding_scale
        else:
            scale = 1.0 / np.sqrt(shape[0])
        weights[path] = (rng.standard_normal(shape) * scale).astype("float32")
    return weights
