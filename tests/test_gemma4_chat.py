"""Gemma 4's chat format against Google's chat_template.jinja.

The expected strings are in tests/data/gemma4_chat_oracle.json, rendered with
jinja2 from the official templates by tests/data/make_gemma4_chat_oracle.py:
"small" from the E2B/E4B template, "large" from the 26B-A4B/31B one (which
closes an empty thought channel after the generation prompt when thinking is
off). The templates start with <bos>, which chat_template leaves to generate.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

TESTS_DIR = pathlib.Path(__file__).parent
sys.path.insert(0, str(TESTS_DIR))
from tiny_models import TINY_CONFIGS  # noqa: E402
from tiny_models import random_weights  # noqa: E402

import keras_gemma  # noqa: E402
from keras_gemma import chat  # noqa: E402
from keras_gemma.chat import chat_template  # noqa: E402
from keras_gemma.chat import fit_conversation  # noqa: E402
from keras_gemma.checkpoints import assign_weights  # noqa: E402
from keras_gemma.checkpoints.tokenizer_json import tokenizer_from_tokenizer_json  # noqa: E402
from keras_gemma.preprocessor import GemmaCausalLMPreprocessor  # noqa: E402

DATA = TESTS_DIR / "data"
CASES = json.loads((DATA / "gemma4_chat_oracle.json").read_text())["cases"]
CLI = pathlib.Path(sys.executable).parent / "keras-gemma"


def options(case):
    return {key: case[key] for key in ("add_generation_prompt", "enable_thinking") if key in case}


@pytest.mark.parametrize("name", sorted(CASES))
def test_small_model_template(name):
    case = CASES[name]
    assert chat_template(case["messages"], family="gemma4", **options(case)) == case["small"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_large_model_template(name):
    case = CASES[name]
    text = chat_template(case["messages"], family="gemma4", empty_thought_channel=True,
                         **options(case))
    assert text == case["large"]


def test_gemma1_to_3_format_unchanged():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}]
    expected = "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert chat_template(messages) == expected
    for family in ("gemma", "gemma2", "gemma3"):
        assert chat_template(messages, family=family) == expected


def test_bad_options():
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="Unknown chat family 'gemma5'"):
        chat_template(messages, family="gemma5")
    with pytest.raises(ValueError, match="no thinking mode"):
        chat_template(messages, family="gemma3", enable_thinking=True)
    with pytest.raises(ValueError, match="ends with a model turn"):
        chat_template(messages + [{"role": "assistant", "content": "x"}], family="gemma4")


@pytest.fixture(scope="module")
def gemma4_tokenizer():
    return tokenizer_from_tokenizer_json(DATA / "gemma4_tokenizer")


def test_family_from_the_tokenizer(gemma4_tokenizer):
    assert chat.chat_family(gemma4_tokenizer) == "gemma4"
    old = keras_gemma.GemmaTokenizer(str(DATA / "test_vocabulary.spm"))
    assert chat.chat_family(old) == "gemma"
    assert chat.chat_format(old, "gemma3_instruct_1b") == {"family": "gemma"}
    for name, large in [("gemma4_instruct_2b", False), ("gemma4_instruct_4b", False),
                        ("gemma4_instruct_26b_a4b", True), ("gemma4_instruct_31b", True),
                        ("/models/gemma-4-31B-it", True), ("/m/gemma-4-E4B-it", False)]:
        assert chat.chat_format(gemma4_tokenizer, name) == {
            "family": "gemma4", "empty_thought_channel": large}, name


def test_markers_are_single_tokens(gemma4_tokenizer):
    text = CASES["thinking_on_with_system"]["small"]
    ids = gemma4_tokenizer.tokenize(text)
    for marker in ("<|turn>", "<turn|>", "<|think|>"):
        assert ids.count(gemma4_tokenizer.token_to_id(marker)) == text.count(marker)


def test_fit_conversation_uses_the_format(gemma4_tokenizer):
    messages = [{"role": "system", "content": "S"}] + [
        {"role": role, "content": f"message {i}"}
        for i, role in zip(range(5), ["user", "assistant"] * 3)]
    count = lambda text: len(gemma4_tokenizer.tokenize(text)) + 1  # noqa: E731
    full = count(chat_template(messages, family="gemma4"))
    kept, dropped, tokens = fit_conversation(messages, count, full - 1, family="gemma4")
    assert dropped == 1 and kept == messages[:1] + messages[3:]
    assert tokens == count(chat_template(kept, family="gemma4"))


# -- generate's stop ids and the chat command on a tiny Gemma 4-tokenizer model ----


@pytest.fixture(scope="module")
def tiny_gemma4(gemma4_tokenizer):
    """A tiny random model with the synthetic Gemma 4 tokenizer."""
    config = dict(TINY_CONFIGS["gemma3"], vocabulary_size=gemma4_tokenizer.vocabulary_size())
    model = keras_gemma.GemmaCausalLM(
        keras_gemma.GemmaBackbone(**config),
        GemmaCausalLMPreprocessor(gemma4_tokenizer, sequence_length=64),
    )
    assign_weights(model.backbone, random_weights(config), "tiny_models")
    return model


@pytest.fixture(scope="module")
def tiny_gemma4_preset(tmp_path_factory, tiny_gemma4):
    path = tmp_path_factory.mktemp("gemma4_chat") / "tiny_gemma4_instruct"
    tiny_gemma4.save_to_preset(str(path))
    return path


def test_auto_stop_ids_include_end_of_turn(tiny_gemma4, gemma4_tokenizer):
    tokenizer = tiny_gemma4.preprocessor.tokenizer
    assert tokenizer.end_of_turn_token == "<turn|>"
    assert sorted(tiny_gemma4._stop_token_ids("auto")) == sorted(
        [gemma4_tokenizer.token_to_id("<eos>"), gemma4_tokenizer.token_to_id("<turn|>")])


def test_chat_command_speaks_gemma4(tiny_gemma4_preset, tiny_gemma4):
    messages, new_tokens, system = ["hello there", "how are you?"], 4, "Be brief."
    tokenizer = tiny_gemma4.preprocessor.tokenizer

    def replies(family):
        history, out = [{"role": "system", "content": system}], []
        for message in messages:
            history.append({"role": "user", "content": message})
            prompt = chat_template(history, family=family)
            length = len(tokenizer.tokenize(prompt)) + 1 + new_tokens
            out.append(tiny_gemma4.generate(prompt, max_length=length, strip_prompt=True))
            history.append({"role": "model", "content": out[-1]})
        return out

    expected = replies("gemma4")
    # The check can fail: the old format would make this model say other things.
    assert expected != replies("gemma")
    environment = dict(os.environ, KERAS_BACKEND=keras.config.backend(),
                       PYTHONIOENCODING="utf-8", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [str(CLI), "chat", "--preset", str(tiny_gemma4_preset), "--system", system,
         "--max-new-tokens", str(new_tokens)],
        input="\n".join(messages).encode() + b"\n", capture_output=True,
        env=environment, timeout=600,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert result.stdout.decode() == "".join(reply + "\n" for reply in expected)


def test_docstring_examples():
    import doctest

    results = doctest.testmod(chat)
    assert results.attempted >= 2 and results.failed == 0
