"""Gemma's chat format: ``chat_template`` and keeping a conversation in context.

Gemma's instruction-tuned models were trained on turns written as

    <start_of_turn>user
    knock knock<end_of_turn>
    <start_of_turn>model
    who is there<end_of_turn>
    <start_of_turn>user
    Gemma<end_of_turn>
    <start_of_turn>model

(Google's "Gemma formatting and system instructions" page). There are two
roles, ``user`` and ``model``, and no system role: Google's convention,
which the Gemma 3 chat template in ``transformers`` implements, is to put the
system text at the start of the first user turn, followed by a blank line.

``chat_template`` gives the same text as ``transformers``'
``tokenizer.apply_chat_template(messages, tokenize=False)`` for Gemma 3
(content stripped of surrounding whitespace, as its ``| trim`` does), except
that it does **not** start with ``<bos>``: ``generate``, ``stream`` and the
preprocessor add the ``<bos>`` token themselves, and the text ``"<bos>"``
would not even become that token (the tokenizer only maps the turn markers
written in text to their ids). So pass the string as it is:

    prompt = keras_gemma.chat_template([{"role": "user", "content": "Hi!"}])
    gemma.generate(prompt, max_length=128)   # one <bos>, stops at <end_of_turn>

Gemma 4 (``family="gemma4"``) writes turns as ``<|turn>role\\n...<turn|>\\n``,
has a real ``system`` role (its own turn, first), and a thinking mode: with
``enable_thinking=True`` the system turn starts with ``<|think|>`` and the
model writes its reasoning in a ``<|channel>thought\\n...<channel|>`` block
before the answer. ``chat_template`` gives the text of Google's Gemma 4
``chat_template.jinja`` (revisions of 2026-04 to 2026-07 agree on it) for
string contents: reasoning blocks in earlier model turns are dropped, as the
template's ``strip_thinking`` does; the 26B-A4B and 31B templates close an
empty thought channel after the generation prompt when thinking is off,
which ``empty_thought_channel=True`` reproduces (E2B and E4B do not). Tools,
images and audio are not supported. ``chat_family(tokenizer)`` tells which
format a tokenizer's vocabulary was made for.

This module imports nothing heavy (no Keras).
"""

import re
from collections.abc import Mapping

from keras_gemma.validation import check_text

ROLES = {"user": "user", "assistant": "model", "model": "model", "system": "system"}
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
# Gemma 4's markers.
GEMMA4_START_OF_TURN = "<|turn>"
GEMMA4_END_OF_TURN = "<turn|>"
THINK = "<|think|>"
START_OF_CHANNEL = "<|channel>"
END_OF_CHANNEL = "<channel|>"
EMPTY_THOUGHT = f"{START_OF_CHANNEL}thought\n{END_OF_CHANNEL}"
# Preset families -> chat format. Gemma 1, 2 and 3 share one.
FAMILIES = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma4": "gemma4"}


def chat_family(tokenizer):
    """``"gemma4"`` if ``tokenizer``'s turn markers are Gemma 4's, else ``"gemma"``."""
    if getattr(tokenizer, "start_of_turn_token", None) == GEMMA4_START_OF_TURN:
        return "gemma4"
    return "gemma"


def chat_format(tokenizer, model_name=""):
    """The ``chat_template`` options for a model: its family, from the
    tokenizer, and for Gemma 4 whether ``model_name`` (a preset name or
    folder, e.g. ``gemma4_instruct_31b``, ``gemma-4-26B-A4B-it``) is one of
    the sizes whose template closes an empty thought channel."""
    family = chat_family(tokenizer)
    if family != "gemma4":
        return {"family": family}
    large = re.search(r"(?<![0-9])(26|31)b", str(model_name).lower()) is not None
    return {"family": family, "empty_thought_channel": large}


