"""PyTorch generation settings: intra-op threads and the compiled decode step.

``KERAS_GEMMA_TORCH_THREADS`` and ``KERAS_GEMMA_TORCH_COMPILE`` are read by
``keras_gemma/backend.py``; these tests check what they select, that bad
values are our error, that generation gives PyTorch its thread setting
back, and (slow: it compiles) that the compiled step decodes the same
greedy tokens as eager PyTorch; the traced step (default for real models)
gives the eager tokens for every family, sampler and int8.
"""


import keras
import numpy as np
import pytest

import keras_gemma
from keras_gemma import backend
from tests.tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS

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
@pytest.mark.parametrize("torch_threads, cores, busy, expected", [
    (2, 2, 0, 2),     # idle cores: all of torch's threads
    (2, 2, 1, 1),     # one other task running: half
    (2, 2, None, 1),  # cannot tell (not Linux): half
    (8, 16, 8, 8),
    (8, 16, 9, 4),
    (1, 1, 3, 1),     # at least one
])
def test_auto_threads_are_all_on_idle_cores_else_half(monkeypatch, torch_threads, cores, busy, expected):
    import torch

    monkeypatch.setenv(backend.TORCH_THREADS_SETTING, "auto")
    monkeypatch.setattr(torch, "get_num_threads", lambda: torch_threads)
    monkeypatch.setattr(backend.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(backend, "_other_runnable_tasks", lambda: busy)
    assert backend.torch_inference_threads() == expected


def test_other_runnable_tasks_is_a_count_or_none():
    busy = backend._other_runnable_tasks()
    assert busy is None or (isinstance(busy, int) and busy >= 0)


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

    def spy(hidden, *args):
        seen.append(torch.get_num_threads())
        return original(hidden, *args)

    monkeypatch.setattr(model.backbone, "compute_logits", spy)
    greedy(model)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


@torch_only
def test_compile_setting(monkeypatch):
    model = tiny_model()
    for setting, expected in (
        ("0", "eager"), ("eager", "eager"), ("off", "eager"), ("trace", "trace"),
        ("1", "inductor"), ("inductor", "inductor"), ("auto", "eager"), ("", "eager"),
    ):
        monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, setting)
        assert backend.torch_step_mode(model) == expected, setting
        assert backend.torch_compiles(model) is (expected != "eager"), setting
    monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, "sometimes")
    with pytest.raises(ValueError, match="KERAS_GEMMA_TORCH_COMPILE"):
        backend.torch_step_mode(model)


@torch_only
def test_auto_traces_models_of_100m_parameters(monkeypatch):
    model = tiny_model()
    monkeypatch.delenv(backend.TORCH_COMPILE_SETTING, raising=False)
    monkeypatch.setattr(model, "count_params", lambda: backend.TORCH_COMPILE_MIN_PARAMETERS)
    assert backend.torch_step_mode(model) == "trace"


def batch_generate(model, token_ids, padding_mask, new=10):
    out = model.generate(
        {"token_ids": token_ids, "padding_mask": padding_mask},
        max_length=token_ids.shape[1] + new, stop_token_ids=None,
    )
    return np.asarray(out["token_ids"])


def tiny_family_model(family, sampler, quantize=False):
    keras.utils.set_random_seed(0)
    model = keras_gemma.GemmaCausalLM(
        backbone=keras_gemma.GemmaBackbone(**TINY_CONFIGS[family]), preprocessor=None
    )
    if quantize:
        model.quantize("int8")
    model.compile(sampler=sampler)
    return model


@torch_only
@pytest.mark.parametrize("family, sampler, quantize", [
    ("gemma_mqa", "greedy", False),
    ("gemma_mha", "greedy", False),
    ("gemma2", "greedy", False),
    ("gemma3", "greedy", False),
    ("gemma3", "greedy", True),
    ("gemma3", lambda: keras_gemma.samplers.TopKSampler(k=5, seed=3), False),
    ("gemma2", lambda: keras_gemma.samplers.TopPSampler(p=0.9, seed=3), False),
])
def test_traced_decode_step_gives_the_eager_tokens(monkeypatch, family, sampler, quantize):
    # A padded batch of 2 past the sliding window, then a second prompt of
    # the same shape (the trace is reused: prompt tensors must be its
    # inputs, not constants), then new weights (the same: variables).
    second_ids = TOKEN_IDS[::-1].copy()
    second_ids[1, 3] = 7

    def run(mode):
        monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, mode)
        # A new sampler per run: a seeded one moves its seed on each call.
        model = tiny_family_model(family, sampler() if callable(sampler) else sampler, quantize)
        outputs = [batch_generate(model, TOKEN_IDS, PADDING_MASK),
                   batch_generate(model, second_ids, second_ids != 0)]
        norm = model.backbone.get_layer("final_norm").weights[0]
        norm.assign(np.linspace(-1.0, 1.0, norm.shape[0]).astype("float32"))
        outputs.append(batch_generate(model, TOKEN_IDS, PADDING_MASK))
        return outputs

    eager, traced = run("eager"), run("trace")
    assert not np.array_equal(eager[0], eager[2])  # the new weights change tokens
    for traced_ids, eager_ids in zip(traced, eager):
        np.testing.assert_array_equal(traced_ids, eager_ids)


