"""The OpenAI API's request fields and response shapes, checked by hand.

Every bad request becomes a ``RequestError`` whose message says what was
wrong and what would do, sent as OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``. Fields this server does
not implement are refused when they would change the answer (``n`` > 1,
``logprobs``, penalties, tools) and ignored when they would not (``user``).

Pure Python: no Keras, no HTTP framework.
"""

import json
import math
import time
import uuid
from dataclasses import dataclass
from dataclasses import field

MAX_STOP_STRINGS = 4


class RequestError(Exception):
    """A request the server will not serve, as an HTTP status and an OpenAI error."""

    def __init__(self, message, param=None, code=None, status=400,
                 type="invalid_request_error"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
        self.type = type

    def body(self):
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message, type="invalid_request_error", param=None, code=None):
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class Sampling:
    """The generation settings of one request, validated."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False

    def scheduler_arguments(self):
        greedy = self.temperature == 0
        return {
            "temperature": self.temperature,
            "top_k": 0 if greedy else self.top_k,
            "top_p": 1.0 if greedy else self.top_p,
            "seed": self.seed,
            "stop": self.stop,
        }


def parse_json(body):
    """The request body as a JSON object, or a RequestError."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise RequestError(
            f"The request body is not valid JSON ({error}). Send a JSON object, "
            'e.g. {"model": "...", "prompt": "Hello"}.', code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise RequestError(
            f"The request body must be a JSON object, got a JSON {_json_type(value)}.",
            code="invalid_json",
        )
    return value


def check_model(body, model_name):
    model = _required(body, "model", str, "a string")
    if model != model_name:
        raise RequestError(
            f"The model `{model}` does not exist. This server serves `{model_name}` "
            "(see GET /v1/models).", param="model", code="model_not_found", status=404,
        )
    return model


def completion_request(body, model_name, max_batch):
    """``POST /v1/completions``: (prompts, Sampling)."""
    check_model(body, model_name)
    prompt = _required(body, "prompt", (str, list), "a string or a list of strings")
    if isinstance(prompt, str):
        prompts = [prompt]
    else:
        if not prompt:
            raise RequestError("`prompt` is an empty list; send at least one string.",
                               param="prompt")
        if not all(isinstance(p, str) for p in prompt):
            raise RequestError(
                "`prompt` must be a string or a list of strings; token-id prompts are "
                "not supported here, send the text.", param="prompt")
        if len(prompt) > max_batch:
            raise RequestError(
                f"`prompt` holds {len(prompt)} prompts; this server takes at most "
                f"{max_batch} per request (its batch size).", param="prompt")
        prompts = prompt
    _refuse_unsupported(body, {"echo": (None, False), "suffix": (None, ""),
                               "best_of": (None, 1)})
    return prompts, _sampling(body, default_max_tokens=16)


def chat_request(body, model_name):
    """``POST /v1/chat/completions``: (messages, Sampling)."""
    check_model(body, model_name)
    messages = _required(body, "messages", list, "a list of messages")
    if not messages:
        raise RequestError("`messages` is empty; send at least one user message.",
                           param="messages")
    plain = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(
                f"`{where}` must be an object with `role` and `content`, got a JSON "
                f"{_json_type(message)}.", param=where)
        for key in ("role", "content"):
            if key not in message:
                raise RequestError(f"`{where}` lacks `{key}`.", param=f"{where}.{key}")
        if not isinstance(message["role"], str):
            raise RequestError(f"`{where}.role` must be a string.", param=f"{where}.role")
        plain.append({"role": message["role"],
                      "content": _message_text(message["content"], where)})
    _refuse_unsupported(body, {"tools": (None, []), "functions": (None, []),
                               "tool_choice": (None, "none", "auto"),
                               "response_format": (None, {"type": "text"})})
    max_tokens = body.get("max_completion_tokens")
    sampling = _sampling(body, default_max_tokens=None)
    if max_tokens is not None:
        sampling.max_tokens = _positive_int(max_tokens, "max_completion_tokens")
    return plain, sampling


