"""`keras_gemma.evaluation.LMEvalModel` under EleutherAI's lm-eval: a task
defined in this repository over local data (tests/data/eval_capitals_lmeval.yaml,
the bundled `capitals` items) gives the same accuracy through lm-eval as
through our own evaluator, and the three request types agree with direct
computations. lm-eval runs offline here (its `json` dataset reads a local
file)."""

import numpy as np
import pytest
from conftest import TESTS_DIR
from conftest import to_numpy

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from keras_gemma.evaluation import LMEvalModel  # noqa: E402
from keras_gemma.evaluation import generative  # noqa: E402
from keras_gemma.evaluation import lm_eval_adapter  # noqa: E402
from keras_gemma.evaluation import tasks  # noqa: E402

from test_evaluation import hand_loglikelihood  # noqa: E402
from test_evaluation import tiny_model  # noqa: E402

REPO = TESTS_DIR.parent
TASK_YAML = TESTS_DIR / "data" / "eval_capitals_lmeval.yaml"


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma_mqa")


@pytest.fixture(scope="module")
def lm(model):
    return LMEvalModel(model=model, batch_size=8)


def request(kind, arguments, index=0):
    return Instance(request_type=kind, doc={}, arguments=arguments, idx=index)


def test_lm_eval_gives_the_same_accuracy_as_our_evaluator(lm, model, monkeypatch):
    monkeypatch.chdir(REPO)  # the YAML names its data file relative to the repository
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output = lm_eval_adapter.simple_evaluate(lm, [str(TASK_YAML)], log_samples=True)
    theirs = output["results"]["capitals_lmeval"]
    ours = tasks.evaluate_task(model, tasks.load_task(tasks.bundled("capitals")), scorer=lm.scorer)
    assert theirs["sample_len"] == ours["metrics"]["items"] == 32
    assert theirs["acc,none"] == ours["metrics"]["acc"]
    assert theirs["acc_norm,none"] == ours["metrics"]["acc_norm"]
    # Item by item: the same prompts and the same log-likelihoods.
    samples = sorted(output["samples"]["capitals_lmeval"], key=lambda s: s["doc_id"])
    for sample, detail in zip(samples, ours["details"]):
        item = tasks.load_task(tasks.bundled("capitals")).items[detail["index"]]
        assert [a[0] for a in sample["arguments"]] == [
            f"Question: What is the capital of {item['country']}?\nAnswer:"] * 4
        assert [r[0][0] for r in sample["resps"]] == pytest.approx(detail["logprobs"], abs=1e-9)


def test_loglikelihood_equals_a_hand_computed_forward_pass(lm, model):
    pairs = [("Hello", " world"), ("", "The start"), ("1 2 3 ", "4")]
    results = lm.loglikelihood([request("loglikelihood", p, i) for i, p in enumerate(pairs)])
    tokenizer = model.preprocessor.tokenizer
    for (context, continuation), (logprob, greedy) in zip(pairs, results):
        # lm-eval's split: trailing spaces move to the continuation.
        stripped = context.rstrip()
        moved = context[len(stripped):] + continuation
        context_ids = [tokenizer.bos_token_id] + (list(tokenizer.tokenize([stripped])[0]) if stripped else [])
        whole = list(tokenizer.tokenize([stripped + moved])[0])
        expected, expected_greedy = hand_loglikelihood(model, context_ids, whole[len(context_ids) - 1:])
        assert logprob == pytest.approx(expected, abs=2e-4)
        assert greedy == expected_greedy


