"""keras_gemma.chat_template against Google's Gemma formatting documentation.

The expected strings are the examples of https://ai.google.dev/gemma/docs/formatting
("Gemma formatting and system instructions"). chat_template never adds
<bos>: the preprocessor does (see test_prompt_gets_exactly_one_bos).
"""

import json
import os
from pathlib import Path

import pytest

import keras_gemma
from keras_gemma import chat
from keras_gemma.chat import chat_template
from keras_gemma.chat import fit_conversation


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# -- Google's examples ----------------------------------------------------------


def test_single_turn_prompt():
    # "...you should instead feed the model as follows:" plus the prompt
    # prefix "<start_of_turn>model\n".
    assert chat_template([user("What is Cramer's Rule?")]) == (
        "<start_of_turn>user\nWhat is Cramer's Rule?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_multi_turn_prompt():
    messages = [user("knock knock"), assistant("who is there"), user("Laurence")]
    expected = (
        "<start_of_turn>user\nknock knock<end_of_turn>\n"
        "<start_of_turn>model\nwho is there<end_of_turn>\n"
        "<start_of_turn>user\nLaurence<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert chat_template(messages) == expected
    # Gemma's own role name works too.
    messages[1] = {"role": "model", "content": "who is there"}
    assert chat_template(messages) == expected


def test_finished_conversation_without_generation_prompt():
    # Google's example dialogue; every turn ends with "<end_of_turn>\n", the
    # turn separator, the last one included (as in transformers' template).
    messages = [user("knock knock"), assistant("who is there"),
                user("Gemma"), assistant("Gemma who?")]
    assert chat_template(messages, add_generation_prompt=False) == (
        "<start_of_turn>user\nknock knock<end_of_turn>\n"
        "<start_of_turn>model\nwho is there<end_of_turn>\n"
        "<start_of_turn>user\nGemma<end_of_turn>\n"
        "<start_of_turn>model\nGemma who?<end_of_turn>\n"
    )
    # A conversation ending with the user, not yet answered.
    assert chat_template(messages[:1], add_generation_prompt=False) == (
        "<start_of_turn>user\nknock knock<end_of_turn>\n"
    )


def test_system_instructions_open_the_first_user_turn():
    # Google: "provide system level instructions directly within the initial
    # user prompt".
    messages = [
        {"role": "system", "content": "Only reply like a pirate."},
        user("What is the answer to life the universe and everything?"),
        assistant("Arrr, 'tis 42,"),
    ]
    assert chat_template(messages, add_generation_prompt=False) == (
        "<start_of_turn>user\nOnly reply like a pirate.\n\n"
        "What is the answer to life the universe and everything?<end_of_turn>\n"
        "<start_of_turn>model\nArrr, 'tis 42,<end_of_turn>\n"
    )
    # Only the first user turn carries it.
    longer = messages + [user("And 43?")]
    assert chat_template(longer) == (
        chat_template(messages, add_generation_prompt=False)
        + "<start_of_turn>user\nAnd 43?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_content_is_trimmed_like_transformers():
    assert chat_template([user("  hello \n")]) == (
        "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n"
    )


def test_exported_lazily_from_the_package():
    assert keras_gemma.chat_template is chat_template
    assert "chat_template" in dir(keras_gemma)


def test_prompt_gets_exactly_one_bos(tokenizer):
    prompt = chat_template([user("knock knock"), assistant("who is there"), user("Gemma")])
    assert not prompt.startswith("<bos>")
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=64)
    batch = preprocessor.generate_preprocess(prompt)
    ids = batch["token_ids"][0][batch["padding_mask"][0]].tolist()
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    # The turn markers written in the text become their single tokens.
    assert ids[1] == tokenizer.start_of_turn_token_id
    assert ids.count(tokenizer.end_of_turn_token_id) == 3
    assert tokenizer.detokenize(ids[1:]) == prompt


# -- bad input --------------------------------------------------------------------


@pytest.mark.parametrize("messages,match", [
    ([], "no messages"),
    ("hello", "list of messages"),
    (None, "list of messages"),
    ([("user", "hi")], r"messages\[0\] must be a dict"),
    ([{"role": "user"}], r"messages\[0\] lacks 'content'"),
    ([{"content": "hi"}], r"messages\[0\] lacks 'role'"),
    ([{"role": "bot", "content": "hi"}], r"unknown role 'bot'"),
    ([{"role": "User", "content": "hi"}], r"unknown role 'User'"),
    ([{"role": "user", "content": 3}], r"messages\[0\] \(user\) has int content"),
    ([{"role": "user", "content": None}], "NoneType content"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "list content"),
    ([user("a"), user("b")], r"messages\[1\] is a 'user' message after 'user'.*alternate"),
    ([assistant("hello")], r"messages\[0\] is a 'assistant' message after 'the start'"),
    ([user("a"), assistant("b"), assistant("c")], r"messages\[2\].*alternate"),
    ([user("a"), {"role": "system", "content": "s"}], "system message may only come first"),
    ([{"role": "system", "content": "s"}], "at least one user message"),
    ([{"role": "system", "content": 1}, user("a")], "int content"),
    ([user("a"), assistant("b")], "ends with a model turn.*add_generation_prompt=False"),
])
def test_bad_messages_are_value_errors(messages, match):
    with pytest.raises(ValueError, match=match):
        chat_template(messages)


def test_model_turn_may_end_a_finished_conversation():
    assert chat_template([user("a"), assistant("b")], add_generation_prompt=False).endswith(
        "<start_of_turn>model\nb<end_of_turn>\n"
    )
    with pytest.raises(ValueError, match="alternate"):
        chat_template([user("a"), user("b")], add_generation_prompt=False)


# -- keeping a conversation in context -------------------------------------------------


def test_fit_conversation_drops_oldest_exchanges_first():
    system = {"role": "system", "content": "Be brief."}
    messages = [system, user("one"), assistant("1"), user("two"), assistant("2"), user("three")]
    count = len  # one "token" per character keeps the arithmetic visible
    full = len(chat_template(messages))
    assert fit_conversation(messages, count, full) == (messages, 0, full)

    kept, dropped, tokens = fit_conversation(messages, count, full - 1)
    assert dropped == 1
    assert kept == [system, user("two"), assistant("2"), user("three")]
    assert tokens == len(chat_template(kept)) < full
    # The system text moved to the new first user turn.
    assert chat_template(kept).startswith("<start_of_turn>user\nBe brief.\n\ntwo")

    kept, dropped, tokens = fit_conversation(messages, count, 10)
    assert (kept, dropped) == ([system, user("three")], 2)
    assert tokens > 10  # the caller decides what to do with a message that never fits


def test_transformers_chat_template_parity_when_available_offline():
    """Renders the Gemma 3 chat template shipped in a Hugging Face tokenizer
    config, if one is in the local Hugging Face cache (nothing is downloaded),
    and compares (without its leading <bos>)."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    hub = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    template = None
    for config in sorted(hub.glob("models--google--gemma-3*/snapshots/*/tokenizer_config.json")):
        template = json.loads(config.read_text()).get("chat_template")
        if template:
            break
    if not template:
        pytest.skip("no Gemma 3 tokenizer_config.json in the local Hugging Face cache")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    compiled = environment.from_string(template)
    conversations = [
        [user("What is Cramer's Rule?")],
        [user("knock knock"), assistant("who is there"), user(" Laurence ")],
        [{"role": "system", "content": "Only reply like a pirate."}, user("Hi"),
         assistant("Arrr"), user("Bye")],
    ]
    for messages in conversations:
        rendered = compiled.render(messages=messages, bos_token="<bos>",
                                   add_generation_prompt=True)
        assert rendered == "<bos>" + chat_template(messages)


def test_module_needs_no_keras():
    # chat.py is plain Python, so the CLI can use it before Keras loads.
    source = Path(chat.__file__).read_text()
    assert "import keras" not in source
