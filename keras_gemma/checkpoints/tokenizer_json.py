"""Hugging Face ``tokenizer.json`` -> a SentencePiece model for ``GemmaTokenizer``.

Gemma 4 checkpoints ship no ``tokenizer.model``: only ``tokenizer.json`` (the
``tokenizers`` library's serialization) and ``tokenizer_config.json``. Their
tokenizer is the one Gemma has always had, written in ``tokenizers``' terms
(``transformers``' ``GemmaTokenizer`` builds exactly this pipeline):

```
normalizer     Replace(" " -> "▁")
pre_tokenizer  Split(" ", merged_with_previous)  (a no-op once spaces are "▁";
               some files have none)
model          BPE over characters, ranked merges, byte_fallback, <unk>
decoder        Replace("▁" -> " "), ByteFallback, Fuse
added_tokens   <pad> <eos> <bos> <unk> <mask>, the turn markers <|turn> <turn|>,
               tool, thinking-channel, image and audio markers: matched whole
```

SentencePiece's BPE model runs the same algorithm: it splits the text into
characters (user-defined pieces whole), repeatedly merges the adjacent pair
whose union has the best score (the leftmost one on ties), and spells what is
left out of the vocabulary as ``<0xXX>`` byte pieces. So the rebuilt model gives
each piece the score ``-rank`` of the first merge that produces it; the added
tokens become USER_DEFINED pieces (matched whole in text, decoded as text),
except ``<bos>``/``<eos>``/``<pad>`` (CONTROL, as in Gemma 1-3: the text
"<bos>" stays text) and ``<unk>`` (UNKNOWN). Only this file format is read;
anything else (a byte-level or WordPiece model, another normalizer) is
rejected by name rather than tokenized differently.

Example:

```python
from keras_gemma.checkpoints.tokenizer_json import tokenizer_from_tokenizer_json
tokenizer = tokenizer_from_tokenizer_json("gemma-4-E2B-it/")   # or .../tokenizer.json
tokenizer.tokenize("<|turn>user\\nHi<turn|>")
```
"""

import json
import os
import re

from keras_gemma.checkpoints import sentencepiece_proto as spm

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"

_SPACE = "\u2581"
_BYTE_PIECE = re.compile(r"^<0x[0-9A-F]{2}>$")
# Role -> default piece, used when there is no tokenizer_config.json naming them.
_DEFAULT_SPECIALS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}


def find_tokenizer_json(path_or_folder):
    """The ``tokenizer.json`` path for a file or a checkpoint folder."""
    path = os.fspath(path_or_folder)
    if os.path.isdir(path):
        path = os.path.join(path, TOKENIZER_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Tokenizer file not found: {path}")
    return path


def tokenizer_from_tokenizer_json(path_or_folder):
    """A ``GemmaTokenizer`` from a Hugging Face ``tokenizer.json`` (or its folder).

    A ``tokenizer_config.json`` beside it, if any, names the ``<bos>``,
    ``<eos>``, ``<pad>`` and ``<unk>`` tokens (without one, Gemma's names are
    used) and may list more special tokens, matched whole like the file's
    added tokens.
    """
    from keras_gemma.checkpoints import file_errors
    from keras_gemma.tokenizer import GemmaTokenizer

    path = find_tokenizer_json(path_or_folder)
    # A field of the wrong type deep in the file fails as a TypeError or
    # KeyError somewhere in the rebuild; the user needs to know which file.
    with file_errors(path):
        return GemmaTokenizer(tokenizer_proto_from_json_file(path))


def tokenizer_proto_from_json_file(path_or_folder):
    """Serialized SentencePiece ``ModelProto`` bytes for a ``tokenizer.json``."""
    path = find_tokenizer_json(path_or_folder)
    tokenizer = _read_json(path)
    config_path = os.path.join(os.path.dirname(path), TOKENIZER_CONFIG_JSON)
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    return tokenizer_proto(tokenizer, config, source=path)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from None


def tokenizer_proto(tokenizer, config=None, source=TOKENIZER_JSON):
    """The ``ModelProto`` bytes for a parsed ``tokenizer.json`` (a dict).

    ``config`` is the parsed ``tokenizer_config.json`` (or ``{}``).
    """
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("model"), dict):
        raise ValueError(f"{source}: no 'model' section; not a tokenizers tokenizer.json.")
    model = tokenizer["model"]
    _check_model(model, source)
    _check_normalizer(tokenizer.get("normalizer"), source)
    _check_pre_tokenizer(tokenizer.get("pre_tokenizer"), source)
    _check_decoder(tokenizer.get("decoder"), source)

    return bpe_tokenizer_proto(
        model["vocab"], tokenizer.get("added_tokens") or [], model.get("merges") or [],
        config, unk_token=model.get("unk_token"),
        byte_fallback=bool(model.get("byte_fallback")), source=source)


