"""GemmaCausalLM: generate, stopping, sampling in the decode loop, score,
fit, configs and mixed precision, on tiny models.

Expected values come from somewhere other than the code under test: greedy
generation (cached, compiled loop) is checked against the argmax of one
uncached forward pass over the generated sequence; sampled tokens against a
numpy inverse-CDF over that forward pass; losses against numpy
cross-entropy; texts against models whose weights force a known token.

Generation compiles once per (model, sampler, batch, max_length), so the
tests share a few models and shapes (see the fixtures).
"""

import json
import pathlib

import keras
import numpy as np
import pytest
from conftest import to_numpy
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights

import keras_gemma
from keras_gemma import causal_lm, samplers
from keras_gemma.checkpoints import assign_weights

SEQUENCE_LENGTH = 16
PROMPTS = ["Hi", "hello world"]  # 3 and 7 tokens with <bos>: a ragged batch
PACKAGE_DIR = pathlib.Path(keras_gemma.__file__).resolve().parent
PAD, EOS, BOS, END_OF_TURN = 0, 1, 2, 5
X_ID = 544  # the piece "x"
GAIN = 100.0  # see tiny_backbone

# A right-padded (2, 16) batch. Forward passes here mostly use this one
# shape, because eager JAX compiles every op once per shape.
IDS = np.pad(TOKEN_IDS, ((0, 0), (0, 4)))
IDS[0, 12:] = [7, 250, 99, 512]
MASK = IDS != PAD


def tiny_backbone(name="gemma_mqa", seed=0, gain=1.0, **overrides):
    """A tiny backbone with seeded random weights.

    With tied embeddings and these random weights the final hidden state is
    close to the last token's embedding, so greedy decoding just repeats the
    last token, which would make generation checks toothless. ``gain``
    amplifies each residual branch (post-norm scales where the config has
    them, else the output projections), so that the generated tokens depend
    on the whole context.
    """
    config = {**TINY_CONFIGS[name], **overrides}
    backbone = keras_gemma.GemmaBackbone(**config)
    weights = random_weights(TINY_CONFIGS[name], seed)
    post_norms = config.get("use_post_attention_norm", False)
    for path in weights:
        if post_norms and ("/post_attention_norm/" in path or "/post_feedforward_norm/" in path):
            weights[path] = (1 + weights[path]) * gain - 1
        elif not post_norms and path.endswith(
            ("/attention/output/kernel", "/feedforward_down/kernel")
        ):
            weights[path] = weights[path] * gain
    assign_weights(backbone, weights, "tiny_models")
    return backbone


def full_forward_logits(model, token_ids):
    token_ids = np.asarray(token_ids, "int32")
    logits = model({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids, bool)})
    return to_numpy(logits).astype("float64")


def assert_greedy_continuation(model, token_ids, prompt_lengths):
    """Every generated token is the argmax of an uncached forward pass over
    the sequence so far (up to float noise between the two paths)."""
    logits = full_forward_logits(model, token_ids)
    for row, start in enumerate(prompt_lengths):
        for position in range(start, token_ids.shape[1]):
            step = logits[row, position - 1]
            chosen = step[token_ids[row, position]]
            assert chosen >= step.max() - 1e-4, (
                f"row {row}, position {position}: generated id "
                f"{token_ids[row, position]} (logit {chosen:.5f}) but the "
                f"full forward pass prefers {step.argmax()} ({step.max():.5f})"
            )


def assert_raised_by_us(info):
    """The error comes from keras_gemma itself, not from a backend trace."""
    path = pathlib.Path(str(info.traceback[-1].path)).resolve()
    assert PACKAGE_DIR in path.parents, f"raised in {path}"


def decode(tokenizer, ids):
    """Text of token ids, special tokens (pad, bos, eos) dropped."""
    return tokenizer.detokenize([int(i) for i in ids if int(i) not in (PAD, BOS, EOS)])


# -- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def preprocessor(tokenizer):
    return keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH)


@pytest.fixture(scope="module")
def lm(preprocessor):
    """Greedy tiny model; generates with shapes (2, 16) and (1, 16) only."""
    return keras_gemma.GemmaCausalLM(tiny_backbone(gain=GAIN), preprocessor)


@pytest.fixture(scope="module")
def prompt_batch(preprocessor):
    inputs = preprocessor.generate_preprocess(PROMPTS, SEQUENCE_LENGTH)
    lengths = inputs["padding_mask"].sum(axis=1)
    assert lengths.tolist() == [3, 7]
    return inputs, lengths


@pytest.fixture(scope="module")
def greedy_batch(lm, prompt_batch):
    """Greedy continuation of PROMPTS to 16 tokens, without stop tokens."""
    inputs, lengths = prompt_batch
    out = lm.generate(dict(inputs), stop_token_ids=None)
    return out["token_ids"], lengths


