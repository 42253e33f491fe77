"""FunctionGemma's function calling: tool declarations in, calls out.

FunctionGemma (preset ``function_gemma_instruct_270m``) reads the tools it
may call in a ``developer`` turn, each written in its own compact syntax
(not JSON): strings between ``<escape>`` tokens, types in capitals, keys
unquoted, and answers with calls in the same syntax:

    <start_of_turn>developer
    You are a model that can do function calling with the following functions<start_function_declaration>declaration:get_weather{description:<escape>Get current weather for a location<escape>,parameters:{properties:{location:{description:<escape>City name<escape>,type:<escape>STRING<escape>}},required:[<escape>location<escape>],type:<escape>OBJECT<escape>}}<end_function_declaration><end_of_turn>
    <start_of_turn>user
    What's the weather in Paris?<end_of_turn>
    <start_of_turn>model
    <start_function_call>call:get_weather{location:<escape>Paris<escape>}<end_function_call>

``function_calling_prompt(messages, tools)`` writes the prompt (tools as
JSON-schema dicts, as for transformers' ``apply_chat_template(tools=...)``);
``parse_function_calls(text)`` turns the model's answer into
``[{"name": "get_weather", "arguments": {"location": "Paris"}}]``;
``format_function_response`` writes a tool's result back for the model.
Generation should stop at ``STOP_TOKENS`` (``function_call_stop_token_ids``).

This module imports nothing heavy (no Keras).
"""

import json
import re

ESCAPE = "<escape>"
START_DECLARATION = "<start_function_declaration>"
END_DECLARATION = "<end_function_declaration>"
START_CALL = "<start_function_call>"
END_CALL = "<end_function_call>"
START_RESPONSE = "<start_function_response>"
END_RESPONSE = "<end_function_response>"
# The card's developer sentence that switches the model to function calling.
DEVELOPER_PROMPT = "You are a model that can do function calling with the following functions"
# Where generation should stop: the model would next read a tool's response
# (or end its turn). <end_function_call> is not one, so that it stays in the
# text and parse_function_calls sees a complete call.
STOP_TOKENS = (START_RESPONSE, "<end_of_turn>")
_SCHEMA_KEYS = ("description", "enum", "items", "properties", "required", "type")


def _escaped(text):
    return f"{ESCAPE}{text}{ESCAPE}"


def _schema(schema, where):
    """A JSON-schema dict in FunctionGemma's syntax: keys in alphabetical
    order, as the chat template writes them, types in capitals."""
    if not isinstance(schema, dict):
        raise TypeError(f"{where}: a schema must be a dict, got {type(schema).__name__}.")
    parts = []
    for key in sorted(k for k in schema if k in _SCHEMA_KEYS):
        value = schema[key]
        if key == "type":
            parts.append(f"type:{_escaped(str(value).upper())}")
        elif key == "description":
            parts.append(f"description:{_escaped(value)}")
        elif key in ("enum", "required"):
            parts.append(f"{key}:[{','.join(_escaped(v) for v in value)}]")
        elif key == "items":
            parts.append(f"items:{_schema(value, where + '.items')}")
        else:  # properties
            fields = ",".join(
                f"{name}:{_schema(value[name], f'{where}.{name}')}" for name in sorted(value)
            )
            parts.append(f"properties:{{{fields}}}")
    return "{" + ",".join(parts) + "}"


def function_declaration(tool):
    """One tool in FunctionGemma's syntax, between the declaration tokens.

    ``tool`` is ``{"type": "function", "function": {...}}`` or the inner
    ``{"name", "description", "parameters"}`` dict (JSON schema).
    """
    if isinstance(tool, dict) and tool.get("type") == "function" and "function" in tool:
        tool = tool["function"]
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
        raise ValueError(f"A tool needs a 'name' string; got {tool!r}.")
    name = tool["name"]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
        raise ValueError(f"Tool name {name!r} must be an identifier (letters, digits, _).")
    parts = [f"description:{_escaped(tool.get('description', ''))}"]
    if tool.get("parameters"):
        parts.append(f"parameters:{_schema(tool['parameters'], name)}")
    return f"{START_DECLARATION}declaration:{name}{{{','.join(parts)}}}{END_DECLARATION}"


