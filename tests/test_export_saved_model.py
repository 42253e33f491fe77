"""TensorFlow SavedModel export (keras_gemma/export/saved_model.py).

The SavedModels are loaded in a fresh process that can import only
TensorFlow (tests/isolated_process.py). Their logits are checked against
transformers' (the cached oracles of test_parity.py and test_gemma4.py) as
well as ours, and their greedy tokens against transformers' greedy
continuation (Gemma 4) and our ``generate``.

The export traces with TensorFlow, so it runs on that backend only; on the
others the one test here is the error telling the user what to do.
"""

import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import TESTS_DIR
from export_models import (GEMMA4, ORACLE_LOGITS, int8_and_lora_models, oracle_models,
                           our_logits, small_lm)
from isolated_process import run_isolated
from tiny_models import PADDING_MASK, TOKEN_IDS

from keras_gemma.export.saved_model import export_saved_model

on_tensorflow = pytest.mark.skipif(
    keras.config.backend() != "tensorflow",
    reason="the SavedModel export traces with TensorFlow (KERAS_BACKEND=tensorflow)",
)
NEW_TOKENS = 8
# A token the Gemma 4 model generates for the second prompt only (its 6th
# new token, see the oracle), so that row stops early and the other runs on.
GEMMA4_STOP = int(GEMMA4["ple_greedy"][1, 5])

_LOAD_AND_RUN = """
import numpy as np, tensorflow as tf
inputs = np.load("inputs.npz")
served = tf.saved_model.load("saved_model")
logits = served.signatures["serving_default"](
    token_ids=tf.constant(inputs["token_ids"]), padding_mask=tf.constant(inputs["padding_mask"]))
generated = served.signatures["generate"](
    token_ids=tf.constant(inputs["prompt_ids"]), padding_mask=tf.constant(inputs["prompt_mask"]))
np.savez(
    "outputs.npz", logits=logits["logits"].numpy(), token_ids=generated["token_ids"].numpy(),
    padding_mask=generated["padding_mask"].numpy(),
    dtypes=[v.dtype.name for v in
            (logits["logits"], generated["token_ids"], generated["padding_mask"])],
)
"""


def prompts():
    """The test prompts right-padded with room for NEW_TOKENS more."""
    pad = ((0, 0), (0, NEW_TOKENS))
    return np.pad(TOKEN_IDS, pad), np.pad(PADDING_MASK, pad)


# One test per model, so that under pytest-xdist each model is exported and
# loaded once, in whichever worker runs its test.
@on_tensorflow
@pytest.mark.parametrize("name", ["gemma3", "gemma4"])
def test_fresh_process_logits_and_greedy_tokens(name, tmp_path):
    lm = oracle_models(name)
    stop_ids = [GEMMA4_STOP] if name == "gemma4" else "auto"
    path = export_saved_model(lm, tmp_path / "saved_model", stop_token_ids=stop_ids)
    assert path == str(tmp_path / "saved_model")
    prompt_ids, prompt_mask = prompts()
    np.savez(
        tmp_path / "inputs.npz", token_ids=TOKEN_IDS, padding_mask=PADDING_MASK.astype("int32"),
        prompt_ids=prompt_ids, prompt_mask=prompt_mask.astype("int32"),
    )
    run_isolated(_LOAD_AND_RUN, cwd=tmp_path)
    outputs = np.load(tmp_path / "outputs.npz")
    assert list(outputs["dtypes"]) == ["float32", "int32", "int32"]

    # serving_default: our logits and transformers'. Graph and eager
    # TensorFlow order float sums differently: ~3e-5 apart after Gemma 4's
    # 10 layers.
    logits = outputs["logits"]
    assert logits.shape == (2, 12, 640)
    np.testing.assert_allclose(logits, our_logits(lm), atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        logits[PADDING_MASK], ORACLE_LOGITS[name][PADDING_MASK], atol=1e-4, rtol=0
    )

    # generate: our generate's tokens and output mask.
    ours = lm.generate({"token_ids": prompt_ids, "padding_mask": prompt_mask},
                       stop_token_ids=stop_ids)
    np.testing.assert_array_equal(outputs["token_ids"], ours["token_ids"])
    np.testing.assert_array_equal(outputs["padding_mask"], ours["padding_mask"])
    if name == "gemma4":
        # transformers' greedy continuation of each prompt alone; the second
        # row's mask ends where it produced the stop token.
        lengths = PADDING_MASK.sum(axis=1)
        for row, length in enumerate(lengths):
            np.testing.assert_array_equal(
                outputs["token_ids"][row, length : length + NEW_TOKENS], GEMMA4["ple_greedy"][row]
            )
        assert outputs["padding_mask"][1].sum() == lengths[1] + 5
        assert outputs["padding_mask"][0].all()


@on_tensorflow
def test_int8_and_lora_models_export_as_they_compute(tmp_path):
    import tensorflow as tf

    models, float_logits = int8_and_lora_models()
    inputs = dict(token_ids=tf.constant(TOKEN_IDS),
                  padding_mask=tf.constant(PADDING_MASK.astype("int32")))
    dtypes = {}
    for name, lm in models.items():
        export_saved_model(lm, tmp_path / name)
        served = tf.saved_model.load(str(tmp_path / name))
        logits = served.signatures["serving_default"](**inputs)["logits"].numpy()
        np.testing.assert_allclose(logits, our_logits(lm), atol=1e-5, rtol=1e-5)
        # int8 rounding, the adapter: both change the float model's numbers.
        assert np.abs(logits - float_logits)[PADDING_MASK].max() > 1e-2
        dtypes[name] = {v.dtype.name for v in served.model_variables}
    assert dtypes == {"int8": {"int8", "float32"}, "lora": {"float32"}}


@on_tensorflow
def test_refuses_a_full_destination_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import tensorflow as tf

    lm = small_lm()
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*overwrite"):
        export_saved_model(lm, target)
    assert (target / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="no quantization"):
        export_saved_model(lm, tmp_path / "q", quantization="q8_0")
    with pytest.raises(TypeError, match="GemmaCausalLM"):
        export_saved_model(lm.backbone, tmp_path / "b")

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(lm, tmp_path / "new", overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(lm, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    monkeypatch.undo()
    export_saved_model(lm, target, overwrite=True)
    assert (target / "saved_model.pb").exists() and not (target / "keep.txt").exists()
    assert (target / "assets.extra" / "vocabulary.spm").exists()


@pytest.mark.skipif(keras.config.backend() == "tensorflow",
                    reason="the error is for other backends")
def test_other_backends_are_told_what_to_run(tmp_path):
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow.*--format saved_model"):
        export_saved_model(small_lm(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_required_backends_are_readable_before_keras_is_imported():
    """The command line reads REQUIRED_BACKEND, then picks the backend."""
    code = ("import sys; from keras_gemma.export import saved_model, torch_export; "
            "print(saved_model.REQUIRED_BACKEND, torch_export.REQUIRED_BACKEND, "
            "sorted({'keras', 'tensorflow', 'torch', 'jax'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=TESTS_DIR.parent, timeout=120)
    assert result.stdout.split() == ["tensorflow", "torch", "[]"], result.stderr