@pytest.fixture(scope="module")
def forced_lm(preprocessor):
    """A model whose next token is one chosen id whatever the input.

    Decoder blocks are zeroed (each adds 0 to the residual stream), so the
    final hidden state is the normalized embedding of the last token. Every
    embedding row is the same vector v except the forced id's, which is 2v:
    then the forced id has the largest logit (2|v|^2 against |v|^2) for any
    input. ``force(model, token_id)`` picks the id; generation shapes used:
    (1, 16) and (2, 10).
    """
    config = TINY_CONFIGS["gemma_mqa"]
    backbone = keras_gemma.GemmaBackbone(**config)
    weights = {k: np.zeros_like(v) for k, v in random_weights(config).items()}
    weights["token_embedding/embeddings"] = np.full(
        (config["vocabulary_size"], config["hidden_dim"]), 0.5, "float32"
    )
    assign_weights(backbone, weights, "forced")
    return keras_gemma.GemmaCausalLM(backbone, preprocessor)


def force(model, token_id):
    embeddings = model.backbone.token_embedding.embeddings
    values = np.full(tuple(embeddings.shape), 0.5, "float32")
    values[token_id] = 1.0
    embeddings.assign(values)


# -- 1. cached generation equals uncached -------------------------------------


def test_greedy_ragged_batch_matches_full_forward_pass(lm, greedy_batch):
    token_ids, lengths = greedy_batch
    assert token_ids.shape == (2, SEQUENCE_LENGTH)
    assert_greedy_continuation(lm, token_ids, lengths)
    # Not a degenerate model that repeats one token: the check has teeth.
    assert len(set(token_ids[0, lengths[0]:].tolist())) > 3


@pytest.mark.parametrize("name", ["gemma_mqa", "gemma2"])
@pytest.mark.parametrize("cache_first", [(False, True), (True, False), (True, True), (False, False)])
def test_every_cache_operand_order_follows_the_forward_pass(
    monkeypatch, preprocessor, prompt_batch, cache_first, name
):
    # The decode step's cache einsums take their operands in the order the
    # backend's XLA multiplies without copying (backend.py); every order is
    # the same product, on every backend.
    monkeypatch.setattr(keras_gemma.backend, "cache_first_in_attention_products", lambda: cache_first)
    lm = keras_gemma.GemmaCausalLM(tiny_backbone(name, gain=GAIN), preprocessor)
    inputs, lengths = prompt_batch
    token_ids = lm.generate(dict(inputs), stop_token_ids=None)["token_ids"]
    assert_greedy_continuation(lm, token_ids, lengths)
    assert len(set(token_ids[0, lengths[0]:].tolist())) > 3


@pytest.mark.parametrize("name", ["gemma_mqa", "gemma2"])
def test_decode_with_the_transposed_lm_head_follows_the_forward_pass(
    monkeypatch, preprocessor, prompt_batch, name
):
    # TensorFlow's batch decode loops multiply a transposed copy of the tied
    # LM head (backend.transposes_lm_head); forced here on every backend
    # and batch size, the tokens are still the forward pass's.
    monkeypatch.setattr(keras_gemma.backend, "transposes_lm_head", lambda rows, dtype: True)
    lm = keras_gemma.GemmaCausalLM(tiny_backbone(name, gain=GAIN), preprocessor)
    copies = []
    make_copy = lm.backbone.token_embedding.transposed_matrix
    monkeypatch.setattr(
        lm.backbone.token_embedding, "transposed_matrix",
        lambda: copies.append(1) or make_copy(),
    )
    inputs, lengths = prompt_batch
    token_ids = lm.generate(dict(inputs), stop_token_ids=None)["token_ids"]
    assert copies, "the decode loop did not get the transposed copy"
    assert_greedy_continuation(lm, token_ids, lengths)
    assert len(set(token_ids[0, lengths[0]:].tolist())) > 3


def test_only_tensorflow_float32_batches_transpose_the_lm_head():
    backbone = tiny_backbone("gemma_mqa")
    on_tensorflow = keras.backend.backend() == "tensorflow"
    assert backbone.transposes_lm_head(16) == on_tensorflow
    assert not backbone.transposes_lm_head(1)
    assert not keras_gemma.backend.transposes_lm_head(16, "bfloat16")
    backbone.quantize("int8")
    assert not backbone.transposes_lm_head(16)


def test_greedy_batch_rows_equal_single_prompt_generation(lm, preprocessor, greedy_batch):
    """Padding in the batch does not leak into the shorter prompt."""
    token_ids, lengths = greedy_batch
    for row, prompt in enumerate(PROMPTS):
        single = lm.generate(
            dict(preprocessor.generate_preprocess([prompt], SEQUENCE_LENGTH)),
            stop_token_ids=None,
        )["token_ids"]
        np.testing.assert_array_equal(single[0], token_ids[row])


