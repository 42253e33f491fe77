"""Numerical parity with implementations we did not write.

- Hugging Face transformers (Gemma, Gemma 2, Gemma 3): logits cached in
  tests/data/hf_oracle.npz by tests/data/make_hf_oracle.py, for the seeded
  random weights of tests/tiny_models.py.
- keras-hub (GemmaBackbone, Gemma3Backbone, GemmaCausalLM): run live on the
  current backend from a preset we save, so this also checks that keras-hub
  reads our presets.
"""

import numpy as np
import pytest
from conftest import VOCABULARY_PATH, to_numpy
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights

import keras_gemma
from keras_gemma.checkpoints import assign_weights

ORACLE = np.load(VOCABULARY_PATH.parent / "hf_oracle.npz")
TOLERANCE = 1e-4


def tiny_backbone(name, **overrides):
    config = TINY_CONFIGS[name]
    backbone = keras_gemma.GemmaBackbone(**{**config, **overrides})
    assign_weights(backbone, random_weights(config), "tiny_models")
    return backbone


def keras_hub_compatible_backbone(name):
    # keras-hub's GemmaBackbone scales queries by head_dim or hidden/heads
    # only, so our Gemma 2 tiny config's 24 becomes head_dim there.
    if name == "gemma2":
        return tiny_backbone(name, query_pre_attn_scalar=16)
    return tiny_backbone(name)


def our_logits(backbone):
    hidden = backbone({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK})
    return to_numpy(backbone.compute_logits(hidden))


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_logits_match_transformers(name):
    logits = our_logits(tiny_backbone(name))
    expected = ORACLE[name]
    assert logits.shape == expected.shape
    # Real positions and right-padded ones alike.
    np.testing.assert_allclose(logits, expected, atol=TOLERANCE, rtol=0)


def test_oracle_is_sensitive_to_the_window():
    """The Gemma 2/3 prompts are longer than the window, so getting the
    local/global pattern wrong would show."""
    config = dict(TINY_CONFIGS["gemma3"], sliding_window_size=None,
                  sliding_window_pattern=None)
    backbone = keras_gemma.GemmaBackbone(**config)
    assign_weights(backbone, random_weights(config), "tiny_models")
    assert np.abs(our_logits(backbone) - ORACLE["gemma3"]).max() > 1e-2


@pytest.fixture(scope="module")
def keras_hub():
    return pytest.importorskip("keras_hub")


def _keras_hub_logits(keras_hub, preset_dir, gemma3):
    cls = keras_hub.models.Gemma3Backbone if gemma3 else keras_hub.models.GemmaBackbone
    backbone = cls.from_preset(str(preset_dir))
    hidden = backbone({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK})
    return to_numpy(backbone.token_embedding(hidden, reverse=True))


@pytest.mark.parametrize("name", ["gemma_mqa", "gemma_mha", "gemma2"])
def test_logits_match_keras_hub(name, keras_hub, tmp_path):
    backbone = keras_hub_compatible_backbone(name)
    backbone.save_to_preset(tmp_path / "preset")
    expected = _keras_hub_logits(keras_hub, tmp_path / "preset", gemma3=False)
    # keras-hub's reverse embedding applies the final soft cap itself.
    # Compared at real tokens: a padded query whose whole sliding window is
    # padding has no key to attend to, and keras-hub fills such rows
    # differently (transformers agrees with us there, see above).
    ours = our_logits(backbone)
    np.testing.assert_allclose(
        ours[PADDING_MASK], expected[PADDING_MASK], atol=TOLERANCE, rtol=0
    )


def test_gemma3_logits_match_keras_hub(keras_hub, tmp_path):
    # keras-hub's Gemma3Backbone scales RoPE positions of global layers too.
    backbone = tiny_backbone("gemma3")
    backbone.save_to_preset(tmp_path / "preset")
    expected = _keras_hub_logits(keras_hub, tmp_path / "preset", gemma3=True)
    ours = our_logits(backbone)
    np.testing.assert_allclose(
        ours[PADDING_MASK], expected[PADDING_MASK], atol=TOLERANCE, rtol=0
    )


@pytest.mark.parametrize("name", ["gemma_mqa", "gemma_mha", "gemma2"])
def test_greedy_generate_matches_keras_hub(name, keras_hub, tokenizer, tmp_path):
    backbone = keras_hub_compatible_backbone(name)
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=20)
    ours = keras_gemma.GemmaCausalLM(backbone, preprocessor)
    ours.save_to_preset(tmp_path / "preset")
    # Without a preprocessor keras-hub takes our token ids as they are.
    theirs = keras_hub.models.GemmaCausalLM(
        backbone=keras_hub.models.GemmaBackbone.from_preset(str(tmp_path / "preset")),
        preprocessor=None,
    )
    theirs.compile(sampler="greedy")
    prompts = ["hello world", "The quick brown fox", "def f(x):\n    return"]
    inputs = preprocessor.generate_preprocess(prompts, sequence_length=20)
    expected = theirs.generate(
        {"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]},
        stop_token_ids=None,
    )
    got = ours.generate(inputs, max_length=20, stop_token_ids=None)
    np.testing.assert_array_equal(got["token_ids"], to_numpy(expected["token_ids"]))


def test_keras_hub_causal_lm_reads_our_preset(keras_hub, tokenizer, tmp_path):
    """The whole task (tokenizer and preprocessor JSON included) loads in
    keras-hub and gives our logits."""
    backbone = tiny_backbone("gemma_mqa")
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=12)
    keras_gemma.GemmaCausalLM(backbone, preprocessor).save_to_preset(tmp_path / "p")
    theirs = keras_hub.models.GemmaCausalLM.from_preset(str(tmp_path / "p"))
    assert theirs.preprocessor.sequence_length == 12
    text = "The quick brown fox"
    assert to_numpy(theirs.preprocessor.tokenizer(text)).tolist() == tokenizer.tokenize(text)
    expected = to_numpy(theirs({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK}))
    np.testing.assert_allclose(our_logits(backbone), expected, atol=TOLERANCE, rtol=0)