def bpe_tokenizer_proto(vocab, added_tokens, merges, config=None, *, unk_token=None,
                        byte_fallback=True, source=TOKENIZER_JSON):
    """The ``ModelProto`` bytes for the pipeline above from its parts: a BPE
    model's ``vocab`` (piece -> id), its ``added_tokens`` (``{"id",
    "content"}`` dicts, matched whole), its ranked ``merges`` ("left right"
    strings or pairs) and a ``tokenizer_config.json``-like ``config`` naming
    the special tokens. A ``tokenizer.json`` has these parts, and so does a
    GGUF file's ``gemma4`` vocabulary."""
    config = config or {}
    pieces = _pieces_by_id(vocab, added_tokens, source)
    index_of = {piece: i for i, piece in enumerate(pieces)}
    # transformers also matches whole the special tokens tokenizer_config.json
    # names (Gemma 4's <|video|> is only listed there).
    added = {token["id"] for token in added_tokens}
    added |= {index_of[name] for name in _config_tokens(config) if name in index_of}
    specials = _special_ids(index_of, config, unk_token, source)
    first_rank = _first_merge_ranks(merges, source)
    entries = _entries(pieces, added, specials, first_rank, source)
    _check_byte_fallback(entries, byte_fallback, source)
    trainer_spec = {
        "model_type": spm.BPE,
        "vocab_size": len(entries),
        "byte_fallback": byte_fallback,
        "allow_whitespace_only_pieces": True,
        "split_digits": True,
    }
    for role in _DEFAULT_SPECIALS:
        # -1: none (SentencePiece would otherwise assume its default ids).
        trainer_spec[f"{role}_id"] = specials.get(role, -1)
        if role in specials:
            trainer_spec[f"{role}_piece"] = entries[specials[role]][0]
    normalizer_spec = {
        "name": "identity",
        "precompiled_charsmap": b"",
        "add_dummy_prefix": False,
        "remove_extra_whitespaces": False,
        "escape_whitespaces": True,
    }
    return spm.model_proto(entries, trainer_spec, normalizer_spec)


def _entries(pieces, added, specials, first_rank, source):
    """``(piece, score, type)`` for each id, as ``model_proto`` takes them."""
    control = {specials.get(role) for role in ("bos", "eos", "pad")} - {None}
    lowest = -float(len(first_rank) + 1)
    entries = []
    for index, piece in enumerate(pieces):
        if index == specials["unk"]:
            entries.append((piece, 0.0, spm.UNKNOWN))
        elif index in control:
            entries.append((piece, 0.0, spm.CONTROL))
        elif index in added:
            # SentencePiece matches user-defined pieces after spaces became "▁".
            entries.append((piece.replace(" ", _SPACE), 0.0, spm.USER_DEFINED))
        elif _BYTE_PIECE.match(piece):
            entries.append((piece, 0.0, spm.BYTE))
        elif piece in first_rank:
            entries.append((piece, -float(first_rank[piece] + 1), spm.NORMAL))
        else:
            # Single characters are the alphabet, never a merge's result. A
            # longer piece that no merge makes, transformers never produces;
            # SentencePiece would only by joining two of its parts, so it
            # comes last (the real 262,144-piece vocabulary has none).
            entries.append((piece, 0.0 if len(piece) == 1 else lowest, spm.NORMAL))
    seen = {}
    for index, (piece, _, _) in enumerate(entries):
        if piece in seen:
            raise ValueError(
                f"{source}: tokens {seen[piece]} and {index} are both {piece!r}; "
                "SentencePiece needs distinct pieces."
            )
        seen[piece] = index
    return entries