def _validate(messages):
    """(system text or None, [(gemma role, content), ...]) or a ValueError."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)):
        raise ValueError(
            "chat_template() takes a list of messages such as "
            "[{'role': 'user', 'content': 'Hello'}], got "
            f"{type(messages).__name__}."
        )
    if not messages:
        raise ValueError("chat_template() got no messages; pass at least one user message.")
    system, turns = None, []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise ValueError(
                f"{where} must be a dict with 'role' and 'content', got "
                f"{type(message).__name__}: {message!r:.60}."
            )
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise ValueError(
                f"{where} lacks {' and '.join(map(repr, missing))}: {dict(message)!r:.80}."
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(
                f"{where} has the unknown role {role!r}; use 'user', "
                "'assistant' (or 'model') or 'system'."
            )
        if not isinstance(content, str):
            raise ValueError(
                f"{where} ({role}) has {type(content).__name__} content; "
                "Gemma chat content must be a string."
            )
        check_text(content, f"{where} ({role}) content")
        if role == "system":
            if index != 0:
                raise ValueError(
                    f"{where}: a system message may only come first (Gemma "
                    "puts its text at the start of the first user turn)."
                )
            system = content
            continue
        expected = "user" if len(turns) % 2 == 0 else "model"
        if ROLES[role] != expected:
            previous = turns[-1][0] if turns else "the start"
            raise ValueError(
                f"{where} is a {role!r} message after {previous!r}: turns must "
                "alternate user, model, user, ... starting with user. Join "
                "consecutive messages of one role into one."
            )
        turns.append((ROLES[role], content))
    if not turns:
        raise ValueError(
            "chat_template() needs at least one user message after the system message."
        )
    return system, turns


def chat_template(messages, add_generation_prompt=True, family="gemma",
                  enable_thinking=False, empty_thought_channel=False):
    """Formats a conversation in Gemma's chat format, ready for ``generate``.

    Args:
        messages: a list of ``{"role": ..., "content": str}`` dicts. Roles:
            ``"user"``, ``"assistant"`` (or Gemma's own name, ``"model"``)
            and, first only, ``"system"``: for Gemma 1-3 its text is put at
            the start of the first user turn followed by a blank line; Gemma
            4 gives it a turn of its own. User and model turns must
            alternate, starting with the user.
        add_generation_prompt: end with the model's turn marker
            (``"<start_of_turn>model\\n"``, Gemma 4: ``"<|turn>model\\n"``),
            so the model writes the next reply (the conversation must then
            end with a user turn). False formats a finished conversation,
            e.g. for fine-tuning.
        family: the preset family, ``"gemma"``, ``"gemma2"``, ``"gemma3"``
            (one format) or ``"gemma4"``; see ``chat_family``.
        enable_thinking: Gemma 4 only: ask the model to reason first (its
            reply then starts with a ``<|channel>thought`` block).
        empty_thought_channel: Gemma 4 only: with thinking off, end the
            generation prompt with an empty thought channel, as the 26B-A4B
            and 31B templates do.

    Returns the text, without a leading ``<bos>`` (``generate`` adds it).
    Raises ``ValueError`` for an empty list, an unknown role, non-string
    content, a misplaced system message or turns that do not alternate.

    Example:

    >>> chat_template([{"role": "user", "content": "knock knock"},
    ...                {"role": "assistant", "content": "who is there"},
    ...                {"role": "user", "content": "Gemma"}])
    '<start_of_turn>user\\nknock knock<end_of_turn>\\n<start_of_turn>model\\nwho is there<end_of_turn>\\n<start_of_turn>user\\nGemma<end_of_turn>\\n<start_of_turn>model\\n'
    >>> chat_template([{"role": "system", "content": "Be brief."},
    ...                {"role": "user", "content": "Hi"}], family="gemma4")
    '<|turn>system\\nBe brief.<turn|>\\n<|turn>user\\nHi<turn|>\\n<|turn>model\\n'
    """
    system, turns = _validate(messages)
    if add_generation_prompt and turns[-1][0] == "model":
        raise ValueError(
            "The conversation ends with a model turn, so a generation prompt "
            "would start a second model turn in a row. End with a user "
            "message, or pass add_generation_prompt=False."
        )
    if FAMILIES.get(family) is None:
        raise ValueError(
            f"Unknown chat family {family!r}; use one of {', '.join(FAMILIES)}."
        )
    if FAMILIES[family] == "gemma4":
        return _gemma4_template(
            system, turns, add_generation_prompt, enable_thinking, empty_thought_channel
        )
    if enable_thinking or empty_thought_channel:
        raise ValueError(
            f"enable_thinking and empty_thought_channel are Gemma 4 options; the "
            f"{family!r} chat format has no thinking mode."
        )
    parts = []
    for index, (role, content) in enumerate(turns):
        prefix = system + "\n\n" if index == 0 and system is not None else ""
        parts.append(f"{START_OF_TURN}{role}\n{prefix}{content.strip()}{END_OF_TURN}\n")
    if add_generation_prompt:
        parts.append(f"{START_OF_TURN}model\n")
    return "".join(parts)


def _gemma4_template(system, turns, add_generation_prompt, enable_thinking,
                     empty_thought_channel):
    parts = []
    if system is not None or enable_thinking:
        think = THINK + "\n" if enable_thinking else ""
        text = system.strip() if system is not None else ""
        parts.append(f"{GEMMA4_START_OF_TURN}system\n{think}{text}{GEMMA4_END_OF_TURN}\n")
    for role, content in turns:
        text = _strip_thinking(content) if role == "model" else content.strip()
        parts.append(f"{GEMMA4_START_OF_TURN}{role}\n{text}{GEMMA4_END_OF_TURN}\n")
    if add_generation_prompt:
        parts.append(f"{GEMMA4_START_OF_TURN}model\n")
        if empty_thought_channel and not enable_thinking:
            parts.append(EMPTY_THOUGHT)
    return "".join(parts)


def _strip_thinking(text):
    """``text`` without its ``<|channel>...<channel|>`` blocks, trimmed.

    What the template's ``strip_thinking`` does: of each part before a
    ``<channel|>``, only the text before its ``<|channel>`` is kept.
    """
    kept = []
    for part in text.split(END_OF_CHANNEL):
        kept.append(part.split(START_OF_CHANNEL)[0])
    return "".join(kept).strip()


def fit_conversation(messages, count_tokens, max_tokens, **format_options):
    """Drops the oldest exchanges until the prompt of ``messages`` fits.

    ``messages`` is a conversation for ``chat_template`` that ends with the
    new user message; ``count_tokens(text)`` counts the tokens the model will
    see for a prompt (``<bos>`` included); ``max_tokens`` is how many the
    prompt may take (the context length minus the room kept for the answer).
    A leading system message and the last user message are always kept; the
    oldest user/model pairs go first. ``format_options`` (``family``...) are
    passed to ``chat_template``.

    Returns ``(messages, dropped, tokens)``: the messages kept, the number of
    user/model exchanges dropped, and the kept prompt's token count, which
    may still exceed ``max_tokens`` if the last message (with the system
    text) alone is too long.
    """
    _validate(messages)
    messages = list(messages)
    head = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(head):]
    dropped = 0
    while True:
        tokens = count_tokens(chat_template(head + body, **format_options))
        if tokens <= max_tokens or len(body) <= 1:
            return head + body, dropped, tokens
        body = body[2:]
        dropped += 1
