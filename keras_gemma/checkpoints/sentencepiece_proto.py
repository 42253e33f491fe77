"""A small writer (and reader) for SentencePiece's ``ModelProto``, without ``protobuf``.

SentencePiece loads a model from the serialized bytes of a protocol buffer
(``sentencepiece_model.proto``). Checkpoint formats that carry the vocabulary
as plain lists (GGUF) need those bytes rebuilt; this module writes them with
the protocol buffer wire format directly, so the ``protobuf`` package is not
a runtime dependency.

Only the fields needed to encode and decode text are supported:

```
ModelProto      1: repeated SentencePiece pieces
                2: TrainerSpec trainer_spec
                3: NormalizerSpec normalizer_spec
                5: NormalizerSpec denormalizer_spec
SentencePiece   1: string piece   2: float score   3: Type type
```

and the ``TrainerSpec`` / ``NormalizerSpec`` fields listed in
``TRAINER_SPEC_FIELDS`` / ``NORMALIZER_SPEC_FIELDS``.

Example:

```python
proto = model_proto(
    pieces=[("<pad>", 0.0, CONTROL), ("<eos>", 0.0, CONTROL),
            ("<bos>", 0.0, CONTROL), ("<unk>", 0.0, UNKNOWN), ("a", -1.0, NORMAL)],
    trainer_spec={"model_type": BPE, "vocab_size": 5, "unk_id": 3,
                  "bos_id": 2, "eos_id": 1, "pad_id": 0},
    normalizer_spec={"name": "identity", "add_dummy_prefix": False},
)
sentencepiece.SentencePieceProcessor(model_proto=proto)
```
"""

import struct

# SentencePiece.Type
NORMAL = 1
UNKNOWN = 2
CONTROL = 3
USER_DEFINED = 4
UNUSED = 5
BYTE = 6
PIECE_TYPES = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)

# TrainerSpec.ModelType
UNIGRAM = 1
BPE = 2
WORD = 3
CHAR = 4

# Field name -> (field number, kind). Kinds: "string", "bytes", "int32",
# "float", "bool", "enum", "repeated_string".
TRAINER_SPEC_FIELDS = {
    "model_prefix": (2, "string"),
    "model_type": (3, "enum"),
    "vocab_size": (4, "int32"),
    "character_coverage": (10, "float"),
    "max_sentence_length": (18, "int32"),
    "num_threads": (16, "int32"),
    "max_sentencepiece_length": (20, "int32"),
    "split_by_unicode_script": (21, "bool"),
    "split_by_whitespace": (22, "bool"),
    "split_by_number": (23, "bool"),
    "treat_whitespace_as_suffix": (24, "bool"),
    "split_digits": (25, "bool"),
    "allow_whitespace_only_pieces": (26, "bool"),
    "control_symbols": (30, "repeated_string"),
    "user_defined_symbols": (31, "repeated_string"),
    "vocabulary_output_piece_score": (32, "bool"),
    "hard_vocab_limit": (33, "bool"),
    "use_all_vocab": (34, "bool"),
    "byte_fallback": (35, "bool"),
    "required_chars": (36, "string"),
    "unk_id": (40, "int32"),
    "bos_id": (41, "int32"),
    "eos_id": (42, "int32"),
    "pad_id": (43, "int32"),
    "unk_surface": (44, "string"),
    "unk_piece": (45, "string"),
    "bos_piece": (46, "string"),
    "eos_piece": (47, "string"),
    "pad_piece": (48, "string"),
}
NORMALIZER_SPEC_FIELDS = {
    "name": (1, "string"),
    "precompiled_charsmap": (2, "bytes"),
    "add_dummy_prefix": (3, "bool"),
    "remove_extra_whitespaces": (4, "bool"),
    "escape_whitespaces": (5, "bool"),
    "normalization_rule_tsv": (6, "string"),
}

_VARINT, _FIXED32, _LENGTH_DELIMITED = 0, 5, 2