def function_calling_prompt(messages, tools, add_generation_prompt=True):
    """The FunctionGemma prompt for a conversation and the tools it may call.

    ``messages``: ``{"role", "content"}`` dicts; a first ``system`` or
    ``developer`` message opens the developer turn (default: the card's
    ``DEVELOPER_PROMPT``), followed by the declarations; then alternating
    ``user`` and ``assistant``/``model`` turns. Returns text without a
    leading ``<bos>`` (``generate`` adds it).
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("function_calling_prompt() needs a non-empty list of messages.")
    tools = [tools] if isinstance(tools, dict) else list(tools or [])
    messages = list(messages)
    developer = DEVELOPER_PROMPT if tools else None
    if messages[0].get("role") in ("system", "developer"):
        developer = messages.pop(0)["content"].strip()
    parts = []
    if developer is not None or tools:
        declarations = "".join(function_declaration(t) for t in tools)
        parts.append(f"<start_of_turn>developer\n{developer or ''}{declarations}<end_of_turn>\n")
    roles = {"user": "user", "assistant": "model", "model": "model"}
    for message in messages:
        role = roles.get(message.get("role"))
        if role is None:
            raise ValueError(
                f"Unknown role {message.get('role')!r}: use system/developer "
                "(first), user, assistant or model."
            )
        parts.append(f"<start_of_turn>{role}\n{message['content'].strip()}<end_of_turn>\n")
    if add_generation_prompt:
        parts.append("<start_of_turn>model\n")
    return "".join(parts)


def _value(value):
    if isinstance(value, str):
        return _escaped(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    raise TypeError(f"Cannot write a {type(value).__name__} in a function call.")


def format_function_call(name, arguments):
    """A call in FunctionGemma's syntax (what the model writes)."""
    return f"{START_CALL}call:{name}{_value(dict(arguments))}{END_CALL}"


def format_function_response(name, result):
    """A tool's result (a dict) written back for the model to read."""
    return f"{START_RESPONSE}response:{name}{_value(dict(result))}{END_RESPONSE}"


_CALL = re.compile(re.escape(START_CALL) + r"call:([A-Za-z_][A-Za-z0-9_.-]*)(\{.*?)"
                   + re.escape(END_CALL), re.S)


def parse_function_calls(text):
    """The calls in a model's answer: ``[{"name": str, "arguments": dict}]``.

    Strings come back as ``str``, numbers as ``int``/``float``, ``true``/
    ``false``/``null`` as ``bool``/``None``, ``{...}``/``[...]`` as dicts and
    lists. A call without ``<end_function_call>`` (cut by ``max_length``)
    is an error, as is malformed syntax; text outside calls is ignored.
    """
    if not isinstance(text, str):
        raise TypeError(f"Expected the model's text, got {type(text).__name__}.")
    calls = []
    for match in _CALL.finditer(text):
        arguments, end = _Parser(match.group(2)).parse()
        if end != len(match.group(2)):
            raise ValueError(
                f"Malformed function call {match.group(0)!r}: unexpected "
                f"{match.group(2)[end:]!r} after the arguments."
            )
        calls.append({"name": match.group(1), "arguments": arguments})
    if text.count(START_CALL) != len(calls):
        raise ValueError(
            f"The text has {text.count(START_CALL)} {START_CALL} but only "
            f"{len(calls)} complete call(s): a call was cut off (raise "
            "max_length) or is malformed."
        )
    return calls


class _Parser:
    """A recursive-descent reader of FunctionGemma's value syntax."""

    def __init__(self, text):
        self.text, self.at = text, 0

    def parse(self):
        return self.value(), self.at

    def error(self, expected):
        raise ValueError(
            f"Malformed function call arguments {self.text!r}: expected "
            f"{expected} at character {self.at}."
        )

    def value(self):
        text = self.text
        if text.startswith(ESCAPE, self.at):
            end = text.find(ESCAPE, self.at + len(ESCAPE))
            if end < 0:
                self.error(f"a closing {ESCAPE}")
            value = text[self.at + len(ESCAPE):end]
            self.at = end + len(ESCAPE)
            return value
        if text.startswith("{", self.at):
            return self.container("{", "}", keyed=True)
        if text.startswith("[", self.at):
            return self.container("[", "]", keyed=False)
        match = re.compile(r"[^,}\]]*").match(text, self.at)
        word = match.group(0).strip()
        self.at = match.end()
        if word in ("true", "false"):
            return word == "true"
        if word == "null":
            return None
        try:
            return int(word)
        except ValueError:
            pass
        try:
            return float(word)
        except ValueError:
            pass
        if not word:
            self.error("a value")
        return word  # an unescaped bare word, e.g. an enum value

    def container(self, open_, close, keyed):
        self.at += 1
        result = {} if keyed else []
        if self.text.startswith(close, self.at):
            self.at += 1
            return result
        while True:
            if keyed:
                colon = self.text.find(":", self.at)
                if colon < 0:
                    self.error("'key:'")
                key = self.text[self.at:colon].strip()
                if not key:
                    self.error("a key")
                self.at = colon + 1
                result[key] = self.value()
            else:
                result.append(self.value())
            if self.text.startswith(",", self.at):
                self.at += 1
            elif self.text.startswith(close, self.at):
                self.at += 1
                return result
            else:
                self.error(f"',' or '{close}'")


def function_call_stop_token_ids(tokenizer):
    """Ids at which to stop generating a call (``STOP_TOKENS`` and ``<eos>``)."""
    ids = []
    for token in STOP_TOKENS:
        try:
            ids.append(tokenizer.token_to_id(token))
        except ValueError:
            raise ValueError(
                f"The model's vocabulary has no {token} token; load the "
                "function_gemma_instruct_270m preset for function calling."
            ) from None
    return ids + [tokenizer.eos_token_id]
