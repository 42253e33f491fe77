import doctest
import io
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece

from keras_gemma import tokenizer as tokenizer_module
from keras_gemma.tokenizer import GemmaTokenizer

REPO_ROOT = pathlib.Path(__file__).parent.parent
VOCAB_PATH = pathlib.Path(__file__).parent / "data" / "test_vocabulary.spm"

TEXTS = [
    "",
    "Hello, world!",
    "The café served crème brûlée to Müller in Zürich.",
    "naïve résumé façade jalapeño São Paulo Ångström",
    "Emoji 😀🚀✨ and 🍕☕ mixed in.",
    "Unseen characters ☃ ∑ Ω 𝔘 ß fall back to bytes.",
    "日本語 и русский текст",
    "Digits 1234567890, 3.14159 and -42e-3.",
    "  leading spaces",
    "trailing spaces   ",
    "many     inner      spaces",
    "   ",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n",
    "\n",
    "def square(x):\n    return x ** 2  # comment\n",
    "values = {'a': [1, 2, 3]}; print(values['a'][-1])",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn><end_of_turn>",
    "before<start_of_turn>after",
    "<start_of_tur <end_of_turn",
    "<bos>text<eos> <pad> <unk>",
]


@pytest.fixture(scope="module")
def tokenizer():
    return GemmaTokenizer(VOCAB_PATH)


@pytest.fixture(scope="module")
def sp():
    return sentencepiece.SentencePieceProcessor(model_file=str(VOCAB_PATH))