def test_rolling_loglikelihood_is_the_whole_text_after_bos(lm, model):
    text = "The quick brown fox jumps over the lazy dog and runs away"
    tokenizer = model.preprocessor.tokenizer
    ids = list(tokenizer.tokenize([text])[0])
    (total,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", (text,))])
    expected, _ = hand_loglikelihood(model, [tokenizer.bos_token_id], ids)
    assert total == pytest.approx(expected, abs=2e-4)
    # With windows shorter than the text, every token is still scored once:
    # the windows' sum equals the hand sum over those same windows.
    short = LMEvalModel(model=model, batch_size=8, max_length=5)
    (windowed,) = short.loglikelihood_rolling([request("loglikelihood_rolling", (text,))])
    # lm-eval's windows (its LM.loglikelihood_rolling docstring): the first
    # predicts 5 tokens after <bos>; each next one predicts up to 5 more,
    # seeing the tokens before them so that input stays 5 tokens long.
    first = min(5, len(ids))
    by_hand, predicted = hand_loglikelihood(model, [tokenizer.bos_token_id], ids[:first])[0], first
    while predicted < len(ids):
        count = min(5, len(ids) - predicted)
        context = ids[predicted - (6 - count):predicted]
        by_hand += hand_loglikelihood(model, context, ids[predicted:predicted + count])[0]
        predicted += count
    assert windowed == pytest.approx(by_hand, abs=5e-4)
    assert windowed != pytest.approx(total, abs=1e-3)  # less context, other numbers


def test_generate_until_follows_until_and_max_gen_toks(lm, model):
    prompts = ["The quick brown fox", "Hello"]
    requests = [request("generate_until", (p, {"until": ["\n\n"], "max_gen_toks": 10}), i)
                for i, p in enumerate(prompts)]
    expected = generative.generate_until(model, prompts, ["\n\n"], max_new_tokens=10)
    assert lm.generate_until(requests) == expected
    full = model.generate("Hello", max_length=20, strip_prompt=True)
    stop = full[2:4]
    (cut,) = lm.generate_until([request("generate_until", ("Hello", {"until": stop, "max_gen_toks": 15}))])
    assert cut == full[: full.find(stop)]


def test_the_adapter_needs_a_preset_or_a_model(model):
    with pytest.raises(ValueError, match="exactly one of `preset` or `model`"):
        LMEvalModel()
    with pytest.raises(ValueError, match="exactly one of `preset` or `model`"):
        LMEvalModel(preset="gemma3_270m", model=model)


def test_a_backend_other_than_the_running_one_is_refused(model):
    import keras

    other = next(b for b in ("jax", "tensorflow", "torch") if b != keras.config.backend())
    with pytest.raises(ValueError, match=f"backend='{other}' was asked for"):
        LMEvalModel(model=model, backend=other)
    assert np.isfinite(to_numpy(model.score(np.array([[2, 5, 9]], "int32"))).all())


def test_the_adapter_loads_a_preset(model, tmp_path):
    import keras

    from keras_gemma import preset_io

    preset_io.save_preset(tmp_path / "preset", backbone=model.backbone,
                          preprocessor=model.preprocessor)
    loaded = LMEvalModel(preset=str(tmp_path / "preset"), backend=keras.config.backend())
    pair = [request("loglikelihood", ("Hello", " world"))]
    assert loaded.loglikelihood(pair)[0][0] == pytest.approx(
        LMEvalModel(model=model).loglikelihood(pair)[0][0], abs=1e-5)


def test_eval_command_runs_an_lm_eval_task(lm, model, monkeypatch, tmp_path, capsys):
    import argparse

    from keras_gemma.evaluation import command

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    args = argparse.Namespace(
        task=f"lm-eval:{TASK_YAML}", preset="tiny", limit=8, num_fewshot=None, batch_size=8,
        quantize=None, dtype=None, adapter=None, max_new_tokens=None,
        out=str(tmp_path / "results.json"))
    assert command.run(args, lambda args: model) == 0
    import json

    results = json.loads((tmp_path / "results.json").read_text())
    expected = tasks.evaluate_task(model, tasks.load_task(tasks.bundled("capitals")), limit=8,
                                   scorer=lm.scorer)
    assert results["metrics"]["capitals_lmeval"]["acc"] == expected["metrics"]["acc"]
    assert "capitals_lmeval  acc" in capsys.readouterr().out
