"""GemmaCausalLM.stream: text piece by piece, the same tokens as generate."""

import numpy as np
import pytest
from test_causal_lm import (  # noqa: F401  (fixtures)
    GAIN,
    assert_raised_by_us,
    lm,
    preprocessor,
    tiny_backbone,
)

import keras_gemma
from keras_gemma import samplers


@pytest.mark.parametrize("prompt", ["Hi", "hello world"])
def test_stream_pieces_join_to_the_generated_text(lm, prompt):
    expected = lm.generate(prompt, max_length=16, strip_prompt=True)
    pieces = list(lm.stream(prompt, max_length=16))
    assert "".join(pieces) == expected
    assert len(pieces) > 1 and all(pieces)


def test_stream_follows_the_sampler_and_seed(preprocessor):
    model = keras_gemma.GemmaCausalLM(tiny_backbone(gain=GAIN), preprocessor)
    model.compile(sampler=samplers.TopKSampler(k=5, temperature=2.0))
    expected = model.generate("hello", max_length=16, strip_prompt=True, seed=7)
    assert "".join(model.stream("hello", max_length=16, seed=7)) == expected


def test_stream_stops_at_a_stop_token(lm):
    tokens = lm.generate("Hi", max_length=16, stop_token_ids=None)
    full = lm.preprocessor.tokenizer.tokenize(tokens)
    # Stop at the third generated token: the text ends right before it.
    prompt_length = len(lm.preprocessor.tokenizer.tokenize("Hi"))
    stop = full[prompt_length + 2]
    expected = lm.generate("Hi", max_length=16, stop_token_ids=[stop], strip_prompt=True)
    assert "".join(lm.stream("Hi", max_length=16, stop_token_ids=[stop])) == expected


def test_a_character_split_over_byte_tokens_arrives_whole(lm, monkeypatch):
    """'é' is one piece, '€' three byte-fallback pieces (<0xE2><0x82><0xAC>):
    no piece may carry half a character."""
    script = iter([553, 232, 136, 178, 1])  # é, the bytes of €, <eos>

    def scripted_decode(state, end):
        token = next(script)
        token_ids = state["token_ids"].copy()
        token_ids[0, state["index"]] = token
        return {**state, "token_ids": token_ids, "index": state["index"] + 1,
                "done": token == 1}

    start_generation = lm._start_generation

    def start_without_sampling(*args, sample_first=False, **kwargs):
        return start_generation(*args, **kwargs)  # every token from the script

    monkeypatch.setattr(lm, "_decode", scripted_decode)
    monkeypatch.setattr(lm, "_start_generation", start_without_sampling)
    assert list(lm.stream("Hi", max_length=16)) == ["é", "€"]


def test_max_lengths_in_one_bucket_share_the_compiled_loop(lm):
    lm.generate("Hi", max_length=12)
    compiled = dict(lm._generate_functions)
    lm.generate("Hi", max_length=14)
    list(lm.stream("Hi", max_length=15))
    assert lm._generate_functions == compiled


@pytest.mark.parametrize("prompt", [["a", "b"], 3, None])
def test_stream_takes_one_string(lm, prompt):
    with pytest.raises(TypeError, match="one prompt string") as info:
        list(lm.stream(prompt))
    assert_raised_by_us(info)


def test_stream_checks_max_length(lm):
    with pytest.raises(ValueError, match="max_length"):
        list(lm.stream("Hi", max_length=1))
    np.testing.assert_equal(
        "".join(lm.stream("Hi", max_length=5)),
        lm.generate("Hi", max_length=5, strip_prompt=True),
    )
