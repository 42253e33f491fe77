"""Weight-only int8 (``quantize="int8"``) on tiny models.

The reference is hand-computed: the same float model with every matrix
rounded in numpy to int8 levels (one absmax scale per 32 consecutive values
along the input axis: down a column of a Dense kernel, along a row of the
embedding) and dequantized again. The int8 model must give those logits; it must also stay
close to the unquantized model.
"""

import keras
import numpy as np
import pytest
from conftest import to_numpy
from test_causal_lm import IDS, MASK, assert_greedy_continuation, assert_raised_by_us, tiny_backbone
from tiny_models import TINY_CONFIGS

import keras_gemma
from keras_gemma.checkpoints import assign_weights


def fake_quantized(values, axis):
    """Rounds to int8 levels with absmax scales reduced over ``axis``.

    Written as Keras' AbsMaxQuantizer does it (multiply by 127 / absmax, in
    float32), so that values at exactly .5 of a level round the same way.
    """
    values = values.astype("float32")
    scale = np.float32(127.0) / (np.abs(values).max(axis=axis, keepdims=True) + np.float32(1e-7))
    return (np.clip(np.round(values * scale), -127, 127) / scale).astype("float32")


def logits(backbone):
    hidden = backbone({"token_ids": IDS, "padding_mask": MASK})
    return to_numpy(backbone.compute_logits(hidden))


def rounded_reference(float_model):
    """A float backbone holding ``float_model``'s weights rounded as int8 would."""
    rounded = {}
    for variable in float_model.weights:
        path, value = variable.path, to_numpy(variable)
        if path.endswith("/kernel"):  # (in, out): groups of 32 inputs
            groups = value.reshape(-1, 32, value.shape[1])
            rounded[path] = fake_quantized(groups, axis=1).reshape(value.shape)
        elif path == "token_embedding/embeddings":
            groups = value.reshape(value.shape[0], -1, 32)  # 32 values of a row
            rounded[path] = fake_quantized(groups, axis=2).reshape(value.shape)
        else:
            rounded[path] = value  # norms stay in float
    reference = keras_gemma.GemmaBackbone(**float_model._config())
    assign_weights(reference, rounded, "numpy int8 reference")
    return reference


@pytest.mark.parametrize("name", ["gemma_mqa", "gemma3"])
def test_int8_logits_equal_numpy_dequantized_weights(name):
    float_model = tiny_backbone(name, gain=4.0)
    reference = rounded_reference(float_model)

    float_model.quantize("int8")
    assert float_model.is_quantized
    dtypes = {v.path: str(v.dtype) for v in float_model.weights}
    assert dtypes["token_embedding/embeddings_int8"] == "int8"
    assert dtypes["decoder_block_0/attention/query/kernel"] == "int8"
    np.testing.assert_allclose(logits(float_model), logits(reference), atol=2e-4, rtol=1e-4)


def test_int8_stays_close_to_float_and_generates_the_same_greedy_tokens(preprocessor):
    float_lm = keras_gemma.GemmaCausalLM(tiny_backbone(gain=100.0), preprocessor)
    int8_lm = keras_gemma.GemmaCausalLM(tiny_backbone(gain=100.0), preprocessor)
    int8_lm.quantize("int8")
    a, b = logits(float_lm.backbone), logits(int8_lm.backbone)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    prompts = {"token_ids": IDS[:, :6], "padding_mask": MASK[:, :6]}
    out_float = float_lm.generate(prompts, max_length=12, stop_token_ids=None)
    out_int8 = int8_lm.generate(prompts, max_length=12, stop_token_ids=None)
    agree = (out_float["token_ids"] == out_int8["token_ids"]).mean()
    assert agree >= 0.9, (out_float["token_ids"], out_int8["token_ids"])


@pytest.mark.parametrize("name", ["gemma_mqa", "gemma3"])
def test_int8_batch_1_greedy_generation_matches_its_forward_pass(name, preprocessor):
    # At batch 1 the compiled decode loop takes the one-row int8 path (a
    # fused matrix-vector product reading its vector from a buffer of its
    # own, xla_cpu.own_buffer); the uncached forward pass over the whole
    # sequence takes the many-row path (dequantize, then matmul).
    lm = keras_gemma.GemmaCausalLM(tiny_backbone(name, gain=100.0), preprocessor)
    lm.quantize("int8")
    prompt = {"token_ids": IDS[:1, :8], "padding_mask": MASK[:1, :8]}
    token_ids = lm.generate(prompt, max_length=16, stop_token_ids=None)["token_ids"]
    assert_greedy_continuation(lm, token_ids, [8])
    assert len(set(token_ids[0, 8:].tolist())) > 3, token_ids  # not one repeated token


@pytest.fixture(scope="module")
def preprocessor(tokenizer):
    return keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=16)


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("preset") / "tiny"
    from keras_gemma.preset_io import save_preset

    save_preset(directory, backbone=tiny_backbone(gain=4.0), tokenizer=tokenizer)
    return directory


