"""Generative evaluation: batched generation that stops at stop strings,
exact match, numeric-answer extraction and majority voting (maj@k)."""

import collections
import contextlib
import re

import numpy as np

from keras_gemma.evaluation import progress as progress_lib

# Decode this many tokens between checks for stop strings: short enough that
# a batch whose rows have all stopped does not run on long, long enough that
# the host round trip is rare.
DECODE_CHUNK = 16


@contextlib.contextmanager
def sampler_of(model, sampler):
    """Temporarily generate with ``sampler`` (None: keep the model's)."""
    if sampler is None:
        yield
        return
    from keras_gemma import samplers

    previous = model.sampler
    model.sampler = samplers.get(sampler)
    try:
        yield
    finally:
        model.sampler = previous


def _cut_at_stop_strings(text, stop_strings):
    """(text before the first stop string, whether one was found)."""
    cut = len(text)
    for stop in stop_strings:
        position = text.find(stop)
        if position != -1:
            cut = min(cut, position)
    return text[:cut], cut < len(text)


def generate_until(model, prompts, stop_strings=(), max_new_tokens=256,
                   batch_size=8, sampler=None, seed=None, description=None):
    """Continuations of ``prompts``, each cut before its first stop string.

    Prompts are sorted by length and generated ``batch_size`` at a time;
    every ``DECODE_CHUNK`` tokens the new text of each row is checked, and a
    batch ends as soon as every row has met a stop string, a stop token
    (``<eos>``, ``<end_of_turn>``) or ``max_new_tokens``.

    Args:
        model: a ``keras_gemma.GemmaCausalLM`` with a preprocessor.
        prompts: list of strings (``<bos>`` is added).
        stop_strings: strings that end a continuation (not included).
        max_new_tokens: at most this many tokens per continuation.
        sampler: None (the model's sampler, greedy by default) or a sampler
            name/instance for this call only.
        seed: makes random samplers reproducible.

    Returns the continuations (strings, prompt excluded), in input order.
    """
    if model.preprocessor is None:
        raise ValueError("generate_until() needs a model with a preprocessor.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be a positive integer, got {max_new_tokens!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    prompts = list(prompts)
    if not prompts:
        return []
    tokenizer = model.preprocessor.tokenizer
    encoded = [[tokenizer.bos_token_id] + list(ids) for ids in tokenizer.tokenize(prompts)]
    limit = model.preprocessor.sequence_length
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    outputs = [None] * len(prompts)
    stop_ids = model._stop_token_ids("auto")
    with sampler_of(model, sampler), progress_lib.bar(len(prompts), description or "Generating") as advance:
        for start in range(0, len(order), batch_size):
            rows = [int(i) for i in order[start:start + batch_size]]
            texts = _generate_batch(
                model, [encoded[i] for i in rows], stop_strings, max_new_tokens,
                stop_ids, limit, None if seed is None else seed + start,
            )
            for row, text in zip(rows, texts):
                outputs[row] = text
            advance(len(rows))
    return outputs


def _generate_batch(model, encoded, stop_strings, max_new_tokens, stop_ids, limit, seed):
    tokenizer = model.preprocessor.tokenizer
    lengths = [len(ids) for ids in encoded]
    max_length = max(lengths) + max_new_tokens
    if limit is not None and max_length > limit:
        if max(lengths) >= limit:
            raise ValueError(
                f"A prompt is {max(lengths)} tokens long, beyond the model's "
                f"sequence length ({limit}); shorten it or use fewer shots."
            )
        max_length = limit
    token_ids = np.full((len(encoded), max_length), tokenizer.pad_token_id, "int32")
    padding_mask = np.zeros((len(encoded), max_length), bool)
    for row, ids in enumerate(encoded):
        token_ids[row, : len(ids)] = ids
        padding_mask[row, : len(ids)] = True
    # The model's own stepwise decoding (as `stream` uses), so that the
    # batch can stop on stop *strings*, which `generate` knows nothing of.
    state = model._start_generation(token_ids, padding_mask, stop_ids, seed)
    texts = [""] * len(encoded)
    done = [False] * len(encoded)
    while not all(done) and state["index"] < max_length:
        state = model._decode(state, end=min(max_length, state["index"] + DECODE_CHUNK))
        for row, length in enumerate(lengths):
            if done[row]:
                continue
            # Rows with shorter prompts run past their own budget while the
            # longest prompt catches up: cut each at its own max_new_tokens.
            end = min(state["index"], length + max_new_tokens)
            new_ids = [int(i) for i in state["token_ids"][row, length:end]]
            stopped = False
            for position, token in enumerate(new_ids):
                if token in stop_ids:
                    new_ids, stopped = new_ids[:position], True
                    break
            text, hit = _cut_at_stop_strings(tokenizer.detokenize(new_ids) if new_ids else "", stop_strings)
            texts[row] = text
            done[row] = stopped or hit or length + max_new_tokens <= state["index"]
        if state["done"]:
            break
    return texts


# -- scoring the answers --------------------------------------------------------

_NUMBER = r"-?[\d,]*\.?\d+"
_ANSWER_PATTERNS = (
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"[Tt]he (?:final )?answer is[:\s]*\$?\s*(" + _NUMBER + ")"),
)


def extract_number(text):
    """The numeric answer of a GSM8K-style text, as a normalized string.

    Looks for ``#### 42`` first, then ``The answer is 42``, then falls back
    to the last number in the text; commas, a trailing ``.0`` and a leading
    ``$`` are dropped. Returns None if the text holds no number.
    """
    for pattern in _ANSWER_PATTERNS:
        match = pattern.search(text)
        if match:
            return _normalize_number(match.group(1))
    numbers = re.findall(_NUMBER, text)
    return _normalize_number(numbers[-1]) if numbers else None


def _normalize_number(number):
    number = number.replace(",", "")
    try:
        value = float(number)
    except ValueError:
        return None
    if value == int(value):
        return str(int(value))
    return repr(value)


def exact_match(prediction, reference, ignore_case=False, strip=True):
    if strip:
        prediction, reference = prediction.strip(), reference.strip()
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    return float(prediction == reference)


def majority_vote(answers):
    """The most frequent non-None answer (ties: the one seen first)."""
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)
