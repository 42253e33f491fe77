"""What every Gemma GGUF architecture shares: block tensor names and
metadata lookups.

Used by the Gemma 1-3 reader (``gguf.py``) and the Gemma 4 one
(``gguf_gemma4.py``), and through them by the GGUF writer, so that each
name is spelled once.
"""

import numpy as np

# GGUF block tensor -> (our layer path, conversion). "kernel" transposes,
# "norm" subtracts the 1 llama.cpp adds (Gemma 1-3; Gemma 4's norms are
# stored as they multiply).
BLOCK_TENSORS = {
    "attn_norm": ("pre_attention_norm/scale", "norm"),
    "attn_q": ("attention/query/kernel", "kernel"),
    "attn_k": ("attention/key/kernel", "kernel"),
    "attn_v": ("attention/value/kernel", "kernel"),
    "attn_output": ("attention/output/kernel", "kernel"),
    "attn_q_norm": ("attention/query_norm/scale", "norm"),
    "attn_k_norm": ("attention/key_norm/scale", "norm"),
    "post_attention_norm": ("post_attention_norm/scale", "norm"),
    "ffn_norm": ("pre_feedforward_norm/scale", "norm"),
    "ffn_gate": ("feedforward_gate/kernel", "kernel"),
    "ffn_up": ("feedforward_up/kernel", "kernel"),
    "ffn_down": ("feedforward_down/kernel", "kernel"),
    "post_ffw_norm": ("post_feedforward_norm/scale", "norm"),
}

MISSING = object()
_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}


def metadata_value(metadata, key, path, default=MISSING, kind=int):
    """``metadata[key]`` as an ``int``, ``float`` or ``str`` (``kind``).

    ``default`` when absent (a ValueError naming the key if there is none).
    A per-layer array must hold one value for every layer.
    """
    value = metadata.get(key, MISSING)
    if value is MISSING:
        if default is MISSING:
            raise ValueError(f"{path}: GGUF metadata lacks `{key}`.")
        return default
    if isinstance(value, (list, np.ndarray)) and kind is not str:
        values = set(np.asarray(value).tolist())
        if len(values) != 1:
            raise ValueError(
                f"{path}: `{key}` varies across layers ({sorted(values)}); "
                "keras_gemma needs the same value in every layer."
            )
        value = values.pop()
    return _of_kind(value, key, path, kind)


def per_layer_values(metadata, key, count, path, default=MISSING):
    """``metadata[key]`` as a list of ``count`` integers: an array with one
    value per layer, or one value for them all."""
    value = metadata.get(key, MISSING)
    if value is MISSING:
        if default is MISSING:
            raise ValueError(f"{path}: GGUF metadata lacks `{key}`.")
        value = default
    if isinstance(value, (list, np.ndarray)):
        values = np.asarray(value).tolist()
        if len(values) != count:
            raise ValueError(
                f"{path}: `{key}` has {len(values)} values but the model has "
                f"{count} layers."
            )
        return [_of_kind(v, key, path, int) for v in values]
    return [_of_kind(value, key, path, int)] * count


def vocabulary_size(metadata, architecture, path):
    """``{architecture}.vocab_size``, else the number of vocabulary tokens."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    size = metadata_value(metadata, f"{architecture}.vocab_size", path,
                          len(tokens) if tokens is not None else None)
    if size is None:
        raise ValueError(
            f"{path}: GGUF metadata gives no vocabulary size "
            f"(`{architecture}.vocab_size` or `tokenizer.ggml.tokens`)."
        )
    return size


def _of_kind(value, key, path, kind):
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int and numeric and value == int(value):
        return int(value)
    if kind is float and numeric:
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise ValueError(
        f"{path}: GGUF metadata `{key}` is {value!r}; expected {_KIND_NAMES[kind]}."
    )