def _check_byte_fallback(entries, byte_fallback, source):
    byte_pieces = {piece for piece, _, kind in entries if kind == spm.BYTE}
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in byte_pieces]
    if byte_fallback and missing:
        # SentencePiece's byte fallback needs every byte (Gemma's have them).
        raise ValueError(
            f"{source}: byte_fallback is on but the vocabulary lacks {len(missing)} "
            f"of the 256 byte tokens ({', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}); keras_gemma cannot rebuild it."
        )


# -- checks: only Gemma's pipeline is rebuilt ----------------------------------


def _unsupported(source, what, value):
    return ValueError(
        f"{source}: unsupported {what} {json.dumps(value)[:200]}. keras_gemma "
        "rebuilds Gemma's tokenizer (BPE with byte fallback, spaces replaced by "
        "'▁', no other normalization); this tokenizer.json describes another "
        "kind of tokenizer."
    )


def _check_model(model, source):
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        raise _unsupported(source, "model type", model.get("type"))
    if not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{source}: the BPE model has no 'vocab' mapping.")
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise _unsupported(source, f"BPE option '{key}'", model[key])
    if model.get("ignore_merges"):
        raise _unsupported(source, "BPE option 'ignore_merges'", True)


def _check_normalizer(normalizer, source):
    steps = normalizer.get("normalizers") if normalizer and normalizer.get(
        "type") == "Sequence" else [normalizer]
    steps = [step for step in steps if step is not None]
    if len(steps) != 1 or not _is_replace(steps[0], " ", _SPACE):
        raise _unsupported(source, "normalizer", normalizer)


def _check_pre_tokenizer(pre_tokenizer, source):
    if pre_tokenizer is None:
        return
    # Splitting on " " after the normalizer turned every space into "▁" finds
    # nothing to split: transformers' GemmaTokenizer writes this no-op.
    if (
        pre_tokenizer.get("type") == "Split"
        and pre_tokenizer.get("pattern") == {"String": " "}
        and not pre_tokenizer.get("invert")
    ):
        return
    raise _unsupported(source, "pre-tokenizer", pre_tokenizer)


def _check_decoder(decoder, source):
    if decoder is None:
        return
    steps = decoder.get("decoders") if decoder.get("type") == "Sequence" else [decoder]
    for step in steps:
        if step.get("type") in ("ByteFallback", "Fuse") or _is_replace(step, _SPACE, " "):
            continue
        raise _unsupported(source, "decoder step", step)


def _is_replace(step, old, new):
    return (
        step.get("type") == "Replace"
        and step.get("pattern") == {"String": old}
        and step.get("content") == new
    )


# -- vocabulary ------------------------------------------------------------------


def _pieces_by_id(vocab, added_tokens, source):
    """The pieces in id order; ids must run 0..N-1 without gaps."""
    by_id = {}
    for piece, index in vocab.items():
        by_id[index] = piece
    for token in added_tokens:
        index, content = token.get("id"), token.get("content")
        if not isinstance(index, int) or not isinstance(content, str):
            raise ValueError(f"{source}: malformed added token {token!r:.100}.")
        for flag in ("lstrip", "rstrip", "single_word"):
            if token.get(flag):
                raise _unsupported(source, f"added-token option '{flag}' on", content)
        if by_id.setdefault(index, content) != content:
            raise ValueError(
                f"{source}: added token {index} is {content!r} but the vocabulary "
                f"has {by_id[index]!r} there."
            )
    count = len(by_id)
    missing = sorted(set(range(count)) - set(by_id))
    if missing or (by_id and max(by_id) != count - 1):
        raise ValueError(
            f"{source}: token ids must run from 0 to {count - 1} without gaps; "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}."
        )
    return [by_id[i] for i in range(count)]


