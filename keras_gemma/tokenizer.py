"""SentencePiece tokenizer for Gemma checkpoints."""

import numbers
import os
import pathlib
import re

import numpy
import sentencepiece

from keras_gemma.validation import check_text

VOCABULARY_FILENAME = "vocabulary.spm"

# Attribute name -> piece. The first three are needed to build prompts and to
# stop generation, so a vocabulary without them is rejected.
_SPECIAL_PIECES = {
    "pad": "<pad>",
    "bos": "<bos>",
    "eos": "<eos>",
    "unk": "<unk>",
    "start_of_turn": "<start_of_turn>",
    "end_of_turn": "<end_of_turn>",
}
# Gemma 4 renamed the turn markers (and ships them as user-defined pieces, so
# SentencePiece itself matches them in text).
_GEMMA4_PIECES = {"start_of_turn": "<|turn>", "end_of_turn": "<turn|>"}
_REQUIRED_SPECIALS = ("pad", "bos", "eos")
# Markers that chat prompts spell out in plain text.
_TURN_MARKERS = ("start_of_turn", "end_of_turn")


class GemmaTokenizer:
    """Turns text into Gemma token ids and back, using a SentencePiece model.

    `tokenize` returns the raw SentencePiece ids, without `<bos>` or `<eos>`
    (the same ids as `keras_hub.models.GemmaTokenizer`). Turn markers such as
    `<start_of_turn>` written in the text become their single ids. Gemma 4's
    vocabulary (rebuilt from its `tokenizer.json` by
    `keras_gemma.checkpoints.tokenizer_json`) has `<|turn>` and `<turn|>`
    instead: `start_of_turn_token_id` / `end_of_turn_token_id` are theirs.

    Args:
        proto: path (`str` or `pathlib.Path`) to a SentencePiece model file
            (`vocabulary.spm`, `tokenizer.model`), or the serialized model
            as `bytes`.

    Example:

    >>> tokenizer = GemmaTokenizer("tests/data/test_vocabulary.spm")
    >>> ids = tokenizer.tokenize("<start_of_turn>user\\nHello!")
    >>> ids[0] == tokenizer.start_of_turn_token_id
    True
    >>> tokenizer.detokenize(ids)
    '<start_of_turn>user\\nHello!'
    >>> [len(ids) for ids in tokenizer(["a", "ab"])]
    [1, 2]
    """

    def __init__(self, proto):
        source = "The SentencePiece model bytes"  # named in errors
        if isinstance(proto, (str, os.PathLike)):
            path = pathlib.Path(proto)
            if not path.is_file():
                raise FileNotFoundError(f"SentencePiece model file not found: {path}")
            proto = path.read_bytes()
            source = str(path)
        elif isinstance(proto, (bytes, bytearray)):
            proto = bytes(proto)
        else:
            raise TypeError(
                "`proto` must be a path to a SentencePiece model or its "
                f"serialized bytes, got {type(proto).__name__}."
            )
        self.proto = proto
        self._processor = _load_processor(proto, source)

        # Piece -> id for the special tokens this vocabulary has.
        self.special_tokens = {}
        for name, piece in _SPECIAL_PIECES.items():
            # Gemma 4's spelling first: its vocabulary may also hold the old
            # spelling as ordinary text.
            for piece in (_GEMMA4_PIECES.get(name), piece):
                token_id = None if piece is None else self._find_piece(piece)
                if token_id is not None:
                    break
            setattr(self, f"{name}_token", piece)
            setattr(self, f"{name}_token_id", token_id)
            if token_id is not None:
                self.special_tokens[piece] = token_id
        missing = [
            _SPECIAL_PIECES[name]
            for name in _REQUIRED_SPECIALS
            if getattr(self, f"{name}_token_id") is None
        ]
        if missing:
            raise ValueError(
                f"{source}: the SentencePiece vocabulary lacks the Gemma special "
                f"token(s) {', '.join(missing)}."
            )

        # Gemma's own vocabularies mark the turn markers USER_DEFINED, which
        # SentencePiece matches inside text. Vocabularies rebuilt from other
        # formats (GGUF, Hugging Face) may mark them CONTROL, which
        # SentencePiece never matches, so those are split out by hand.
        self._control_markers = [
            getattr(self, f"{name}_token")
            for name in _TURN_MARKERS
            if getattr(self, f"{name}_token_id") is not None
            and self._processor.is_control(getattr(self, f"{name}_token_id"))
        ]
        self._control_marker_ids = {
            self.special_tokens[piece] for piece in self._control_markers
        }
        self._control_marker_pattern = None
        if self._control_markers:
            alternatives = "|".join(map(re.escape, self._control_markers))
            self._control_marker_pattern = re.compile(f"({alternatives})")

    def __call__(self, inputs):
        return self.tokenize(inputs)

    def vocabulary_size(self):
        return self._processor.get_piece_size()

    def get_vocabulary(self):
        size = self.vocabulary_size()
        return [self._processor.id_to_piece(i) for i in range(size)]

    def id_to_token(self, token_id):
        self._check_id(token_id)
        return self._processor.id_to_piece(int(token_id))

    def token_to_id(self, token):
        if not isinstance(token, str):
            raise TypeError(f"Expected a token string, got {type(token).__name__}.")
        token_id = self._find_piece(token)
        if token_id is None:
            raise ValueError(f"Token {token!r} is not in the vocabulary.")
        return token_id

    def tokenize(self, inputs):
        """`str` -> `list[int]`; a list/tuple/1-D array of `str` -> `list[list[int]]`.

        No `<bos>`/`<eos>` is added.
        """
        if isinstance(inputs, numpy.ndarray) and inputs.ndim <= 1:
            inputs = inputs.tolist()
        if isinstance(inputs, str):
            return self._encode(check_text(inputs))
        if isinstance(inputs, (list, tuple)):
            for item in inputs:
                if not isinstance(item, str):
                    raise TypeError(
                        "`tokenize` expects a string or a list of strings, got "
                        f"a {type(inputs).__name__} containing {type(item).__name__}."
                    )
            return [self._encode(check_text(text, f"Text {i}")) for i, text in enumerate(inputs)]
        raise TypeError(
            "`tokenize` expects a string or a list of strings, got "
            f"{type(inputs).__name__}."
        )

    def detokenize(self, ids):
        """A flat sequence of ids -> `str`; a batch (2-D) -> `list[str]`.

        Accepts lists, tuples, numpy arrays and backend tensors. A batch may
        be ragged (a list of lists of different lengths).
        """
        if isinstance(ids, (list, tuple)):
            if all(_is_id(i) for i in ids):
                return self._decode(ids)
            return [self._decode(_flat_ids(row)) for row in ids]
        array = _to_numpy(ids)
        if array.ndim == 1:
            return self._decode(_flat_ids(array))
        if array.ndim == 2:
            return [self._decode(_flat_ids(row)) for row in array]
        raise TypeError(
            "`detokenize` expects a 1-D sequence of token ids or a 2-D batch, "
            f"got an array of shape {array.shape}."
        )

    def get_config(self):
        # The vocabulary travels as an asset file (see `save_assets`), not in
        # the config.
        return {}

    @classmethod
    def from_config(cls, config):
        if not config.get("proto"):
            raise ValueError(
                "A GemmaTokenizer config holds no vocabulary; build it with "
                "GemmaTokenizer(proto) or GemmaTokenizer.load_assets(dir)."
            )
        return cls(config["proto"])

    def save_assets(self, dir_path):
        dir_path = pathlib.Path(dir_path)
        dir_path.mkdir(parents=True, exist_ok=True)
        (dir_path / VOCABULARY_FILENAME).write_bytes(self.proto)

    @classmethod
    def load_assets(cls, dir_path):
        return cls(pathlib.Path(dir_path) / VOCABULARY_FILENAME)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        from keras_gemma import preset_io

        return preset_io.load_tokenizer(preset, **kwargs)

    def _find_piece(self, piece):
        # `piece_to_id` answers the <unk> id for unknown pieces, so confirm
        # the piece round-trips.
        token_id = self._processor.piece_to_id(piece)
        if self._processor.id_to_piece(token_id) != piece:
            return None
        return token_id

    def _encode(self, text):
        if self._control_marker_pattern is None:
            return self._processor.encode(text, out_type=int)
        ids = []
        # With a capturing group, the odd-numbered parts are the markers.
        for i, part in enumerate(self._control_marker_pattern.split(text)):
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._processor.encode(part, out_type=int))
        return ids

    def _check_id(self, token_id):
        if not _is_id(token_id):
            raise TypeError(
                f"Token ids must be integers, got {type(token_id).__name__}."
            )
        if not 0 <= token_id < self.vocabulary_size():
            raise ValueError(
                f"Token id {token_id} is out of range for a vocabulary of "
                f"{self.vocabulary_size()} tokens."
            )

    def _decode(self, ids):
        for token_id in ids:
            self._check_id(token_id)
        ids = [int(i) for i in ids]
        if self._control_marker_pattern is None:
            return self._processor.decode(ids)
        # SentencePiece drops CONTROL pieces when decoding; write the turn
        # markers back so that decoding inverts `tokenize`.
        text, segment = [], []
        for token_id in ids:
            if token_id in self._control_marker_ids:
                text += [self._processor.decode(segment), self.id_to_token(token_id)]
                segment = []
            else:
                segment.append(token_id)
        text.append(self._processor.decode(segment))
        return "".join(text)