@torch_only
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_fused_int8_matmul_is_the_dequantized_matmul(monkeypatch, rows):
    from keras_gemma import quantization

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(96, 40)).astype("float32")  # (in, out)
    levels, scales = quantization.quantize_groups(weights.T, axis=1)
    inputs = rng.normal(size=(rows, 96)).astype("float32")
    # Independent of both roads: numpy, levels times their group's scale.
    expected = inputs @ (levels.astype("float32") * np.repeat(scales, 32, axis=1)).T
    monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, "trace")
    model = tiny_model()
    seen = []

    def matmul(x):
        fused = backend.fused_int8_matmul(x, keras.ops.convert_to_tensor(levels),
                                          keras.ops.convert_to_tensor(scales))
        seen.append(fused is not None)
        return fused if fused is not None else x

    result = backend.compile_inference(model, matmul)(keras.ops.convert_to_tensor(inputs))
    # Decoding (a few rows) takes the fused kernel; a prefill the float copy.
    assert seen == [rows <= 16]
    if rows <= 16:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(result), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, "eager")
    seen.clear()
    backend.compile_inference(model, matmul)(keras.ops.convert_to_tensor(inputs))
    assert seen == [False]


@torch_only
def test_fused_int8_matmul_compiles_one_kernel_per_shape(monkeypatch):
    # Kernels are compiled for static shapes: each new (rows, matrix) pair
    # compiles one, a pair seen before reuses it, and every one computes
    # the dequantized product.
    import torch

    from keras_gemma import torch_int8

    monkeypatch.setattr(torch_int8, "_KERNELS", {})
    rng = np.random.default_rng(1)
    matrices = []
    for out_dim, in_dim in ((24, 64), (40, 96)):
        levels = torch.from_numpy(rng.integers(-127, 128, size=(out_dim, in_dim), dtype=np.int8))
        scales = torch.from_numpy(rng.uniform(0.01, 0.02, size=(out_dim, in_dim // 32)).astype("float32"))
        dequantized = levels.double() * torch.repeat_interleave(scales.double(), 32, dim=1)
        matrices.append((levels, scales, dequantized))
    with torch.no_grad():
        for rows, matrix, expected in ((1, 0, 1), (2, 0, 1), (5, 1, 1), (2, 0, 0), (2, 1, 1), (5, 1, 0)):
            levels, scales, dequantized = matrices[matrix]
            inputs = torch.from_numpy(rng.normal(size=(rows, levels.shape[1])).astype("float32"))
            kernels = len(torch_int8._KERNELS)
            result = torch_int8.grouped_int8_matmul(inputs, levels, scales)
            torch.testing.assert_close(result.double(), inputs.double() @ dequantized.T, rtol=1e-5, atol=1e-5)
            assert len(torch_int8._KERNELS) - kernels == expected, (rows, matrix)
        # Inputs with other strides (a transposed view) get the same numbers.
        levels, scales, dequantized = matrices[0]
        inputs = torch.from_numpy(rng.normal(size=(64, 3)).astype("float32")).T
        result = torch_int8.grouped_int8_matmul(inputs, levels, scales)
        torch.testing.assert_close(result.double(), inputs.double() @ dequantized.T, rtol=1e-5, atol=1e-5)


@torch_only
@pytest.mark.slow
def test_compiled_decode_step_gives_the_eager_tokens(monkeypatch):
    monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, "0")
    eager = greedy(tiny_model(), new=12)
    monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, "1")
    compiled = greedy(tiny_model(), new=12)
    np.testing.assert_array_equal(compiled, eager)