def train_vocabulary(**options):
    """A tiny SentencePiece model, as bytes, for vocabularies the file lacks."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world", "user model turn", "abc xyz"] * 10),
        model_writer=model,
        vocab_size=40,
        hard_vocab_limit=False,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        minloglevel=2,
        **options,
    )
    return model.getvalue()


def to_lists(x):
    """keras-hub outputs (arrays, tensors, lists of them) -> nested lists."""
    if isinstance(x, (list, tuple)):
        return [to_lists(row) for row in x]
    if hasattr(x, "to_list"):  # tf.RaggedTensor
        return x.to_list()
    return np.asarray(x).tolist()


def test_special_tokens(tokenizer):
    expected = {
        "<pad>": 0,
        "<eos>": 1,
        "<bos>": 2,
        "<unk>": 3,
        "<start_of_turn>": 4,
        "<end_of_turn>": 5,
    }
    assert tokenizer.special_tokens == expected
    for name in ["pad", "bos", "eos", "unk", "start_of_turn", "end_of_turn"]:
        piece = getattr(tokenizer, f"{name}_token")
        token_id = getattr(tokenizer, f"{name}_token_id")
        assert piece == f"<{name}>"
        assert token_id == expected[piece]
        assert tokenizer.token_to_id(piece) == token_id
        assert tokenizer.id_to_token(token_id) == piece


def test_vocabulary(tokenizer, sp):
    vocabulary = tokenizer.get_vocabulary()
    assert tokenizer.vocabulary_size() == len(vocabulary) == sp.get_piece_size()
    assert vocabulary[:6] == [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
    ]
    for token_id, piece in enumerate(vocabulary):
        assert tokenizer.id_to_token(token_id) == piece
        assert tokenizer.token_to_id(piece) == token_id
    assert tokenizer.id_to_token(np.int64(4)) == "<start_of_turn>"


@pytest.mark.parametrize("text", TEXTS)
def test_matches_sentencepiece_and_round_trips(tokenizer, sp, text):
    ids = tokenizer.tokenize(text)
    assert ids == sp.encode(text)
    assert all(type(i) is int for i in ids)
    assert tokenizer(text) == ids
    assert tokenizer.detokenize(ids) == text


def test_no_unknown_ids_thanks_to_byte_fallback(tokenizer):
    ids = tokenizer.tokenize(" ".join(TEXTS))
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.bos_token_id not in ids
    assert tokenizer.eos_token_id not in ids


def test_turn_markers_are_single_ids(tokenizer, sp):
    ids = tokenizer.tokenize("<start_of_turn>user\nHi<end_of_turn>")
    assert ids == [4] + sp.encode("user\nHi") + [5]
    # Control pieces written as text stay plain characters, as in SentencePiece.
    assert len(tokenizer.tokenize("<bos>")) > 1


def test_batch(tokenizer, sp):
    batch = TEXTS[:6]
    expected = sp.encode(batch)
    assert tokenizer.tokenize(batch) == expected
    assert tokenizer.tokenize(tuple(batch)) == expected
    assert tokenizer.tokenize(np.array(batch)) == expected
    assert tokenizer.tokenize(np.array(batch, dtype=object)) == expected
    assert tokenizer.tokenize([]) == []
    assert tokenizer.detokenize(expected) == batch


def test_detokenize_array_inputs(tokenizer):
    texts = ["Hello, world!", "café 😀 123"]
    rows = tokenizer.tokenize(texts)
    for dtype in ["int32", "int64", "uint16"]:
        assert tokenizer.detokenize(np.array(rows[0], dtype=dtype)) == texts[0]
    assert tokenizer.detokenize(tuple(rows[1])) == texts[1]
    assert tokenizer.detokenize([np.int32(i) for i in rows[1]]) == texts[1]
    assert tokenizer.detokenize([np.array(row) for row in rows]) == texts
    assert tokenizer.detokenize([]) == ""

    # A padded 2-D batch: <pad>, <bos> and <eos> decode to nothing.
    width = max(map(len, rows)) + 2
    padded = np.zeros((2, width), dtype="int32")
    for i, row in enumerate(rows):
        padded[i, : len(row) + 2] = [tokenizer.bos_token_id] + row + [1]
    assert tokenizer.detokenize(padded) == texts


def test_detokenize_backend_tensors(tokenizer):
    keras = pytest.importorskip("keras")
    texts = ["Hello, world!", "café 😀 123"]
    rows = tokenizer.tokenize(texts)
    flat = keras.ops.convert_to_tensor(np.array(rows[0], dtype="int32"))
    assert tokenizer.detokenize(flat) == texts[0]
    padded = np.zeros((2, max(map(len, rows))), dtype="int32")
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    assert tokenizer.detokenize(keras.ops.convert_to_tensor(padded)) == texts


def test_matches_keras_hub(tokenizer):
    keras_hub = pytest.importorskip("keras_hub")
    reference = keras_hub.models.GemmaTokenizer(proto=str(VOCAB_PATH))
    for text in TEXTS:
        assert tokenizer.tokenize(text) == to_lists(reference(text)), text
    assert tokenizer.tokenize(TEXTS) == to_lists(reference(TEXTS))
    ids = tokenizer.tokenize(TEXTS[-5])
    assert tokenizer.detokenize(ids) == to_lists(reference.detokenize(ids))


def test_proto_as_bytes_path_or_str(tokenizer):
    data = VOCAB_PATH.read_bytes()
    assert tokenizer.proto == data
    for proto in [data, bytearray(data), str(VOCAB_PATH)]:
        other = GemmaTokenizer(proto)
        assert isinstance(other.proto, bytes)
        assert other.tokenize(TEXTS[2]) == tokenizer.tokenize(TEXTS[2])


def test_save_and_load_assets(tokenizer, tmp_path):
    assert tokenizer.get_config() == {}
    tokenizer.save_assets(tmp_path)
    assert (tmp_path / "vocabulary.spm").read_bytes() == tokenizer.proto
    restored = GemmaTokenizer.load_assets(tmp_path)
    assert restored.tokenize(TEXTS) == tokenizer.tokenize(TEXTS)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.spm"
    with pytest.raises(FileNotFoundError, match="nowhere.spm"):
        GemmaTokenizer(path)
    with pytest.raises(FileNotFoundError, match="nowhere.spm"):
        GemmaTokenizer(str(path))


@pytest.mark.parametrize("data", [b"not a sentencepiece model", b""])
def test_bytes_that_are_not_a_model(data):
    with pytest.raises(ValueError, match="SentencePiece model"):
        GemmaTokenizer(data)


def test_proto_of_wrong_type():
    with pytest.raises(TypeError, match="int"):
        GemmaTokenizer(123)


def test_vocabulary_without_gemma_specials():
    # SentencePiece's defaults: <unk>, <s>, </s> and no padding piece.
    proto = train_vocabulary()
    with pytest.raises(ValueError, match="<pad>, <bos>, <eos>"):
        GemmaTokenizer(proto)
    proto = train_vocabulary(
        pad_id=3, bos_id=1, eos_id=2, unk_id=0, bos_piece="<bos>", eos_piece="<e>"
    )
    with pytest.raises(ValueError, match=r"token\(s\) <eos>\."):
        GemmaTokenizer(proto)


def test_vocabulary_without_turn_markers():
    proto = train_vocabulary(
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
    )
    tokenizer = GemmaTokenizer(proto)
    assert tokenizer.start_of_turn_token_id is None
    assert tokenizer.end_of_turn_token_id is None
    assert tokenizer.start_of_turn_token == "<start_of_turn>"
    assert set(tokenizer.special_tokens) == {"<pad>", "<bos>", "<eos>", "<unk>"}
    assert tokenizer.tokenize("hello world") == tokenizer._processor.encode(
        "hello world"
    )


def test_turn_markers_stored_as_control_pieces():
    # Vocabularies rebuilt from GGUF or Hugging Face files may mark the turn
    # markers CONTROL; SentencePiece alone would then spell them out.
    proto = train_vocabulary(
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        control_symbols=["<start_of_turn>", "<end_of_turn>"],
    )
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    tokenizer = GemmaTokenizer(proto)
    start, end = tokenizer.start_of_turn_token_id, tokenizer.end_of_turn_token_id
    assert sp.is_control(start) and sp.is_control(end)
    assert start not in sp.encode("<start_of_turn>")

    text = "<start_of_turn>user hello<end_of_turn> <start_of_turn>model "
    ids = tokenizer.tokenize(text)
    assert ids == (
        [start] + sp.encode("user hello") + [end]
        + sp.encode(" ") + [start] + sp.encode("model ")
    )
    assert sp.unk_id() not in ids
    assert tokenizer.tokenize([text, "hello"]) == [ids, sp.encode("hello")]
    assert tokenizer.detokenize(ids) == text


@pytest.mark.parametrize(
    "bad_input, received",
    [
        (5, "int"),
        (None, "NoneType"),
        (b"bytes", "bytes"),
        (["ok", 3], "list containing int"),
        (["ok", None], "list containing NoneType"),
        ([["nested"]], "list containing list"),
        (np.array([["a"]]), "ndarray"),
    ],
)
def test_tokenize_rejects_non_strings(tokenizer, bad_input, received):
    with pytest.raises(TypeError, match=f"expects a string.*got (a )?{received}"):
        tokenizer.tokenize(bad_input)


@pytest.mark.parametrize("bad_id", [-1, 640, 10**6])
def test_ids_out_of_range(tokenizer, bad_id):
    with pytest.raises(ValueError, match=f"{bad_id} is out of range"):
        tokenizer.detokenize([4, bad_id])
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.detokenize(np.array([[4, bad_id]]))
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.id_to_token(bad_id)


@pytest.mark.parametrize(
    "bad_input, message",
    [
        ("text", "sequence of token ids, got str"),
        (None, "sequence of token ids, got NoneType"),
        (7, "sequence of token ids, got int"),
        ([1.5, 2.0], "sequence of token ids, got float"),
        (np.array([1.5, 2.0]), "integers, got float"),
        ([True, False], "sequence of token ids, got bool"),
        ([[1, 2], 3], "sequence of token ids, got int"),
        (np.zeros((1, 2, 3), dtype="int32"), r"shape \(1, 2, 3\)"),
    ],
)
def test_detokenize_rejects_bad_input(tokenizer, bad_input, message):
    with pytest.raises(TypeError, match=message):
        tokenizer.detokenize(bad_input)


def test_token_lookup_errors(tokenizer):
    with pytest.raises(ValueError, match="'not-a-piece' is not in the vocabulary"):
        tokenizer.token_to_id("not-a-piece")
    with pytest.raises(TypeError, match="token string"):
        tokenizer.token_to_id(4)
    with pytest.raises(TypeError, match="integers"):
        tokenizer.id_to_token("4")


def test_docstring_example(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    results = doctest.testmod(tokenizer_module)
    assert results.attempted > 0
    assert results.failed == 0


def test_imports_no_backend():
    # Loaded on its own (the package __init__ imports keras for the model).
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('t', {str(tokenizer_module.__file__)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'keras', 'torch', 'jax', 'tensorflow'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