@pytest.mark.parametrize("name, prefill_bucket", [("gemma2", 4), ("gemma3", None)])
def test_sliding_window_cached_generation_matches_full_forward_pass(
    name, prefill_bucket, monkeypatch
):
    # Prompts of 8 and 6 tokens, generated to 16: well past the window of
    # 4, through local and global layers. No preprocessor: token ids only.
    # Prompts are prefilled in buckets of causal_lm.PREFILL_BUCKET (32)
    # positions, here all 16 at once. With buckets of 4 the prefill covers
    # 8 positions: past the shorter prompt and short of max_length, as for
    # real models whose max_length exceeds the bucket.
    if prefill_bucket:
        monkeypatch.setattr(causal_lm, "PREFILL_BUCKET", prefill_bucket)
    max_length = 16
    model = keras_gemma.GemmaCausalLM(tiny_backbone(name, gain=GAIN))
    assert model.backbone.sliding_window_size == 4
    inputs = {"token_ids": TOKEN_IDS[:, :8], "padding_mask": PADDING_MASK[:, :8]}
    out = model.generate(inputs, max_length=max_length, stop_token_ids=None)
    token_ids = out["token_ids"]
    assert token_ids.shape == (2, max_length)
    np.testing.assert_array_equal(token_ids[0, :8], TOKEN_IDS[0, :8])
    np.testing.assert_array_equal(token_ids[1, :6], TOKEN_IDS[1, :6])
    assert out["padding_mask"].all()
    assert_greedy_continuation(model, token_ids, [8, 6])
    generated = token_ids[0, 8:].tolist() + token_ids[1, 6:].tolist()
    assert len(set(generated)) > 4, generated


@pytest.mark.parametrize("name", ["gemma_mqa", "gemma2", "gemma3"])
def test_generation_follows_the_forward_pass_as_the_cache_grows(name, monkeypatch):
    # The cache starts at LENGTH_BUCKET positions and doubles as generation
    # passes its end (causal_lm._cache_length): with buckets of 4, prompts
    # of 8 and 6 tokens and max_length 40 it holds 8, 16, 32 and 40
    # positions, through the sliding windows of gemma2/3.
    monkeypatch.setattr(causal_lm, "LENGTH_BUCKET", 4)
    monkeypatch.setattr(causal_lm, "PREFILL_BUCKET", 4)
    model = keras_gemma.GemmaCausalLM(tiny_backbone(name, gain=GAIN))
    lengths = []
    decode_in_cache = model._decode_in_cache
    monkeypatch.setattr(
        model, "_decode_in_cache",
        lambda state, end: lengths.append(state["cache"][0][0].shape[1]) or decode_in_cache(state, end),
    )
    inputs = {"token_ids": TOKEN_IDS[:, :8], "padding_mask": PADDING_MASK[:, :8]}
    token_ids = model.generate(inputs, max_length=40, stop_token_ids=None)["token_ids"]
    assert lengths == [8, 16, 32, 40]
    assert_greedy_continuation(model, token_ids, [8, 6])
    generated = token_ids[0, 8:].tolist() + token_ids[1, 6:].tolist()
    assert len(set(generated)) > 4, generated
    # Decode calls of 3 tokens (as stream's of one, evaluation's of 16)
    # grow the same cache on the way.
    lengths.clear()
    pad = ((0, 0), (0, 32))
    state = model._start_generation(
        np.pad(TOKEN_IDS[:, :8], pad), np.pad(PADDING_MASK[:, :8], pad), [], seed=0,
        sample_first=True,
    )
    while state["index"] < 40:
        state = model._decode(state, end=min(40, state["index"] + 3))
    np.testing.assert_array_equal(state["token_ids"], token_ids)
    assert sorted(set(lengths)) == [8, 16, 32, 40]


def test_the_cache_starts_at_the_bucket_it_needs():
    assert causal_lm._cache_length(8, 256) == 128
    assert causal_lm._cache_length(129, 256) == 256
    assert causal_lm._cache_length(300, 640) == 512
    assert causal_lm._cache_length(513, 640) == 640
    assert causal_lm._cache_length(1, 128) == 128


def test_sliding_window_full_forward_differs_from_global_attention():
    """Guards the test above: with these prompts the window changes the
    predictions, so a cache that ignored it would generate other tokens."""
    windowed = keras_gemma.GemmaCausalLM(tiny_backbone("gemma3", gain=GAIN))
    # Same local/global layers and RoPE, but a window longer than the input.
    unwindowed = keras_gemma.GemmaCausalLM(
        tiny_backbone("gemma3", gain=GAIN, sliding_window_size=1000)
    )
    a = full_forward_logits(windowed, IDS)
    b = full_forward_logits(unwindowed, IDS)
    np.testing.assert_allclose(a[0, :4], b[0, :4], atol=1e-4)
    assert (a[0, 4:].argmax(-1) != b[0, 4:].argmax(-1)).sum() >= 3


# -- 2. generate API ------------------------------------------------------------


def test_list_of_prompts_gives_list_of_texts(lm, tokenizer, greedy_batch):
    token_ids, lengths = greedy_batch
    texts = lm.generate(PROMPTS, stop_token_ids=None)
    assert isinstance(texts, list) and len(texts) == 2
    for row, (prompt, text) in enumerate(zip(PROMPTS, texts)):
        assert isinstance(text, str)
        assert text.startswith(prompt)
        # The text of the generated ids (without <bos>), decoded independently.
        assert text == decode(tokenizer, token_ids[row])


def test_strip_prompt_gives_only_new_text(lm, tokenizer, greedy_batch):
    token_ids, lengths = greedy_batch
    texts = lm.generate(PROMPTS, stop_token_ids=None, strip_prompt=True)
    for row, text in enumerate(texts):
        assert text == decode(tokenizer, token_ids[row, lengths[row]:])
        assert not text.startswith(PROMPTS[row])


