"""PyTorch generation settings: intra-op threads and the compiled decode step.

``KERAS_GEMMA_TORCH_THREADS`` and ``KERAS_GEMMA_TORCH_COMPILE`` are read by
``keras_gemma/backend.py``; these tests check what they select, that bad
values are our error, that generation gives PyTorch its thread setting
back, and (slow: it compiles) that the compiled step decodes the same
greedy tokens as eager PyTorch.
"""

import keras
import numpy as np
import pytest

import keras_gemma
from keras_gemma import backend
from tests.tiny_models import TINY_CONFIGS

torch_only = pytest.mark.skipif(
    keras.config.backend() != "torch", reason="PyTorch generation settings"
)


def tiny_model():
    keras.utils.set_random_seed(0)
    model = keras_gemma.GemmaCausalLM(
        backbone=keras_gemma.GemmaBackbone(**TINY_CONFIGS["gemma3"]), preprocessor=None
    )
    model.compile(sampler="greedy")
    return model


def greedy(model, new=6):
    ids = np.array([[2, 17, 230, 45, 88, 301, 9, 77]], "int32")
    out = model.generate(
        {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)},
        max_length=ids.shape[1] + new, stop_token_ids=None,
    )
    return np.asarray(out["token_ids"])


@torch_only
@pytest.mark.parametrize("setting, expected", [("3", 3), ("1", 1), (" 2 ", 2)])
def test_thread_setting_is_a_number_of_threads(monkeypatch, setting, expected):
    monkeypatch.setenv(backend.TORCH_THREADS_SETTING, setting)
    assert backend.torch_inference_threads() == expected


@torch_only
def test_auto_threads_are_half_of_torchs_at_least_one(monkeypatch):
    import torch

    monkeypatch.setenv(backend.TORCH_THREADS_SETTING, "auto")
    assert backend.torch_inference_threads() == max(1, torch.get_num_threads() // 2)


@torch_only
@pytest.mark.parametrize("setting", ["0", "-2", "many"])
def test_bad_thread_setting_is_our_error(monkeypatch, setting):
    monkeypatch.setenv(backend.TORCH_THREADS_SETTING, setting)
    with pytest.raises(ValueError, match="KERAS_GEMMA_TORCH_THREADS"):
        backend.torch_inference_threads()


@torch_only
def test_generation_gives_torch_its_threads_back(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv(backend.TORCH_THREADS_SETTING, "1")
    seen = []
    model = tiny_model()
    original = model.backbone.compute_logits

    def spy(hidden):
        seen.append(torch.get_num_threads())
        return original(hidden)

    monkeypatch.setattr(model.backbone, "compute_logits", spy)
    greedy(model)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


@torch_only
def test_compile_setting(monkeypatch):
    model = tiny_model()
    for setting, expected in (("0", False), ("off", False), ("1", True), ("auto", False)):
        monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, setting)
        assert backend.torch_compiles(model) is expected, setting
    monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, "sometimes")
    with pytest.raises(ValueError, match="KERAS_GEMMA_TORCH_COMPILE"):
        backend.torch_compiles(model)


@torch_only
@pytest.mark.slow
def test_compiled_decode_step_gives_the_eager_tokens(monkeypatch):
    monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, "0")
    eager = greedy(tiny_model(), new=12)
    monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, "1")
    compiled = greedy(tiny_model(), new=12)
    np.testing.assert_array_equal(compiled, eager)
