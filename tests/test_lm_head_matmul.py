"""``backend.matmul_transposed``: the tied LM head's ``inputs @ embeddings.T``.

On PyTorch a few float32 rows run as a batch of products over row blocks of
the matrix (``keras_gemma/torch_matmul.py``); these tests check the product
against numpy on every backend, that PyTorch takes the block road exactly
where it should, and that generation decodes the same tokens with the block
road as without it (eager and traced steps).
"""

import keras
import numpy as np
import pytest

import keras_gemma
from keras_gemma import backend
from tests.tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS

torch_only = pytest.mark.skipif(keras.config.backend() != "torch", reason="PyTorch's block products")


@pytest.mark.parametrize("leading", [(1,), (3,), (2, 1), (16,), (4, 10)])
def test_matmul_transposed_is_the_plain_product(leading):
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(4096, 48)).astype("float32")
    inputs = rng.normal(size=(*leading, 48)).astype("float32")
    expected = inputs.astype("float64") @ matrix.T.astype("float64")  # independent: numpy
    result = backend.matmul_transposed(keras.ops.convert_to_tensor(inputs), keras.ops.convert_to_tensor(matrix))
    assert tuple(result.shape) == (*leading, 4096)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(result), expected, rtol=1e-5, atol=1e-4)


@torch_only
@pytest.mark.parametrize("out_dim, blocks", [
    (262_144, 32), (256_000, 32), (4096, 4), (3072, 2), (2048, 2), (1000, 1), (262_145, 1),
])
def test_blocks_divide_the_rows_into_blocks_of_1024_or_more(out_dim, blocks):
    from keras_gemma import torch_matmul

    assert torch_matmul.blocks_for(out_dim) == blocks


@torch_only
@pytest.mark.parametrize("rows, dtype, blocked", [
    (1, "float32", True), (32, "float32", True), (33, "float32", False), (1, "bfloat16", False),
])
def test_block_products_for_a_few_float32_rows(monkeypatch, rows, dtype, blocked):
    import torch

    calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(1) or real_bmm(*a))
    matrix = torch.randn(4096, 48, dtype=getattr(torch, dtype))
    inputs = torch.randn(rows, 48, dtype=getattr(torch, dtype))
    result = backend.matmul_transposed(inputs, matrix)
    assert bool(calls) is blocked
    tolerance = 1e-4 if dtype == "float32" else 0.2
    torch.testing.assert_close(result.float(), (inputs.double() @ matrix.T.double()).float(),
                               rtol=tolerance, atol=tolerance)


@torch_only
@pytest.mark.parametrize("mode", ["eager", "trace"])
def test_generation_decodes_the_same_tokens_with_block_products(monkeypatch, mode):
    import torch

    from keras_gemma import torch_matmul

    monkeypatch.setenv(backend.TORCH_COMPILE_SETTING, mode)
    calls = []
    real_bmm = torch.bmm

    def counting_bmm(*args):
        if args[0].shape[-2] * args[0].shape[0] == TINY_CONFIGS["gemma3"]["vocabulary_size"]:
            calls.append(1)
        return real_bmm(*args)

    monkeypatch.setattr(torch, "bmm", counting_bmm)

    def generate():
        keras.utils.set_random_seed(0)
        model = keras_gemma.GemmaCausalLM(
            backbone=keras_gemma.GemmaBackbone(**TINY_CONFIGS["gemma3"]), preprocessor=None
        )
        model.compile(sampler="greedy")
        out = model.generate({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK},
                             max_length=TOKEN_IDS.shape[1] + 8, stop_token_ids=None)
        return np.asarray(out["token_ids"])

    plain = generate()
    assert not calls  # a 640-token vocabulary is one block by default
    monkeypatch.setattr(torch_matmul, "MIN_BLOCK_ROWS", 64)
    blocked = generate()
    assert calls  # the LM head took the block road
    np.testing.assert_array_equal(blocked, plain)
