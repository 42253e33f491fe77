"""Gemma 4 text models against implementations we did not write.

- transformers: tiny random Gemma 4 checkpoints saved by ``save_pretrained``
  (tests/data/hf_tiny_gemma4_*) with their logits and greedy continuations
  cached in tests/data/hf_gemma4_oracle.npz by
  tests/data/make_hf_gemma4_oracle.py. The three configs cover every Gemma 4
  switch: ``ple`` (per-layer embeddings, KV sharing of both layer types,
  double-wide MLP, 4 sliding : 1 full), ``moe`` (top-2-of-8 experts, K = V
  full layers with their own key/value heads; saved as the multimodal
  Gemma4ForConditionalGeneration) and ``dense`` (proportional RoPE on half
  the head, different global/sliding head sizes and RoPE bases).
- keras-hub's Gemma4Backbone, live, on the same weights (through a preset
  we write, so keras-hub reads our presets too).
"""

import numpy as np
import pytest
from conftest import TESTS_DIR, to_numpy

import keras_gemma

DATA = TESTS_DIR / "data"
ORACLE = np.load(DATA / "hf_gemma4_oracle.npz")
TOKEN_IDS = ORACLE["token_ids"].astype("int32")
PADDING_MASK = ORACLE["padding_mask"].astype(bool)
NAMES = ("ple", "moe", "dense")
TOLERANCE = 1e-4


def folder(name):
    return DATA / f"hf_tiny_gemma4_{name}"


_BACKBONES = {}


def backbone(name):
    if name not in _BACKBONES:
        _BACKBONES[name] = keras_gemma.GemmaBackbone.from_preset(str(folder(name)))
    return _BACKBONES[name]


def logits_of(model, token_ids=TOKEN_IDS, padding_mask=PADDING_MASK):
    hidden = model({"token_ids": token_ids, "padding_mask": padding_mask})
    return to_numpy(model.compute_logits(hidden))


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name):
    logits = logits_of(backbone(name))
    expected = ORACLE[f"{name}_logits"]
    assert logits.shape == expected.shape
    # Every real position; the prompts (12 tokens) are 3x the window (4).
    np.testing.assert_allclose(
        logits[PADDING_MASK], expected[PADDING_MASK], atol=TOLERANCE, rtol=0
    )


def test_the_configs_exercise_their_switches():
    ple, moe, dense = (backbone(n) for n in NAMES)
    assert ple.per_layer_input_dim and ple.num_kv_shared_layers == 4
    shared = [s for s in ple.layer_specs if s.kv_source is not None]
    assert {s.sliding for s in shared} == {True, False}
    assert {s.intermediate_dim for s in shared} == {2 * ple.intermediate_dim}
    assert len(ple.init_cache(1, 8)) == ple.num_layers - 4  # no cache for shared layers
    assert moe.num_experts == 8 and moe.num_experts_per_token == 2
    full = [s for s in moe.layer_specs if not s.sliding]
    assert all(s.value_from_key and s.num_key_value_heads == 1 for s in full)
    assert dense.rope_partial_rotary_factor == 0.5
    assert {s.head_dim for s in dense.layer_specs} == {16, 24}


def test_oracle_is_sensitive_to_the_window():
    config = {**backbone("dense").get_config(), "sliding_window_size": None}
    config.pop("name")
    other = keras_gemma.GemmaBackbone.from_config(config)
    other.set_weights(backbone("dense").get_weights())
    assert np.abs(logits_of(other) - ORACLE["dense_logits"])[PADDING_MASK].max() > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_cached_forward_equals_uncached(name):
    model = backbone(name)
    tokens = TOKEN_IDS[:1]
    full = logits_of(model, tokens, np.ones_like(tokens, bool))
    cache = model.init_cache(1, tokens.shape[1])
    _, cache = model.compute_hidden_states(tokens[:, :5], cache=cache, cache_update_index=0)
    steps = []
    for index in range(5, tokens.shape[1]):
        hidden, cache = model.compute_hidden_states(
            tokens[:, index : index + 1], cache=cache, cache_update_index=index
        )
        steps.append(to_numpy(model.compute_logits(hidden))[:, 0])
    np.testing.assert_allclose(np.stack(steps, 1), full[:, 5:], atol=TOLERANCE, rtol=0)


@pytest.fixture(scope="module")
def causal_lms(tokenizer):
    lms = {}
    for name in NAMES:
        preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=24)
        lms[name] = keras_gemma.GemmaCausalLM(backbone(name), preprocessor)
    return lms


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generate_matches_transformers(name, causal_lms):
    """Batch of two prompts of different lengths against transformers'
    ``generate`` on each prompt alone."""
    lm = causal_lms[name]
    expected = ORACLE[f"{name}_greedy"]
    new = expected.shape[1]
    lengths = PADDING_MASK.sum(axis=1)
    out = lm.generate(
        {"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK},
        max_length=int(lengths.max()) + new, stop_token_ids=None,
    )
    for row, length in enumerate(lengths):
        np.testing.assert_array_equal(out["token_ids"][row, length : length + new], expected[row])


def test_score_and_stream(causal_lms):
    lm = causal_lms["ple"]
    logits = to_numpy(lm.score(TOKEN_IDS, PADDING_MASK))
    np.testing.assert_allclose(
        logits[PADDING_MASK], ORACLE["ple_logits"][PADDING_MASK], atol=TOLERANCE, rtol=0
    )
    text = "".join(lm.stream("hello world", max_length=12, stop_token_ids=None))
    assert text == lm.generate("hello world", max_length=12, stop_token_ids=None, strip_prompt=True)


@pytest.fixture(scope="module")
def keras_hub():
    return pytest.importorskip("keras_hub")


@pytest.mark.parametrize("name", NAMES)
def test_keras_hub_gemma4_backbone_reads_our_preset(name, keras_hub, tmp_path):
    """The same weights through keras-hub's Gemma4Backbone give our logits
    (so keras-hub also reads what save_to_preset writes)."""
    ours = backbone(name)
    ours.save_to_preset(tmp_path / "preset")
    theirs = keras_hub.models.Gemma4Backbone.from_preset(str(tmp_path / "preset"))
    positions = np.broadcast_to(np.arange(TOKEN_IDS.shape[1]), TOKEN_IDS.shape)
    hidden = theirs({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK.astype("int32"),
                     "position_ids": positions.astype("int32")})
    expected = to_numpy(theirs.token_embedding(hidden, reverse=True))
    np.testing.assert_allclose(
        logits_of(ours)[PADDING_MASK], expected[PADDING_MASK], atol=TOLERANCE, rtol=0
    )
    # And our reader takes keras-hub's files back.
    again = keras_gemma.GemmaBackbone.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(logits_of(again), logits_of(ours), atol=1e-6, rtol=0)