def test_from_preset_quantize_loads_int8_directly(tiny_preset, preprocessor):
    # Each float tensor is quantized as it is read: the model never has a
    # float copy of the quantized matrices, and ends as the hand-rounded one.
    model = keras_gemma.GemmaCausalLM.from_preset(tiny_preset, quantize="int8")
    assert model.backbone.is_quantized
    dtypes = {v.path: str(v.dtype) for v in model.backbone.weights}
    assert "token_embedding/embeddings" not in dtypes
    assert {dtypes[p] for p in dtypes if p.endswith("/kernel")} == {"int8"}
    float_model = keras_gemma.GemmaBackbone.from_preset(tiny_preset)
    reference = rounded_reference(float_model)
    np.testing.assert_allclose(logits(model.backbone), logits(reference), atol=2e-4, rtol=1e-4)
    # Generation (a compiled loop on JAX and TensorFlow) gives the reference's tokens.
    reference_lm = keras_gemma.GemmaCausalLM(reference, preprocessor)
    prompts = {"token_ids": IDS[:, :6], "padding_mask": MASK[:, :6]}
    expected = reference_lm.generate(prompts, max_length=12, stop_token_ids=None)
    got = model.generate(prompts, max_length=12, stop_token_ids=None)
    np.testing.assert_array_equal(got["token_ids"], expected["token_ids"])
    text = model.generate("hello", max_length=8)
    assert isinstance(text, str) and text.startswith("hello")


def test_quantize_errors(tiny_preset, tmp_path):
    with pytest.raises(ValueError, match="quantize") as info:
        keras_gemma.GemmaCausalLM.from_preset(tiny_preset, quantize="int4")
    assert_raised_by_us(info)
    model = keras_gemma.GemmaCausalLM.from_preset(tiny_preset, quantize="int8")
    with pytest.raises(ValueError, match="already quantized"):
        model.quantize("int8")
    with pytest.raises(ValueError, match="int8"):
        model.save_to_preset(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lora_trains_on_an_int8_model(preprocessor):
    import keras

    model = keras_gemma.GemmaCausalLM(tiny_backbone(gain=4.0), preprocessor)
    model.quantize("int8")
    model.backbone.enable_lora(rank=2)
    before = logits(model.backbone)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(["hello world", "Hi there"], batch_size=2, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert not np.allclose(logits(model.backbone), before)
    with pytest.raises(ValueError, match="int8"):
        model.backbone.merge_lora()


def test_int8_embedding_has_one_scale_per_32_values():
    from keras_gemma.embedding import TiedEmbedding

    rng = np.random.default_rng(0)
    # Groups of very different magnitude: one scale per row would flatten
    # the small groups to zero.
    values = rng.normal(size=(10, 96)).astype("float32")
    values[:, 32:64] *= 1e-3
    layer = TiedEmbedding(10, 96)
    layer.build()
    layer.embeddings.assign(values)
    layer.quantize("int8")
    expected = fake_quantized(values.reshape(10, 3, 32), axis=2).reshape(10, 96)
    ids = np.array([[3, 7, 0]])
    np.testing.assert_allclose(to_numpy(layer(ids)), expected[ids], rtol=1e-6, atol=1e-9)
    hidden = rng.normal(size=(1, 2, 96)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(layer(hidden, reverse=True)), hidden @ expected.T, rtol=1e-5, atol=1e-5
    )
    small = to_numpy(layer(ids))[..., 32:64]
    assert np.abs(small).max() > 0  # not flattened to zero


@pytest.mark.parametrize("rows", [1, 3])
def test_int8_dense_wider_than_one_matvec_slice_matches_numpy(rows):
    # 4160 inputs: two full MATVEC_SLICE slices and a 64-wide remainder,
    # each slice with its own scales (Gemma 4's down projections are 6144
    # and 12288 wide).
    from keras_gemma.quantization import MATVEC_SLICE, QuantizableDense

    width = 2 * MATVEC_SLICE + 64
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(width, 8)).astype("float32")
    kernel[MATVEC_SLICE : MATVEC_SLICE + 32] *= 1e-3  # a group of its own magnitude
    layer = QuantizableDense(8, use_bias=False)
    layer.build((None, width))
    layer.kernel.assign(kernel)
    layer.quantize("int8")
    expected = fake_quantized(kernel.reshape(-1, 32, 8), axis=1).reshape(width, 8)
    inputs = rng.normal(size=(rows, 1, width)).astype("float32")
    np.testing.assert_allclose(to_numpy(layer(inputs)), inputs @ expected, rtol=1e-4, atol=1e-4)


def bfloat16_rounded(values):
    """float32 ``values`` rounded to the nearest bfloat16 (ties to even), in numpy."""
    bits = np.asarray(values, "float32").view("uint32").astype("uint64")
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype("uint32").view("float32")


@pytest.mark.parametrize("input_shape", [(3, 64), (2, 5, 64)])
def test_int8_bfloat16_block_product_matches_numpy(monkeypatch, input_shape):
    # The decode loop's batch > 1 product on JAX (CPU): blocks of output
    # rows dequantized to bfloat16, inputs rounded to bfloat16, sums in
    # float32. Reference: the same roundings in numpy, summed in float64.
    from keras import ops

    from keras_gemma import quantization

    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(96, 64)).astype("float32")  # (out, in)
    kernel[:, 32:] *= 1e-3  # a group of its own magnitude
    levels, scales = quantization.quantize_groups(kernel, axis=1)
    dequantized = (levels.reshape(96, 2, 32) * scales[:, :, None]).reshape(96, 64)
    inputs = rng.normal(size=input_shape).astype("float32")
    # 40 output rows of bfloat16 per block: blocks of 40, 40 and 16 rows.
    monkeypatch.setattr(quantization, "BFLOAT16_BLOCK_BYTES", 40 * 64 * 2)
    outputs = quantization._bfloat16_blocks_matmul(
        ops.convert_to_tensor(inputs), ops.convert_to_tensor(levels),
        ops.convert_to_tensor(scales),
    )
    expected = bfloat16_rounded(inputs).astype("float64") @ bfloat16_rounded(dequantized).T
    assert tuple(outputs.shape) == (*input_shape[:-1], 96)
    np.testing.assert_allclose(to_numpy(outputs), expected, rtol=1e-5, atol=1e-6)
    # ... which is not the float32 product (the roundings are there).
    assert np.abs(to_numpy(outputs) - inputs @ dequantized.T).max() > 1e-4