def _message_text(content, where):
    """Message content: a string, or a list of text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise RequestError(
                    f"`{where}.content[{index}]` is not a text part "
                    '({"type": "text", "text": "..."}); this model reads text only.',
                    param=f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(
        f"`{where}.content` must be a string (or a list of text parts), got a JSON "
        f"{_json_type(content)}.", param=f"{where}.content")


def _sampling(body, default_max_tokens):
    _refuse_unsupported(body, {
        "n": (None, 1), "logprobs": (None, False, 0), "top_logprobs": (None, 0),
        "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
        "logit_bias": (None, {}),
    })
    sampling = Sampling(max_tokens=default_max_tokens)
    if body.get("max_tokens") is not None:
        sampling.max_tokens = _positive_int(body["max_tokens"], "max_tokens")
    if body.get("temperature") is not None:
        sampling.temperature = _number_in(body["temperature"], "temperature", 0.0, 2.0)
    if body.get("top_p") is not None:
        sampling.top_p = _number_in(body["top_p"], "top_p", 0.0, 1.0)
    if body.get("top_k") is not None:
        top_k = _integer(body["top_k"], "top_k")
        if top_k < -1:
            raise RequestError(f"`top_k` must be >= 0 (or -1 for no limit), got {top_k}.",
                               param="top_k")
        sampling.top_k = max(top_k, 0)
    if body.get("seed") is not None:
        sampling.seed = _integer(body["seed"], "seed")
        if sampling.seed < 0:
            raise RequestError(f"`seed` must be >= 0, got {sampling.seed}.", param="seed")
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError("`stop` must be a string or a list of strings.", param="stop")
        if len(stop) > MAX_STOP_STRINGS:
            raise RequestError(
                f"`stop` holds {len(stop)} strings; at most {MAX_STOP_STRINGS} are allowed.",
                param="stop")
        sampling.stop = [s for s in stop if s]
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise RequestError(f"`stream` must be true or false, got {stream!r:.40}.",
                               param="stream")
        sampling.stream = stream
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise RequestError('`stream_options` must be {"include_usage": true|false}.',
                               param="stream_options")
        sampling.include_usage = options.get("include_usage", False)
    return sampling


def check_length(sampling, prompt_tokens, context_length, param):
    """Fills in or checks ``max_tokens`` against the context."""
    room = context_length - prompt_tokens
    if room < 1:
        raise RequestError(
            f"This model's maximum context length is {context_length} tokens (prompt "
            f"and completion), but the prompt alone is {prompt_tokens} tokens; a prompt "
            f"may take at most {context_length - 1}. Shorten the prompt.",
            param=param, code="context_length_exceeded")
    wanted = room if sampling.max_tokens is None else sampling.max_tokens
    if wanted > room:
        raise RequestError(
            f"This model's maximum context length is {context_length} tokens; your "
            f"request needs {prompt_tokens + wanted} ({prompt_tokens} in the prompt, "
            f"{wanted} for the completion). Lower `max_tokens` to at most {room}, or "
            f"shorten the prompt to at most {max(context_length - wanted, 1)} tokens.",
            param=param, code="context_length_exceeded")
    return wanted


def check_top_k(sampling, max_top_k):
    if sampling.top_k > max_top_k:
        raise RequestError(
            f"`top_k` is {sampling.top_k}; this server samples among at most "
            f"{max_top_k} candidates. Use 0 for no limit.", param="top_k")


def _required(body, name, types, description):
    if name not in body or body[name] is None:
        raise RequestError(f"The request lacks the required field `{name}`.", param=name,
                           code="missing_field")
    value = body[name]
    if not isinstance(value, types) or isinstance(value, bool):
        raise RequestError(f"`{name}` must be {description}, got a JSON "
                           f"{_json_type(value)}.", param=name)
    return value


def _integer(value, name):
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"`{name}` must be an integer, got {value!r:.40}.", param=name)
    return value


def _positive_int(value, name):
    value = _integer(value, name)
    if value < 1:
        raise RequestError(f"`{name}` must be at least 1, got {value}.", param=name)
    return value


def _number_in(value, name, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"`{name}` must be a number, got {value!r:.40}.", param=name)
    if not low <= value <= high:
        raise RequestError(f"`{name}` must lie in [{low:g}, {high:g}], got {value}.",
                           param=name)
    return float(value)


def _refuse_unsupported(body, allowed):
    for name, values in allowed.items():
        if name in body and not any(_same(body[name], value) for value in values):
            raise RequestError(
                f"`{name}`={json.dumps(body[name])[:60]} is not supported by this "
                "server; leave it out.", param=name, code="unsupported_parameter")


def _same(a, b):
    """JSON equality, with true/false distinct from 1/0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _json_type(value):
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


# -- responses ------------------------------------------------------------------


def new_id(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens, completion_tokens):
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(response_id, model, choices, usage_counts):
    """``choices``: (text, finish_reason) per prompt."""
    return {
        "id": response_id, "object": "text_completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                    for i, (text, reason) in enumerate(choices)],
        "usage": usage_counts,
    }


def chat_response(response_id, model, text, finish_reason, usage_counts):
    return {
        "id": response_id, "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_counts,
    }


def completion_chunk(response_id, model, index, text, finish_reason=None):
    return {
        "id": response_id, "object": "text_completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": index, "text": text, "logprobs": None,
                     "finish_reason": finish_reason}],
    }


def chat_chunk(response_id, model, delta, finish_reason=None):
    return {
        "id": response_id, "object": "chat.completion.chunk", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None,
                     "finish_reason": finish_reason}],
    }


def usage_chunk(response_id, model, kind, usage_counts):
    return {"id": response_id, "object": kind, "created": int(time.time()),
            "model": model, "choices": [], "usage": usage_counts}


def sse(data):
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def models_list(model_name, created):
    return {"object": "list", "data": [model_card(model_name, created)]}


def model_card(model_name, created):
    return {"id": model_name, "object": "model", "created": created,
            "owned_by": "keras-gemma"}
