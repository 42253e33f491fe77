"""LoRA fine-tuning: adapters, fit, saving, merging, and backend agreement."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import TESTS_DIR, to_numpy
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights

import keras_gemma
from keras_gemma.checkpoints import assign_weights

CONFIG = TINY_CONFIGS["gemma_mqa"]  # hidden 32, ff 64, 4 x 16 query, 1 x 16 kv
INPUTS = {"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK}
FACT = "Zorblat Quenn lives in the city of Marravel."


def tiny_backbone(**overrides):
    backbone = keras_gemma.GemmaBackbone(**{**CONFIG, **overrides})
    assign_weights(backbone, random_weights(CONFIG, embedding_scale=0.3), "tiny")
    return backbone


def tiny_lm(tokenizer, **overrides):
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=32)
    return keras_gemma.GemmaCausalLM(tiny_backbone(**overrides), preprocessor)


def hidden(backbone):
    return to_numpy(backbone(INPUTS))


def randomize_adapters(backbone, seed=0):
    rng = np.random.default_rng(seed)
    for variable in backbone.trainable_weights:
        variable.assign(rng.standard_normal(variable.shape).astype("float32") * 0.2)


@pytest.mark.parametrize("target,rank", [
    (("query", "value"), 4),
    (("query", "key", "value", "output"), 2),
    (("gate", "up", "down"), 3),
])
def test_trainable_parameters_follow_the_formula(target, rank):
    backbone = tiny_backbone()
    backbone.enable_lora(rank, target=target)
    hidden_dim, ff = CONFIG["hidden_dim"], CONFIG["intermediate_dim"]
    q_width = CONFIG["num_query_heads"] * CONFIG["head_dim"]
    kv_width = CONFIG["num_key_value_heads"] * CONFIG["head_dim"]
    shapes = {"query": (hidden_dim, q_width), "key": (hidden_dim, kv_width),
              "value": (hidden_dim, kv_width), "output": (q_width, hidden_dim),
              "gate": (hidden_dim, ff), "up": (hidden_dim, ff), "down": (ff, hidden_dim)}
    expected = CONFIG["num_layers"] * sum(rank * sum(shapes[t]) for t in target)
    assert sum(int(np.prod(v.shape)) for v in backbone.trainable_weights) == expected
    assert all(v.dtype == "float32" for v in backbone.trainable_weights)
    assert all("lora_kernel" in v.path for v in backbone.trainable_weights)


def test_output_unchanged_at_step_zero():
    backbone = tiny_backbone()
    before = hidden(backbone)
    backbone.enable_lora(4)
    np.testing.assert_array_equal(hidden(backbone), before)


def test_update_is_standard_lora_form():
    """The adapted projection is x @ (W + alpha / rank * A @ B), computed by hand."""
    backbone = tiny_backbone()
    backbone.enable_lora(4, alpha=8, target=("query",))
    randomize_adapters(backbone)
    layer = backbone.decoder_blocks[0].attention.query
    x = np.random.default_rng(1).standard_normal((3, CONFIG["hidden_dim"])).astype("float32")
    w = to_numpy(layer._kernel.value)
    a, b = to_numpy(layer.lora_kernel_a.value), to_numpy(layer.lora_kernel_b.value)
    np.testing.assert_allclose(to_numpy(layer(x)), x @ (w + 2.0 * a @ b), atol=1e-5)


def test_bad_arguments():
    backbone = tiny_backbone()
    for rank in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="rank"):
            backbone.enable_lora(rank)
    with pytest.raises(ValueError, match="matches no layer.*query"):
        backbone.enable_lora(4, target=("q_proj",))
    backbone.enable_lora(4)
    with pytest.raises(ValueError, match="already enabled"):
        backbone.enable_lora(4)


def test_adapter_operations_need_lora(tmp_path):
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="not enabled"):
        backbone.save_lora_weights(tmp_path / "a.lora.h5")
    with pytest.raises(ValueError, match="not enabled"):
        backbone.merge_lora()


def test_save_and_load_adapter(tmp_path):
    backbone = tiny_backbone()
    backbone.enable_lora(4, alpha=8, target=("query", "value", "down"))
    randomize_adapters(backbone)
    expected = hidden(backbone)
    path = tmp_path / "adapter.lora.h5"
    backbone.save_lora_weights(path)
    model_bytes = 4 * backbone.count_params()
    assert os.path.getsize(path) < 0.2 * model_bytes
    fresh = tiny_backbone()
    fresh.load_lora_weights(path)
    assert fresh.lora_config == backbone.lora_config
    np.testing.assert_array_equal(hidden(fresh), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.lora.h5"]  # no temp files


def test_adapter_for_another_model_is_refused(tmp_path):
    backbone = tiny_backbone()
    backbone.enable_lora(4)
    backbone.save_lora_weights(tmp_path / "a.lora.h5")
    other = keras_gemma.GemmaBackbone(**{**CONFIG, "hidden_dim": 48})
    with pytest.raises(ValueError, match="different model.*hidden_dim"):
        other.load_lora_weights(tmp_path / "a.lora.h5")
    different_rank = tiny_backbone()
    different_rank.enable_lora(8)
    with pytest.raises(ValueError, match="rank"):
        different_rank.load_lora_weights(tmp_path / "a.lora.h5")
    with pytest.raises(FileNotFoundError):
        tiny_backbone().load_lora_weights(tmp_path / "missing.lora.h5")


def test_merge_keeps_outputs_and_removes_adapters(tmp_path):
    backbone = tiny_backbone()
    backbone.enable_lora(4, target=("query", "value", "gate", "down"))
    randomize_adapters(backbone)
    expected = hidden(backbone)
    backbone.merge_lora()
    np.testing.assert_allclose(hidden(backbone), expected, atol=1e-5)
    assert backbone.count_params() == keras_gemma.GemmaBackbone.count_parameters(CONFIG)
    assert not any("lora" in v.path for v in backbone.weights)
    assert backbone.lora_config is None
    backbone.enable_lora(2)  # a new adapter can follow


def test_preset_saved_with_adapter_has_it_merged(tmp_path):
    backbone = tiny_backbone()
    backbone.enable_lora(4)
    randomize_adapters(backbone)
    backbone.save_to_preset(tmp_path / "preset")
    loaded = keras_gemma.GemmaBackbone.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(hidden(loaded), hidden(backbone), atol=1e-5)


def test_fit_learns_a_fact(tokenizer):
    """Loss falls by more than half and generate recalls a made-up fact."""
    keras.utils.set_random_seed(0)
    model = tiny_lm(tokenizer)
    prompt = "Zorblat Quenn lives in the city of"
    base_answer = model.generate(prompt, max_length=32, strip_prompt=True)
    assert "Marravel" not in base_answer
    model.backbone.enable_lora(16, target=("query", "value", "gate", "up", "down"))
    model.compile(optimizer=keras.optimizers.Adam(2e-2))
    texts = [FACT, "The secret number is 4172.", "def add(a, b):\n    return a + b"]
    # One step per epoch: 100 steps.
    history = model.fit(texts * 4, batch_size=12, epochs=100, verbose=0)
    losses = history.history["loss"]
    print(f"LoRA loss: {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
    assert losses[-1] < 0.5 * losses[0]
    answer = model.generate(prompt, max_length=32, strip_prompt=True)
    assert answer.strip().startswith("Marravel"), answer


def test_fit_on_prompt_response_pairs_counts_only_responses(tokenizer):
    model = tiny_lm(tokenizer)
    x, y, weights = model.preprocessor(
        {"prompts": ["Question: two plus two?"], "responses": [" Four."]}
    )
    prompt_length = len(tokenizer.tokenize("Question: two plus two?"))
    response_length = len(tokenizer.tokenize(" Four."))
    # Labels are shifted by one: <bos> prompt -> first label is prompt[1].
    assert weights[0].sum() == response_length + 1  # response tokens + <eos>
    assert weights[0, : prompt_length].sum() == 0
    assert weights[0, prompt_length] == 1
    model.backbone.enable_lora(4)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit({"prompts": ["Q: 2+2?"] * 8, "responses": [" 4"] * 8},
                        batch_size=4, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_validation_split_and_data(tokenizer):
    model = tiny_lm(tokenizer)
    model.backbone.enable_lora(2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    texts = [FACT, "Another sentence here.", "And a third one."] * 4
    history = model.fit(texts, batch_size=4, epochs=2, validation_split=0.25, verbose=0)
    assert "val_loss" in history.history
    history = model.fit(texts, batch_size=4, epochs=1, validation_data=texts[:3], verbose=0)
    assert np.isfinite(history.history["val_loss"][0])


def test_fit_rejects_bad_data(tokenizer):
    model = tiny_lm(tokenizer)
    model.compile()
    with pytest.raises(ValueError, match="empty"):
        model.fit([], epochs=1)
    with pytest.raises(TypeError, match="list of strings"):
        model.fit([1, 2, 3], epochs=1)
    with pytest.raises(ValueError, match="prompts.*responses"):
        model.fit({"prompts": ["a", "b"], "responses": ["c"]}, epochs=1)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "bfloat16_base"])
def test_fit_in_low_precision(tokenizer, policy):
    if policy == "mixed_bfloat16":
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        try:
            model = tiny_lm(tokenizer)
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
    else:
        model = tiny_lm(tokenizer, dtype="bfloat16")
    model.backbone.enable_lora(4)
    assert all(v.dtype == "float32" for v in model.backbone.trainable_weights)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit([FACT] * 8, batch_size=4, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_checkpoint_and_resume(tokenizer, tmp_path):
    texts = [FACT, "The secret number is 4172."] * 4
    model = tiny_lm(tokenizer)
    model.backbone.enable_lora(8, target=("query", "value", "down"))
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    path = str(tmp_path / "epoch_{epoch}.lora.h5")
    first = model.fit(texts, batch_size=8, epochs=10, verbose=0, shuffle=False,
                      callbacks=[keras_gemma.LoRACheckpoint(path)])
    assert sorted(os.listdir(tmp_path))[0] == "epoch_1.lora.h5"
    resumed = tiny_lm(tokenizer)
    resumed.backbone.load_lora_weights(tmp_path / "epoch_10.lora.h5")
    resumed.compile(optimizer=keras.optimizers.Adam(1e-2))
    second = resumed.fit(texts, batch_size=8, epochs=12, initial_epoch=10, verbose=0,
                         shuffle=False)
    start, end = first.history["loss"][0], first.history["loss"][-1]
    # The resumed curve starts where the first run ended, not from scratch.
    assert abs(second.history["loss"][0] - end) < 0.25 * (start - end)


@pytest.mark.skipif(keras.config.backend() != "jax",
                    reason="runs all three backends itself, once per suite")
def test_backends_agree():
    """Same weights, adapter init and data order: the three backends' LoRA
    loss curves (tests/lora_steps.py in a subprocess each) agree."""
    curves = {}
    for backend in ("jax", "tensorflow", "torch"):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        result = subprocess.run(
            [sys.executable, str(TESTS_DIR / "lora_steps.py"), "20"],
            capture_output=True, text=True, env=env, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        curves[backend] = np.array(json.loads(result.stdout.strip().splitlines()[-1])["losses"])
    for backend, losses in curves.items():
        print(f"{backend:10} first {losses[0]:.6f} last {losses[-1]:.6f}")
    reference = curves["jax"]
    for backend in ("tensorflow", "torch"):
        assert abs(curves[backend][0] - reference[0]) <= 1e-4
        np.testing.assert_allclose(curves[backend], reference, rtol=1e-3)
    assert reference[-1] < reference[0]


def test_fit_takes_tf_data_and_numpy_strings(tokenizer):
    tf = pytest.importorskip("tensorflow")
    model = tiny_lm(tokenizer)
    model.backbone.enable_lora(2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    texts = [FACT, "The secret number is 4172."] * 4
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(4)
    history = model.fit(dataset, epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    history = model.fit(np.array(texts), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