def _special_ids(index_of, config, unk_token, source):
    """Role -> id for unk/bos/eos/pad; only unk is required here."""
    ids = {}
    for role, default in _DEFAULT_SPECIALS.items():
        name = _token_content(config.get(f"{role}_token"))
        if role == "unk" and unk_token:
            name = unk_token
        name = name or default
        if name in index_of:
            ids[role] = index_of[name]
        elif role == "unk":
            raise ValueError(f"{source}: the vocabulary has no unknown token {name!r}.")
    return ids


def _token_content(value):
    # tokenizer_config.json writes a token as a string or as an AddedToken dict.
    if isinstance(value, dict):
        return value.get("content")
    return value


def _config_tokens(config):
    """Every token tokenizer_config.json names: ``*_token`` keys, the extra
    and additional special tokens, and ``added_tokens_decoder``."""
    names = [value for key, value in config.items() if key.endswith("_token")]
    for key in ("extra_special_tokens", "additional_special_tokens"):
        value = config.get(key) or []
        names += list(value.values()) if isinstance(value, dict) else list(value)
    names += list((config.get("added_tokens_decoder") or {}).values())
    contents = (_token_content(name) for name in names)
    return {name for name in contents if isinstance(name, str) and name}


def _first_merge_ranks(merges, source):
    """Merged piece -> the rank of the first merge that makes it."""
    ranks = {}
    for rank, merge in enumerate(merges):
        if isinstance(merge, str):
            left, separator, right = merge.partition(" ")
            if not separator:
                raise ValueError(f"{source}: merge {rank} ({merge!r}) is not 'left right'.")
        elif isinstance(merge, (list, tuple)) and len(merge) == 2:
            left, right = merge
        else:
            raise ValueError(f"{source}: merge {rank} ({merge!r:.60}) is not a pair.")
        ranks.setdefault(left + right, rank)
    return ranks


# -- writing: a SentencePiece BPE model as the same pipeline ------------------------


def tokenizer_json_from_proto(proto):
    """The ``tokenizer.json`` dict (the pipeline above) for a SentencePiece
    model, or None if it is not one this pipeline expresses (a BPE model
    with byte fallback, no dummy prefix, no whitespace squeezing).

    The inverse of ``tokenizer_proto``: CONTROL, UNKNOWN and USER_DEFINED
    pieces become added tokens; each NORMAL piece longer than one character
    becomes the result of every merge of two pieces that spell it, ranked
    by its score (what SentencePiece's BPE merges by), then by its id.
    """
    pieces, trainer, normalizer = spm.read_model(proto)
    if (trainer.get("model_type") != spm.BPE or not trainer.get("byte_fallback")
            or normalizer.get("add_dummy_prefix", 1) or normalizer.get(
                "remove_extra_whitespaces", 1)
            or normalizer.get("name", "identity") != "identity"):
        return None
    vocab, added, ranked = {}, [], []
    for index, (piece, score, kind) in enumerate(pieces):
        if kind in (spm.CONTROL, spm.UNKNOWN, spm.USER_DEFINED):
            # SentencePiece matched user-defined pieces after " " became "▁".
            content = piece.replace(_SPACE, " ") if kind == spm.USER_DEFINED else piece
            added.append({"id": index, "content": content, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False,
                          "special": True})
            vocab[content] = index
            continue
        vocab[piece] = index
        if kind == spm.NORMAL and len(piece) > 1:
            ranked.append((-score, index, piece))
    mergeable = {piece for _, _, piece in ranked} | {
        piece for piece, _, kind in pieces if kind == spm.NORMAL and len(piece) == 1}
    merges = []
    for _, _, piece in sorted(ranked):
        for split in range(1, len(piece)):
            left, right = piece[:split], piece[split:]
            if left in mergeable and right in mergeable:
                merges.append([left, right])
    unk = trainer.get("unk_id", 0)
    bos = pieces[trainer.get("bos_id", 2)][0]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": _SPACE},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                          "behavior": "MergedWithPrevious", "invert": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": _SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {"type": "BPE", "dropout": None, "unk_token": pieces[unk][0],
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