def test_single_string_gives_string(lm, tokenizer, greedy_batch):
    token_ids, _ = greedy_batch
    text = lm.generate("Hi", stop_token_ids=None)
    assert isinstance(text, str)
    assert text == decode(tokenizer, token_ids[0])


def test_dict_input_gives_dict_of_same_shape(lm, prompt_batch, greedy_batch):
    inputs, lengths = prompt_batch
    out = lm.generate(dict(inputs), stop_token_ids=None)
    assert set(out) == {"token_ids", "padding_mask"}
    assert out["token_ids"].shape == inputs["token_ids"].shape
    assert out["padding_mask"].shape == inputs["padding_mask"].shape
    # Prompts are kept as they were; everything up to the length is filled.
    prompt = inputs["padding_mask"]
    np.testing.assert_array_equal(out["token_ids"][prompt], inputs["token_ids"][prompt])
    assert out["padding_mask"].all()
    assert (out["token_ids"][~inputs["padding_mask"]] != PAD).any()
    # The caller's arrays are not modified.
    assert inputs["padding_mask"].sum() == lengths.sum()
    # With strip_prompt the mask marks the new tokens only.
    stripped = lm.generate(dict(inputs), stop_token_ids=None, strip_prompt=True)
    np.testing.assert_array_equal(stripped["padding_mask"], ~inputs["padding_mask"])


def test_unbatched_dict_input_gives_unbatched_dict(lm, prompt_batch, greedy_batch):
    """1-D token_ids in, 1-D arrays out (as keras-hub)."""
    inputs, lengths = prompt_batch
    token_ids, _ = greedy_batch
    # A single prompt as 1-D arrays; padding_mask defaults to ids != pad.
    out = lm.generate({"token_ids": inputs["token_ids"][0]}, stop_token_ids=None)
    np.testing.assert_array_equal(np.asarray(out["token_ids"]).reshape(-1), token_ids[0])
    assert out["token_ids"].shape == (SEQUENCE_LENGTH,)
    assert out["padding_mask"].shape == (SEQUENCE_LENGTH,)


def test_default_max_length_is_the_preprocessor_sequence_length(forced_lm):
    force(forced_lm, X_ID)
    assert forced_lm.generate("Hi") == "Hi" + "x" * (SEQUENCE_LENGTH - 3)
    assert forced_lm.generate("Hi", strip_prompt=True) == "x" * (SEQUENCE_LENGTH - 3)


def test_max_length_is_respected(forced_lm):
    force(forced_lm, X_ID)
    # max_length counts <bos> and the prompt: 10 - 3 and 10 - 7 new tokens.
    texts = forced_lm.generate(PROMPTS, max_length=10)
    assert texts == ["Hi" + "x" * 7, "hello world" + "x" * 3]


def test_dict_max_length_truncates_or_pads(forced_lm, prompt_batch):
    force(forced_lm, X_ID)
    inputs, lengths = prompt_batch
    # Longer dict than max_length: cut to max_length.
    out = forced_lm.generate(dict(inputs), max_length=10)
    assert out["token_ids"].shape == (2, 10)
    # Shorter dict than max_length: padded to it.
    short = {k: v[:, :8] for k, v in inputs.items()}
    padded = forced_lm.generate(short, max_length=10)
    assert padded["token_ids"].shape == (2, 10)
    for result in (out, padded):
        for row, length in enumerate(lengths):
            np.testing.assert_array_equal(
                result["token_ids"][row, :length], inputs["token_ids"][row, :length]
            )
            assert (result["token_ids"][row, length:] == X_ID).all()
        assert result["padding_mask"].all()


# -- 3. stopping --------------------------------------------------------------


def cut_at_stop(token_ids, lengths, stop_ids):
    """Per row, the index of the first generated stop id (or the length)."""
    cuts = []
    for row, start in enumerate(lengths):
        generated = token_ids[row, start:]
        hits = np.flatnonzero(np.isin(generated, stop_ids))
        cuts.append(start + hits[0] if len(hits) else token_ids.shape[1])
    return cuts


def test_generation_stops_before_a_stop_token(lm, prompt_batch, greedy_batch):
    inputs, lengths = prompt_batch
    token_ids, _ = greedy_batch
    stop = int(token_ids[0, lengths[0] + 2])  # the 3rd id greedy generates
    cuts = cut_at_stop(token_ids, lengths, [stop])
    assert cuts[0] <= lengths[0] + 2
    out = lm.generate(dict(inputs), stop_token_ids=[stop])
    for row, cut in enumerate(cuts):
        expected_mask = np.arange(SEQUENCE_LENGTH) < cut
        np.testing.assert_array_equal(out["padding_mask"][row], expected_mask)
        # Tokens before the stop are the ones generated without stops.
        np.testing.assert_array_equal(out["token_ids"][row, :cut], token_ids[row, :cut])
        assert stop not in out["token_ids"][row, lengths[row]:cut]