def _load_processor(proto, source):
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto)
    except (RuntimeError, UnicodeDecodeError) as error:  # the latter: its error text
        detail = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise ValueError(
            f"{source}: not a valid SentencePiece model ({detail}). The file "
            "may be truncated or corrupt; get it again."
        ) from None
    # Empty bytes parse as an empty model instead of failing.
    if processor.get_piece_size() == 0:
        raise ValueError(f"{source}: the SentencePiece model is empty (it has no pieces).")
    # A corrupt piece would otherwise fail later, in the middle of decoding.
    try:
        processor.id_to_piece(list(range(processor.get_piece_size())))
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{source}: a piece of the SentencePiece model is not valid UTF-8 "
            f"({error}); the file is corrupt."
        ) from None
    return processor


def _is_id(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _to_numpy(ids):
    if isinstance(ids, (str, bytes, numbers.Number)) or ids is None:
        raise TypeError(
            "`detokenize` expects a sequence of token ids, got "
            f"{type(ids).__name__}."
        )
    # Tensors on an accelerator (torch) must be copied to the host first.
    if hasattr(ids, "cpu") and not isinstance(ids, numpy.ndarray):
        ids = ids.cpu()
    return numpy.asarray(ids)


def _flat_ids(row):
    """One row of a batch -> a list of ids (`_decode` checks each id)."""
    if isinstance(row, (list, tuple)):
        return list(row)
    array = _to_numpy(row)
    if array.ndim != 1:
        raise TypeError(
            "`detokenize` expects a 1-D sequence of token ids or a 2-D batch, "
            f"got a row of shape {array.shape}."
        )
    return array.tolist()
