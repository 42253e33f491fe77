"""Checks of user input at the boundary: text and token ids.

Text and token ids come from users (and, through a server, from anyone), so
they are checked once where they enter: the tokenizer, the preprocessor,
``chat_template``, ``generate`` and ``score``, and the model's ``call``. A
server can call the same functions on a request before queueing it.

- Text must be a sequence of Unicode scalar values: a lone surrogate
  (``"\\ud800"``, what a broken UTF-16 decode or ``errors="surrogateescape"``
  leaves behind) cannot be encoded as UTF-8, so SentencePiece would fail on
  it with a binding error. ``check_text`` names the position instead.
- Token ids must be integers: a float array would be truncated to ids
  silently, a bool array read as ids 0 and 1. ``check_token_ids`` refuses
  them with a ``TypeError`` saying what was given.

Example:

>>> check_text("Alice \\ud800 moved")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: The text is not valid Unicode: it holds a lone surrogate U+D800 at position 6 ...
>>> check_token_ids([[2, 17, 42]]).dtype
dtype('int64')
"""

import numpy as np


def check_text(text, what="The text"):
    """Returns ``text`` if it is a ``str`` of Unicode scalar values.

    Raises ``ValueError`` naming the first lone surrogate's position, and
    ``TypeError`` for a non-string. ``bytes`` are decoded as UTF-8 (a
    ``ValueError`` with the offset of the first invalid byte).
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{what} is bytes that are not valid UTF-8 (byte "
                f"{bytes(text)[error.start]:#04x} at offset {error.start}). Pass a "
                "str, or decode the bytes with the encoding they were written in."
            ) from None
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        raise ValueError(
            f"{what} is not valid Unicode: it holds a lone surrogate U+{code:04X} "
            f"at position {error.start} (near {text[max(0, error.start - 10):error.start + 10]!r}), "
            "which a broken decode leaves behind. Fix the source, or replace "
            "it: text.encode('utf-8', 'replace').decode('utf-8')."
        ) from None
    return text


def check_texts(texts, what="Text"):
    """``check_text`` for each string of a list, naming its index."""
    return [check_text(text, f"{what} {index}") for index, text in enumerate(texts)]


# numpy dtype kinds: b bool, i/u integers, f float, c complex, O object, U/S str.
_KIND_NAMES = {"b": "bool", "f": "float", "c": "complex", "O": "object",
               "U": "string", "S": "bytes", "V": "raw bytes", "M": "datetime",
               "m": "timedelta"}


def check_token_ids(token_ids, what="token_ids"):
    """``token_ids`` as an integer numpy array, or a ``TypeError``.

    Lists, numpy arrays and backend tensors are accepted if their dtype is
    an integer one; a float, bool, object or string array is refused, with
    what was given. A ragged list is a ``ValueError``.
    """
    if hasattr(token_ids, "dtype") and not isinstance(token_ids, np.ndarray):
        check_token_dtype(token_ids, what)
        import keras

        return np.asarray(keras.ops.convert_to_numpy(token_ids))
    try:
        array = np.asarray(token_ids)
    except ValueError:
        raise ValueError(
            f"{what} must be a rectangular integer array (batch, length); got "
            "rows of different lengths. Right-pad them and pass a padding_mask."
        ) from None
    if array.dtype.kind not in "iu":
        raise TypeError(_token_type_message(array.dtype, what, _example(array)))
    return array


def check_model_inputs(inputs, what="token_ids"):
    """Integer token ids in a model-ready dict (or array), before Keras runs.

    Keras converts numpy inputs itself, where an object array fails with a
    backend message; this says what was wrong first.
    """
    token_ids = inputs.get("token_ids") if isinstance(inputs, dict) else inputs
    if isinstance(token_ids, (list, tuple, np.ndarray)):
        check_token_ids(token_ids, what)
    elif hasattr(token_ids, "dtype") and hasattr(token_ids, "shape"):
        check_token_dtype(token_ids, what)


def check_token_dtype(token_ids, what="token_ids"):
    """Refuses a tensor (symbolic or not) whose dtype is not an integer one."""
    import keras

    dtype = keras.backend.standardize_dtype(token_ids.dtype)
    if not (dtype.startswith("int") or dtype.startswith("uint")):
        raise TypeError(_token_type_message(dtype, what))


def _example(array):
    if array.size == 0:
        return ""
    first = array.reshape(-1)[0]
    first = first.item() if hasattr(first, "item") else first
    return f" (first value {first!r:.40})"


def _token_type_message(dtype, what, example=""):
    if isinstance(dtype, str):  # a Keras dtype name, from a tensor
        kind = "float" if "float" in dtype else dtype
    else:
        kind = _KIND_NAMES.get(np.dtype(dtype).kind, str(dtype))
    return (
        f"{what} must be integer token ids, got a {kind} array (dtype {dtype})"
        f"{example}. Tokenize text with the tokenizer or preprocessor; if "
        "the values are ids stored as another type, convert them with "
        "np.asarray(ids, 'int32') after checking they are whole numbers."
    )