def test_stop_token_texts_end_right_before_the_stop(lm, tokenizer, prompt_batch, greedy_batch):
    inputs, lengths = prompt_batch
    token_ids, _ = greedy_batch
    stop = int(token_ids[0, lengths[0] + 2])
    cuts = cut_at_stop(token_ids, lengths, [stop])
    texts = lm.generate(PROMPTS, stop_token_ids=[stop])
    for row, cut in enumerate(cuts):
        assert texts[row] == decode(tokenizer, token_ids[row, :cut])
    stripped = lm.generate(PROMPTS, stop_token_ids=[stop], strip_prompt=True)
    assert stripped[0] == decode(tokenizer, token_ids[0, lengths[0]:cuts[0]])


def test_stop_token_in_the_prompt_does_not_stop(lm, prompt_batch, greedy_batch):
    inputs, lengths = prompt_batch
    token_ids, _ = greedy_batch
    generated = set(token_ids[0, lengths[0]:].tolist()) | set(token_ids[1, lengths[1]:].tolist())
    candidates = [int(i) for i in token_ids[1, 1:lengths[1]] if int(i) not in generated]
    assert candidates, "the test needs a prompt id that greedy does not generate"
    out = lm.generate(dict(inputs), stop_token_ids=[candidates[0]])
    np.testing.assert_array_equal(out["token_ids"], token_ids)
    assert out["padding_mask"].all()


@pytest.mark.parametrize("stop_id", [EOS, END_OF_TURN])
def test_auto_stops_at_eos_and_end_of_turn(forced_lm, stop_id):
    force(forced_lm, stop_id)
    assert forced_lm.generate("Hi") == "Hi"
    assert forced_lm.generate("Hi", stop_token_ids="auto", strip_prompt=True) == ""
    inputs = forced_lm.preprocessor.generate_preprocess(["Hi"], SEQUENCE_LENGTH)
    out = forced_lm.generate(dict(inputs))
    assert out["token_ids"][0, 3] == stop_id
    np.testing.assert_array_equal(out["padding_mask"], inputs["padding_mask"])


def test_without_stop_ids_special_tokens_are_generated(forced_lm):
    force(forced_lm, END_OF_TURN)
    text = forced_lm.generate("Hi", stop_token_ids=None)
    assert text == "Hi" + "<end_of_turn>" * (SEQUENCE_LENGTH - 3)
    force(forced_lm, EOS)
    # <eos> is generated to the end, and dropped from the text.
    inputs = forced_lm.preprocessor.generate_preprocess(["Hi"], SEQUENCE_LENGTH)
    out = forced_lm.generate(dict(inputs), stop_token_ids=None)
    assert (out["token_ids"][0, 3:] == EOS).all() and out["padding_mask"].all()
    assert forced_lm.generate("Hi", stop_token_ids=None) == "Hi"
    # An explicit list replaces "auto": <eos> no longer stops.
    force(forced_lm, END_OF_TURN)
    assert forced_lm.generate("Hi", stop_token_ids=[EOS]) == text


# -- 4. sampling inside generate ------------------------------------------------


@pytest.fixture(scope="module")
def random_lm(preprocessor):
    model = keras_gemma.GemmaCausalLM(tiny_backbone(gain=GAIN), preprocessor)
    model.compile(sampler=samplers.RandomSampler(temperature=2.0))
    return model


def test_same_seed_same_output_different_seed_differs(random_lm, prompt_batch):
    inputs, lengths = prompt_batch
    runs = {
        seed: random_lm.generate(dict(inputs), stop_token_ids=None, seed=seed)["token_ids"]
        for seed in (1, 2)
    }
    again = random_lm.generate(dict(inputs), stop_token_ids=None, seed=1)["token_ids"]
    np.testing.assert_array_equal(again, runs[1])
    # 13 tokens from a temperature-2 distribution over 640 ids.
    assert (runs[1][0, 3:] != runs[2][0, 3:]).sum() >= 3
    # Sampled, not greedy.
    greedy = full_forward_logits(random_lm, runs[1])[0, 2:-1].argmax(-1)
    assert (greedy != runs[1][0, 3:]).any()
    # Strings too.
    assert random_lm.generate(PROMPTS, seed=3) == random_lm.generate(PROMPTS, seed=3)


def test_random_sampling_follows_seeded_numpy_uniforms(random_lm, prompt_batch):
    """The scheme documented in samplers.py: one uniform per sequence and
    step, drawn from ``numpy.random.default_rng(seed)`` (an array of
    (max_length, batch), indexed by position), turned into a token by
    inverting the CDF of softmax(logits / temperature). Recomputed here in
    float64 from one uncached forward pass. This is what makes a seed give
    the same tokens on every backend."""
    seed = 5
    inputs, lengths = prompt_batch
    token_ids = random_lm.generate(dict(inputs), stop_token_ids=None, seed=seed)["token_ids"]
    uniforms = np.random.default_rng(seed).random((SEQUENCE_LENGTH, 2), dtype="float32")
    logits = full_forward_logits(random_lm, token_ids)
    for row, start in enumerate(lengths):
        for position in range(start, SEQUENCE_LENGTH):
            scaled = logits[row, position - 1] / 2.0
            probabilities = np.exp(scaled - scaled.max())
            cdf = np.cumsum(probabilities / probabilities.sum())
            token = token_ids[row, position]
            low = cdf[token - 1] if token else 0.0
            u = float(uniforms[position, row])
            assert low - 1e-4 <= u <= cdf[token] + 1e-4, (row, position, token, u, low, cdf[token])


