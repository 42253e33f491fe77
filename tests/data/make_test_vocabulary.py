"""Train the tiny SentencePiece vocabulary used by the tokenizer tests.

Run from the repository root:

    python tests/data/make_test_vocabulary.py

It writes `tests/data/test_vocabulary.spm` next to this script. The trainer
settings mirror Gemma's real vocabulary (BPE, byte fallback, split digits,
identity normalization, no dummy prefix, whitespace kept as-is, the same
special-token ids, turn markers as user-defined pieces) so the tests exercise
the same code paths as a real checkpoint, with a vocabulary small enough to
commit. Training is deterministic, so rerunning it reproduces the file.
"""

import io
import pathlib

import sentencepiece

OUTPUT_PATH = pathlib.Path(__file__).parent / "test_vocabulary.spm"

# 256 byte pieces + 6 specials leave room for a few hundred merges.
VOCAB_SIZE = 640

CORPUS = """\
The quick brown fox jumps over the lazy dog.
A journey of a thousand miles begins with a single step.
Language models predict the next token given the previous tokens.
Gemma is a family of lightweight, open models built from research.
It was a bright cold day in April, and the clocks were striking thirteen.
Please call me at 555-0123 or 555-0199 before 9:30 a.m. on 2024-03-15.
The total came to $1,234.56 (including 7.5% tax); pay by 31/12/2025!
Pi is roughly 3.14159, e is about 2.71828, and sqrt(2) is 1.41421.
In 1969, 3 astronauts flew 384,400 km to the Moon and back again.
Questions? Answers! Lists: apples, pears; oranges... "quotes" and 'single quotes'.
Brackets [like these], braces {like these}, and <angle brackets> appear in text.
Email someone@example.com or visit https://example.org/path?query=1&x=2#frag.
Café, naïve, résumé, façade, jalapeño, über, Zürich, São Paulo, Kraków.
Déjà vu: the crème brûlée at the café was très délicieux.
Müller and Schröder met Ångström in Malmö; señor Núñez arrived later.
Ελληνικά, русский язык, 日本語, 中文, 한국어 appear rarely in this corpus.
Emoji are fun 😀 and sometimes 🚀 shows up next to ✨ sparkles.
I love pizza 🍕 and coffee ☕ in the morning.
Tabs\tand\tspaces    are kept, and   runs   of    spaces   matter.
    Indented lines keep their leading whitespace.
Line one
Line two

Line four after a blank line.
<start_of_turn>user
What is the capital of France?<end_of_turn>
<start_of_turn>model
The capital of France is Paris.<end_of_turn>
<start_of_turn>user
Write a haiku about autumn.<end_of_turn>
<start_of_turn>model
Leaves drift on cold wind,
amber light on quiet paths,
the year breathes slowly.<end_of_turn>
def fibonacci(n: int) -> list[int]:
    \"\"\"Return the first n Fibonacci numbers.\"\"\"
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]


class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value


for i in range(10):
    if i % 2 == 0:
        print(f"{i} is even")
    else:
        print(f"{i} is odd")

import numpy as np
x = np.zeros((3, 4), dtype="float32")
y = x @ x.T + 1e-6
assert y.shape == (3, 3), "unexpected shape"
result = {"name": "gemma", "layers": 18, "heads": 8, "dim": 2048}
values = [v * 2 for v in result.values() if isinstance(v, int)]
with open("data.txt", "r", encoding="utf-8") as f:
    lines = [line.rstrip("\\n") for line in f]
try:
    total = sum(int(s) for s in lines)
except ValueError as error:
    raise RuntimeError(f"bad input: {error}") from error
"""

# Repeat the prose a few times so frequent words get merged; the trainer
# treats each line as one sentence.
SENTENCES = CORPUS.splitlines() * 4


def train(sentences, user_defined_symbols=("<start_of_turn>", "<end_of_turn>")):
    """The serialized SentencePiece model trained on ``sentences``."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        pad_id=0,
        pad_piece="<pad>",
        eos_id=1,
        eos_piece="<eos>",
        bos_id=2,
        bos_piece="<bos>",
        unk_id=3,
        unk_piece="<unk>",
        user_defined_symbols=list(user_defined_symbols),
        max_sentence_length=4096,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def main():
    model = io.BytesIO(train(SENTENCES))
    OUTPUT_PATH.write_bytes(model.getvalue())

    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    ids = {piece: processor.piece_to_id(piece) for piece in specials}
    print(f"wrote {OUTPUT_PATH} ({OUTPUT_PATH.stat().st_size} bytes)")
    print(f"vocabulary size {processor.get_piece_size()}, special ids {ids}")


if __name__ == "__main__":
    main()
