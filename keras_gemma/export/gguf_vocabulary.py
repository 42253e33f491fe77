"""The vocabulary of a GGUF export, as llama.cpp's
converter stores a Gemma SentencePiece tokenizer.

``vocabulary_metadata(proto)`` gives the ``tokenizer.ggml.*`` keys for a
serialized SentencePiece model: pieces, scores and token types
(``tokenizer.ggml.model`` "llama"), the special ids, and the add-bos /
add-eos flags. The reverse of ``keras_gemma.checkpoints.gguf.
build_tokenizer_proto``: Hugging Face's special tokens become CONTROL and
the other user-defined pieces keep USER_DEFINED with "▁" written as a space,
which that reader undoes.
"""

import numpy as np

from keras_gemma.checkpoints import sentencepiece_proto as spm

# Vocabulary pieces Hugging Face marks special, which llama.cpp's converter
# stores as CONTROL (matched in text only when asked to); the other
# user-defined pieces (runs of spaces, "[multimodal]", HTML tags) stay
# USER_DEFINED, written with real spaces.
_CONTROL_PIECES = ("<mask>", "<start_of_turn>", "<end_of_turn>", "[@BOS@]")




def vocabulary_metadata(proto):
    """``tokenizer.ggml.*`` keys for a serialized SentencePiece model, as
    llama.cpp's converter stores Gemma's vocabulary."""
    pieces = _proto_pieces(proto)
    special = {spm.CONTROL: [], spm.UNKNOWN: []}
    tokens, scores, types = [], [], []
    for index, (piece, score, piece_type) in enumerate(pieces):
        if piece_type in special:
            special[piece_type].append(index)
        if piece_type == spm.USER_DEFINED:
            if piece in _CONTROL_PIECES or (piece.startswith("<unused") and piece.endswith(">")):
                piece_type = spm.CONTROL
            else:
                piece = piece.replace("\u2581", " ")
        elif piece_type == spm.UNKNOWN:
            piece_type = spm.CONTROL  # as Hugging Face's special <unk>
        tokens.append(piece)
        scores.append(score)
        types.append(piece_type)
    ids = {piece: index for index, (piece, _, _) in enumerate(pieces)}
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.asarray(scores, np.float32),
        "tokenizer.ggml.token_type": np.asarray(types, np.int32),
    }
    if not special[spm.UNKNOWN]:
        raise ValueError("The tokenizer has no unknown piece; llama.cpp needs one.")
    metadata["tokenizer.ggml.unknown_token_id"] = special[spm.UNKNOWN][0]
    for key, piece in (("bos_token_id", "<bos>"), ("eos_token_id", "<eos>"),
                       ("padding_token_id", "<pad>")):
        if piece in ids:
            metadata[f"tokenizer.ggml.{key}"] = ids[piece]
    metadata["tokenizer.ggml.add_bos_token"] = True
    metadata["tokenizer.ggml.add_sep_token"] = False
    metadata["tokenizer.ggml.add_eos_token"] = False
    metadata["tokenizer.ggml.add_space_prefix"] = False
    return metadata


def _proto_pieces(proto):
    """[(piece, score, type)] of a serialized SentencePiece ``ModelProto``."""
    pieces = spm.read_model(proto)[0]
    if not pieces:
        raise ValueError("The tokenizer's SentencePiece model has no pieces.")
    return pieces