def test_top_k_generation_stays_in_the_top_k(preprocessor, prompt_batch):
    model = keras_gemma.GemmaCausalLM(tiny_backbone(gain=GAIN), preprocessor)
    model.compile(sampler=samplers.TopKSampler(k=3, temperature=5.0))
    inputs, lengths = prompt_batch
    token_ids = model.generate(dict(inputs), stop_token_ids=None, seed=0)["token_ids"]
    logits = full_forward_logits(model, token_ids)
    ranked = np.sort(logits, axis=-1)[..., ::-1]
    best = []
    for row, start in enumerate(lengths):
        for position in range(start, SEQUENCE_LENGTH):
            chosen = logits[row, position - 1, token_ids[row, position]]
            # Among the 3 largest logits (up to float noise).
            assert chosen >= ranked[row, position - 1, 2] - 1e-4, (row, position)
            best.append(chosen >= ranked[row, position - 1, 0] - 1e-4)
    # At temperature 5 over 3 ids, not always the best one.
    assert not all(best)


# -- 5. bad input -------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, max_length",
    [
        ("hello world", 7),  # 7 tokens with <bos>: no room
        ("hello world", 4),  # longer than max_length
        ("hello world " * 10, None),  # longer than the default 16
        (["Hi", "hello world"], 6),  # one of a batch
    ],
)
def test_prompt_without_room_to_generate(lm, prompt, max_length):
    with pytest.raises(ValueError, match="leaves no room to generate") as info:
        lm.generate(prompt, max_length=max_length)
    assert_raised_by_us(info)


def test_dict_prompt_not_shorter_than_max_length(lm, prompt_batch):
    inputs, _ = prompt_batch
    with pytest.raises(ValueError, match="must exceed the longest prompt") as info:
        lm.generate(dict(inputs), max_length=7)
    assert_raised_by_us(info)
    full = {"token_ids": np.full((1, 4), 7), "padding_mask": np.ones((1, 4), bool)}
    with pytest.raises(ValueError, match="leave no room to generate"):
        lm.generate(full)


@pytest.mark.parametrize("max_length", [1, 0, -5, 10.0, 10.5, "10", True, [10]])
def test_invalid_max_length(lm, max_length):
    with pytest.raises(ValueError, match="`max_length` must be an integer >= 2") as info:
        lm.generate("Hi", max_length=max_length)
    assert_raised_by_us(info)


@pytest.mark.parametrize(
    "prompt, match",
    [
        (5, "Prompts must be a string or a list of strings, got int"),
        (None, "Prompts must be a string or a list of strings, got NoneType"),
        (b"Hi", "Prompts must be a string or a list of strings, got bytes"),
        (["Hi", 3], "Prompts must be strings, but the batch holds a int"),
        (["Hi", None], "Prompts must be strings, but the batch holds a NoneType"),
    ],
)
def test_non_string_prompt(lm, prompt, match):
    with pytest.raises(TypeError, match=match) as info:
        lm.generate(prompt)
    assert_raised_by_us(info)