def test_int8_products_in_the_decode_loop_stay_close_to_float32():
    # Inside levels_varying_with (the compiled decode loop), a product with
    # more than one row may take the bfloat16 path (JAX on CPU); it must
    # stay within bfloat16 rounding of the float32 product of the int8
    # weights, on every backend.
    from keras import ops

    from keras_gemma import quantization

    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(128, 64)).astype("float32")
    levels, scales = quantization.quantize_groups(kernel, axis=1)
    dequantized = (levels.reshape(128, 2, 32) * scales[:, :, None]).reshape(128, 64)
    inputs = rng.normal(size=(4, 1, 64)).astype("float32")
    with quantization.levels_varying_with(ops.cast(ops.ones(()), "int8")):
        outputs = quantization.grouped_matmul(
            ops.convert_to_tensor(inputs), ops.convert_to_tensor(levels),
            ops.convert_to_tensor(scales), "float32",
        )
    expected = inputs @ dequantized.T
    np.testing.assert_allclose(to_numpy(outputs), expected, rtol=0, atol=2e-2 * np.abs(expected).max())


def test_every_batch_size_traces_the_decode_loop_with_static_shapes(monkeypatch, preprocessor):
    # The int8 paths choose by the number of rows (one-row matvec, bfloat16
    # blocks); a trace that sees the batch as None (TensorFlow's
    # reduce_retracing generalizes the second shape it is called with)
    # falls back to the slow formula. Batch 1, then 2, then 1 again.
    from keras_gemma import quantization

    seen = []
    static_rows = quantization._static_rows
    monkeypatch.setattr(
        quantization, "_static_rows", lambda inputs: seen.append(static_rows(inputs)) or seen[-1]
    )
    lm = keras_gemma.GemmaCausalLM(tiny_backbone(gain=100.0), preprocessor)
    lm.quantize("int8")
    for batch in (1, 2, 1):
        prompt = {"token_ids": IDS[:batch, :6], "padding_mask": MASK[:batch, :6]}
        lm.generate(prompt, max_length=12, stop_token_ids=None)
    if keras_gemma.backend.compiles_loops():
        assert seen and None not in seen, seen
        assert {1, 2} <= set(seen), seen


def test_int8_prefill_dequantizes_each_matrix_just_before_its_product(monkeypatch, preprocessor):
    # The compiled prefill must not hold every dequantized matrix at once
    # (Gemma 3 270M: a ~400 MB temporary, page-faulted in on every call).
    # JAX reports the compiled program's temporary size; the schedule it
    # checks is XLA's, which TensorFlow shares.
    if keras.config.backend() != "jax":
        pytest.skip("reads the compiled program's memory analysis, which JAX exposes")
    import jax

    from keras_gemma import xla_cpu

    config = {**TINY_CONFIGS["gemma3"], "num_layers": 4, "hidden_dim": 256,
              "intermediate_dim": 1024, "head_dim": 64}
    model = keras_gemma.GemmaCausalLM(keras_gemma.GemmaBackbone(**config), preprocessor)
    model.quantize("int8")
    projections = [v for v in model.backbone.weights
                   if str(v.dtype) == "int8" and "token_embedding" not in v.path]
    dequantized_bytes = sum(4 * int(np.prod(v.shape)) for v in projections)
    prefill = model._make_prefill(32)

    def temporary_bytes():
        def stateless(values, token_ids):
            with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
                return prefill(token_ids)

        values = [v.value for v in model.variables]
        compiled = jax.jit(stateless).lower(values, np.ones((1, 128), "int32")).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temporary_bytes() < 0.4 * dequantized_bytes
    # ... which the check can tell from the schedule without the dependency.
    monkeypatch.setattr(xla_cpu, "after", lambda done, values: values)
    assert temporary_bytes() > 0.6 * dequantized_bytes