def model_proto(pieces, trainer_spec, normalizer_spec, denormalizer_spec=None):
    """Serialized ``ModelProto`` bytes.

    Args:
        pieces: sequence of ``(piece, score, type)``: the vocabulary in id
            order; ``type`` is one of ``PIECE_TYPES``.
        trainer_spec: dict of ``TRAINER_SPEC_FIELDS`` names to values.
        normalizer_spec: dict of ``NORMALIZER_SPEC_FIELDS`` names to values.
        denormalizer_spec: optional dict, like ``normalizer_spec``.
    """
    parts = []
    piece_tag = _tag(1, _LENGTH_DELIMITED)
    score_tag = _tag(2, _FIXED32)
    type_tag = _tag(3, _VARINT)
    pack_float = struct.Struct("<f").pack
    for index, (piece, score, piece_type) in enumerate(pieces):
        if piece_type not in PIECE_TYPES:
            raise ValueError(
                f"Piece {index} ({piece!r}) has type {piece_type!r}; "
                f"expected one of {PIECE_TYPES}."
            )
        text = piece.encode("utf-8")
        body = b"".join(
            (
                piece_tag,
                _varint(len(text)),
                text,
                score_tag,
                pack_float(float(score)),
                type_tag,
                _varint(piece_type),
            )
        )
        parts.append(piece_tag)  # ModelProto.pieces is field 1 as well.
        parts.append(_varint(len(body)))
        parts.append(body)
    parts.append(_message_field(2, _encode_fields(trainer_spec, TRAINER_SPEC_FIELDS)))
    parts.append(
        _message_field(3, _encode_fields(normalizer_spec, NORMALIZER_SPEC_FIELDS))
    )
    if denormalizer_spec is not None:
        parts.append(
            _message_field(
                5, _encode_fields(denormalizer_spec, NORMALIZER_SPEC_FIELDS)
            )
        )
    return b"".join(parts)


def _encode_fields(values, table):
    parts = []
    # Field order does not matter to parsers; number order matches what
    # protobuf itself writes, which keeps the bytes comparable.
    for name in sorted(values, key=lambda n: _field(table, n)[0]):
        number, kind = _field(table, name)
        value = values[name]
        if value is None:
            continue
        if kind == "repeated_string":
            for item in value:
                parts.append(_bytes_field(number, item.encode("utf-8")))
        elif kind == "string":
            parts.append(_bytes_field(number, value.encode("utf-8")))
        elif kind == "bytes":
            parts.append(_bytes_field(number, bytes(value)))
        elif kind == "float":
            parts.append(_tag(number, _FIXED32) + struct.pack("<f", float(value)))
        elif kind == "bool":
            parts.append(_tag(number, _VARINT) + _varint(1 if value else 0))
        else:  # int32, enum
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Field `{name}` needs an int, got {value!r}.")
            parts.append(_tag(number, _VARINT) + _varint(value))
    return b"".join(parts)


def _field(table, name):
    try:
        return table[name]
    except KeyError:
        raise ValueError(
            f"Unknown SentencePiece spec field `{name}`; known: {sorted(table)}."
        ) from None


def _message_field(number, body):
    return _bytes_field(number, body)


def _bytes_field(number, data):
    return _tag(number, _LENGTH_DELIMITED) + _varint(len(data)) + data


def _tag(number, wire_type):
    return _varint((number << 3) | wire_type)


def _varint(value):
    if 0 <= value < 0x80:
        return bytes((value,))
    if value < 0:
        # int32 / enum fields write negatives as 64-bit two's complement.
        value += 1 << 64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


# -- reading ------------------------------------------------------------------------


def read_model(data):
    """(pieces, trainer spec, normalizer spec) of serialized ``ModelProto``
    bytes: pieces as ``(piece, score, type)``, the specs as {field name:
    value} for their varint fields (ints; bools as 0/1) and the normalizer's
    ``name``."""
    pieces, trainer_spec, normalizer_spec = [], {}, {}
    varint_names = {number: name for name, (number, kind) in TRAINER_SPEC_FIELDS.items()
                    if kind in ("int32", "enum", "bool")}
    for number, value in _fields(data):
        if number == 3:
            for field, field_value in _fields(value):
                if field == 1:
                    normalizer_spec["name"] = field_value.decode("utf-8")
                elif field in (3, 4, 5) and isinstance(field_value, int):
                    normalizer_spec[("add_dummy_prefix", "remove_extra_whitespaces",
                                     "escape_whitespaces")[field - 3]] = field_value
        if number == 1:
            entry = {1: b"", 2: 0.0, 3: NORMAL}
            for field, field_value in _fields(value):
                entry[field] = field_value
            piece = entry[1].decode("utf-8")
            score = struct.unpack("<f", entry[2])[0] if isinstance(entry[2], bytes) else 0.0
            pieces.append((piece, score, entry[3]))
        elif number == 2:
            for field, field_value in _fields(value):
                if field in varint_names and isinstance(field_value, int):
                    if field_value >= 1 << 63:  # a negative int32
                        field_value -= 1 << 64
                    trainer_spec[varint_names[field]] = field_value
    return pieces, trainer_spec, normalizer_spec


def _fields(data):
    """(field number, value) of a message: ints for varints, bytes otherwise."""
    position, end = 0, len(data)
    while position < end:
        key, position = _read_varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, position = _read_varint(data, position)
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _read_varint(data, position)
            value, position = data[position:position + length], position + length
        elif wire_type == _FIXED32:
            value, position = data[position:position + 4], position + 4
        elif wire_type == 1:  # 64-bit
            value, position = data[position:position + 8], position + 8
        else:
            raise ValueError(f"Unsupported protocol buffer wire type {wire_type}.")
        yield number, value


def _read_varint(data, position):
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