@pytest.mark.parametrize("bad_id", [640, 100_000, -1])
def test_dict_input_out_of_vocabulary(lm, bad_id):
    token_ids = np.array([[2, 17, bad_id, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"token_ids must lie in \[0, 640\)") as info:
        lm.generate({"token_ids": token_ids, "padding_mask": token_ids != 0}, max_length=8)
    assert_raised_by_us(info)


def test_dict_input_other_errors(lm):
    with pytest.raises(ValueError, match="needs a 'token_ids' entry"):
        lm.generate({"padding_mask": np.ones((1, 3), bool)})
    with pytest.raises(ValueError, match="padding_mask has shape"):
        lm.generate(
            {"token_ids": np.ones((1, 4), "int32"), "padding_mask": np.ones((1, 3), bool)},
            max_length=8,
        )
    with pytest.raises(ValueError, match="at least one token, right-padded"):
        lm.generate(
            {"token_ids": np.array([[0, 2, 5]]), "padding_mask": np.array([[False, True, True]])},
            max_length=8,
        )


def test_empty_prompt_list(lm):
    # Either an empty result or an error of ours that says what is wrong,
    # not Python's "max() arg is an empty sequence".
    try:
        result = lm.generate([])
    except ValueError as error:
        assert "prompt" in str(error).lower(), str(error)
    else:
        assert result == []


def test_stop_token_ids_as_a_bare_int(lm):
    with pytest.raises((ValueError, TypeError), match="stop_token_ids"):
        lm.generate("Hi", stop_token_ids=1)


@pytest.mark.parametrize(
    "stop_token_ids, match",
    [
        ("eos", "stop_token_ids must be 'auto', None or a list"),
        ([1, 640], "lie outside the vocabulary"),
        ([-1], "lie outside the vocabulary"),
    ],
)
def test_invalid_stop_token_ids(lm, stop_token_ids, match):
    with pytest.raises(ValueError, match=match) as info:
        lm.generate("Hi", stop_token_ids=stop_token_ids)
    assert_raised_by_us(info)


def test_unknown_sampler_in_compile():
    model = keras_gemma.GemmaCausalLM(tiny_backbone())
    with pytest.raises(ValueError, match="Unknown sampler 'beam_search'") as info:
        model.compile(sampler="beam_search")
    assert_raised_by_us(info)
    assert "top_k" in str(info.value)


@pytest.mark.parametrize(
    "name, cls", [("top_p", samplers.TopPSampler), ("random", samplers.RandomSampler)]
)
def test_compile_sets_sampler_by_name(name, cls):
    model = keras_gemma.GemmaCausalLM(tiny_backbone())
    assert type(model.sampler) is samplers.GreedySampler
    model.compile(sampler=name)
    assert type(model.sampler) is cls


def test_strings_without_preprocessor():
    model = keras_gemma.GemmaCausalLM(tiny_backbone())
    with pytest.raises(ValueError, match="needs a preprocessor"):
        model.generate("Hi")
    model.compile()
    with pytest.raises(ValueError, match="has no preprocessor"):
        model.fit(["Hi there"], epochs=1)


def test_invalid_scoring_mode(lm):
    token_ids = IDS
    with pytest.raises(ValueError, match="`scoring_mode` must be 'logits' or 'loss'") as info:
        lm.score(token_ids, scoring_mode="perplexity")
    assert_raised_by_us(info)
    with pytest.raises(ValueError, match="scoring_mode='loss' needs `target_ids`") as info:
        lm.score(token_ids, scoring_mode="loss")
    assert_raised_by_us(info)


# -- 6. score -----------------------------------------------------------------


def numpy_cross_entropy(logits, targets):
    logits = np.asarray(logits, "float64")
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_softmax, targets[..., None], axis=-1)[..., 0]


def test_score_logits_equal_the_forward_pass(lm):
    logits = to_numpy(lm.score(IDS, MASK))
    assert logits.shape == IDS.shape + (640,)
    assert logits.dtype == np.float32
    expected = to_numpy(lm({"token_ids": IDS, "padding_mask": MASK}))
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
    # Without a mask every position is real: same as an all-ones mask,
    # which differs from the padded result (the mask is not ignored).
    unmasked = to_numpy(lm.score(IDS))
    np.testing.assert_allclose(unmasked, full_forward_logits(lm, IDS), atol=1e-5, rtol=0)
    assert np.abs(unmasked[1, 6:] - logits[1, 6:]).max() > 1e-2


def test_score_loss_is_cross_entropy_zero_on_padding(lm):
    targets = np.concatenate([IDS[:, 1:], np.zeros((2, 1), "int32")], axis=1)
    loss = to_numpy(lm.score(IDS, MASK, scoring_mode="loss", target_ids=targets))
    assert loss.shape == IDS.shape
    logits = to_numpy(lm({"token_ids": IDS, "padding_mask": MASK}))
    expected = numpy_cross_entropy(logits, targets) * MASK
    np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-4)
    assert (loss[~MASK] == 0).all()
    assert (loss[MASK] > 0).all()


# -- 7. fit -------------------------------------------------------------------

SENTENCES = ["the cat sat on the mat", "Paris is in France", "a b c"]


@pytest.fixture
def trainable_lm(tokenizer):
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=12)
    return keras_gemma.GemmaCausalLM(tiny_backbone(seed=1), preprocessor)


def masked_cross_entropy(model, strings):
    """Mean numpy cross-entropy over the real (non-padding) next tokens,
    and the token accuracy, for strings through the preprocessor."""
    x, y, sample_weight = model.preprocessor(strings)
    assert (sample_weight == 0).any()  # the batch has padding
    logits = to_numpy(model(x))
    loss = (numpy_cross_entropy(logits, y) * sample_weight).sum() / sample_weight.sum()
    accuracy = ((logits.argmax(-1) == y) * sample_weight).sum() / sample_weight.sum()
    return loss, accuracy


def test_default_compile(trainable_lm):
    trainable_lm.compile()
    optimizer = trainable_lm.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    np.testing.assert_allclose(float(to_numpy(optimizer.learning_rate)), 5e-5)
    np.testing.assert_allclose(optimizer.weight_decay, 0.01)
    assert type(trainable_lm.sampler) is samplers.GreedySampler


def test_fit_on_strings_lowers_the_loss(trainable_lm):
    # Default loss and metrics; a learning rate that shows progress in a
    # few dozen steps (the default 5e-5 is meant for real models).
    trainable_lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    # The default loss masks padding: evaluate() equals numpy cross-entropy
    # over real tokens (one batch, so no averaging across batches).
    loss, accuracy = trainable_lm.evaluate(SENTENCES, batch_size=len(SENTENCES), verbose=0)
    expected_loss, expected_accuracy = masked_cross_entropy(trainable_lm, SENTENCES)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-4)
    np.testing.assert_allclose(accuracy, expected_accuracy, atol=1e-6)

    epochs = 8
    history = trainable_lm.fit(
        SENTENCES * 4, batch_size=4, epochs=epochs, verbose=0,
        validation_data=SENTENCES, shuffle=True,
    )
    losses = history.history["loss"]
    assert len(losses) == epochs and np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    # ... and far below guessing uniformly among 640 ids (log 640 = 6.5).
    assert losses[-1] < 2.0, losses
    val = history.history["val_loss"]
    assert len(val) == epochs
    # Validation on strings is the same masked cross-entropy.
    final_loss, _ = masked_cross_entropy(trainable_lm, SENTENCES)
    np.testing.assert_allclose(val[-1], final_loss, rtol=1e-3)
    assert val[-1] < 0.5 * expected_loss


def test_fit_on_empty_list(trainable_lm):
    trainable_lm.compile()
    with pytest.raises(ValueError, match="empty dataset") as info:
        trainable_lm.fit([], batch_size=4, epochs=1)
    assert_raised_by_us(info)


def test_fit_on_strings_with_labels(trainable_lm):
    trainable_lm.compile()
    with pytest.raises(ValueError, match="computes labels itself") as info:
        trainable_lm.fit(SENTENCES, y=np.zeros((3, 12), "int32"), epochs=1)
    assert_raised_by_us(info)


# -- 8. configs -----------------------------------------------------------------


def test_causal_lm_config_round_trip(lm):
    config = lm.get_config()
    config = json.loads(json.dumps(config))  # plain JSON
    restored = keras_gemma.GemmaCausalLM.from_config(config)
    assert isinstance(restored.backbone, keras_gemma.GemmaBackbone)
    assert restored.backbone is not lm.backbone
    assert restored.backbone.get_config() == lm.backbone.get_config()
    assert restored.name == lm.name


@pytest.mark.parametrize("name", ["gemma_mqa", "gemma3"])
def test_backbone_config_round_trip_and_logits(name):
    backbone = tiny_backbone(name)
    config = json.loads(json.dumps(backbone.get_config()))
    restored = keras_gemma.GemmaBackbone.from_config(config)
    assert restored.get_config() == backbone.get_config()
    for key, value in TINY_CONFIGS[name].items():
        assert restored.get_config()[key] == value
    restored.set_weights(backbone.get_weights())
    inputs = {"token_ids": IDS, "padding_mask": MASK}
    expected = to_numpy(backbone.compute_logits(backbone(inputs)))
    got = to_numpy(restored.compute_logits(restored(inputs)))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


# -- 9. mixed precision -----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "bfloat16"])
def test_low_precision_logits_are_float32_and_close(dtype):
    reference = tiny_backbone()
    low = tiny_backbone(dtype=dtype)
    assert low.compute_dtype == "bfloat16"
    variable_dtype = "float32" if dtype.startswith("mixed") else "bfloat16"
    assert low.token_embedding.embeddings.dtype == variable_dtype
    inputs = {"token_ids": IDS, "padding_mask": MASK}
    expected = to_numpy(reference.compute_logits(reference(inputs)))
    logits = low.compute_logits(low(inputs))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    logits = to_numpy(logits)
    assert np.isfinite(logits).all()
    scale = np.abs(expected).max()
    error = np.abs(logits - expected)[MASK]
    assert error.max() < 0.1 * scale, (error.max(), scale)
    assert error.max() > 0  # bfloat16 arithmetic did happen
    # The causal LM returns float32 logits too.
    lm_logits = keras_gemma.GemmaCausalLM(low)(inputs)
    assert keras.backend.standardize_dtype(lm_logits.dtype) == "float32"


@pytest.mark.parametrize("dtype", ["mixed_bfloat16", "bfloat16"])
def test_low_precision_residual_stream_stays_bfloat16(dtype):
    backbone = tiny_backbone(dtype=dtype)
    block = backbone.decoder_blocks[0]
    x = keras.ops.ones((2, 16, 32), "bfloat16")
    cos = keras.ops.ones((16, 16), "bfloat16")
    sin = keras.ops.zeros((16, 16), "bfloat16")
    mask = keras.ops.ones((2, 16, 16), "bool")
    out = block(x, attention_mask=mask, rotary_cos=cos, rotary_sin=sin)
    # Every sub-layer of a bfloat16 policy computes and returns bfloat16.
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"


def test_mixed_precision_generation_follows_its_forward_pass(preprocessor, prompt_batch):
    """The bfloat16 key/value cache in the compiled loop: greedy tokens are
    the argmax of the same model's uncached forward pass, up to bfloat16
    rounding (the two paths round differently)."""
    model = keras_gemma.GemmaCausalLM(
        tiny_backbone(gain=GAIN, dtype="mixed_bfloat16"), preprocessor
    )
    inputs, lengths = prompt_batch
    token_ids = model.generate(dict(inputs), stop_token_ids=None)["token_ids"]
    logits = full_forward_logits(model, token_ids)
    tolerance = 0.05 * np.abs(logits).max()
    for row, start in enumerate(lengths):
        for position in range(start, SEQUENCE_LENGTH):
            step = logits[row, position - 1]
            assert step[token_ids[row, position]] >= step.max() - tolerance, (row, position)
