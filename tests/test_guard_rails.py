"""Guard rails: memory preflight, context length, text and token-id checks.

The four cases reported in issue 15 come first; each must fail fast with an
error from keras_gemma (what was wrong, what to do), on every backend.
"""

import json
import math
import os
import subprocess
import sys
import time

import keras

import numpy as np
import pytest
from conftest import TESTS_DIR
from tiny_models import TINY_CONFIGS

import keras_gemma
from keras_gemma import backend
from keras_gemma import causal_lm
from keras_gemma import memory
from keras_gemma import preset_io
from keras_gemma import validation
from keras_gemma.memory import NotEnoughMemoryError

GB = 10**9
SURROGATE_PROMPT = "Alice \ud800 moved"


@pytest.fixture(scope="module")
def tiny_lm(tokenizer):
    backbone = keras_gemma.GemmaBackbone(**TINY_CONFIGS["gemma_mqa"])
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=16)
    return keras_gemma.GemmaCausalLM(backbone, preprocessor)


# -- the four reported cases ------------------------------------------------------


def test_absurd_hidden_dim_in_preset_config_is_refused(tiny_lm, tmp_path):
    preset = tmp_path / "preset"
    tiny_lm.save_to_preset(preset)
    serialized = json.loads((preset / "config.json").read_text())
    serialized["config"]["hidden_dim"] = 10**9
    (preset / "config.json").write_text(json.dumps(serialized))
    start = time.perf_counter()
    for load_weights in (False, True):
        with pytest.raises(NotEnoughMemoryError) as error:
            keras_gemma.GemmaCausalLM.from_preset(str(preset), load_weights=load_weights)
        message = str(error.value)
        assert "parameters in float32 need" in message
        assert "is free" in message and "would fit" in message
        assert "hidden_dim (now 1,000,000,000) would have to be at most" in message
    assert isinstance(error.value, ValueError) and isinstance(error.value, MemoryError)
    assert time.perf_counter() - start < 10


def test_absurd_max_length_is_refused_before_any_work(tiny_lm):
    start = time.perf_counter()
    with pytest.raises(NotEnoughMemoryError) as error:
        tiny_lm.generate("The quick brown fox", max_length=10**9)
    message = str(error.value)
    assert "Generating 1 x 1,000,000,000 tokens needs" in message
    assert "key/value cache" in message and "max_length <=" in message
    assert time.perf_counter() - start < 5
    # The dict form and stream() take the same check.
    with pytest.raises(NotEnoughMemoryError):
        tiny_lm.generate({"token_ids": [[2, 17, 42]]}, max_length=10**9)
    with pytest.raises(NotEnoughMemoryError):
        tiny_lm.stream("Hi", max_length=10**9)


def test_max_length_beyond_context_length_is_refused(tiny_lm):
    tiny_lm.context_length = 20
    try:
        with pytest.raises(ValueError, match=r"max_length=100 exceeds this model's "
                           r"context length of 20 tokens.*max_length <= 20"):
            tiny_lm.generate("The quick brown fox", max_length=100)
        with pytest.raises(ValueError, match="context length of 20"):
            tiny_lm.generate({"token_ids": np.full((1, 30), 5)}, max_length=None)
        assert isinstance(tiny_lm.generate("Hi", max_length=20), str)
    finally:
        tiny_lm.context_length = None


def test_lone_surrogate_prompt_is_refused_with_its_position(tiny_lm):
    with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at position 6"):
        tiny_lm.generate(SURROGATE_PROMPT, max_length=12)
    with pytest.raises(ValueError, match=r"Text 1 .* at position 6"):
        tiny_lm.generate(["fine", SURROGATE_PROMPT], max_length=12)
    with pytest.raises(ValueError, match="position 6"):
        tiny_lm.preprocessor([SURROGATE_PROMPT])
    with pytest.raises(ValueError, match="position 6"):
        tiny_lm.preprocessor.tokenizer.tokenize(SURROGATE_PROMPT)
    with pytest.raises(ValueError, match=r"messages\[1\] \(user\) content .* position 6"):
        keras_gemma.chat_template([{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": SURROGATE_PROMPT}])


def test_float_token_ids_are_refused(tiny_lm):
    with pytest.raises(TypeError, match=r"integer token ids, got a float array "
                       r"\(dtype float64\) \(first value 2.5\)"):
        tiny_lm.generate({"token_ids": [[2.5, 3.1]]}, max_length=8)
    with pytest.raises(TypeError, match="got a bool array"):
        tiny_lm.generate({"token_ids": np.array([[True, False]])}, max_length=8)
    with pytest.raises(TypeError, match="got a object array"):
        tiny_lm.generate({"token_ids": np.array([[2, None]], dtype=object)}, max_length=8)
    with pytest.raises(ValueError, match="rows of different lengths"):
        tiny_lm.generate({"token_ids": [[2, 3], [2]]}, max_length=8)


# -- token ids on the other paths ---------------------------------------------------


def test_score_and_model_call_refuse_non_integer_ids(tiny_lm):
    floats = np.array([[2.0, 17.0, 42.0]])
    mask = np.ones((1, 3), bool)
    with pytest.raises(TypeError, match=r"score\(\) token_ids must be integer"):
        tiny_lm.score(floats)
    with pytest.raises(TypeError, match=r"score\(\) target_ids must be integer"):
        tiny_lm.score(floats.astype("int32"), scoring_mode="loss", target_ids=floats)
    with pytest.raises(TypeError, match="token_ids must be integer token ids"):
        tiny_lm({"token_ids": floats, "padding_mask": mask})
    with pytest.raises(TypeError, match="token_ids must be integer token ids"):
        tiny_lm.backbone({"token_ids": floats, "padding_mask": mask})
    objects = np.array([[2, None, 4]], dtype=object)
    for model in (tiny_lm, tiny_lm.backbone):
        with pytest.raises(TypeError, match="got a object array"):
            model({"token_ids": objects, "padding_mask": mask})
        with pytest.raises(TypeError, match="got a bool array"):
            model(np.ones((1, 3), bool))
    with pytest.raises(TypeError, match="token_ids must be integer token ids"):
        tiny_lm.predict({"token_ids": floats, "padding_mask": mask}, verbose=0)
    # A refused call leaves the model usable (Keras' JAX predict empties
    # the variables when its loop fails).
    ints = floats.astype("int32")
    logits = tiny_lm.predict({"token_ids": ints, "padding_mask": mask}, verbose=0)
    assert logits.shape == (1, 3, TINY_CONFIGS["gemma_mqa"]["vocabulary_size"])
    assert tiny_lm.score(ints).shape == logits.shape


def test_check_token_ids_accepts_integer_inputs():
    assert validation.check_token_ids([[2, 3]]).dtype.kind == "i"
    assert validation.check_token_ids(np.array([[2, 3]], "uint16")).dtype == "uint16"
    import keras

    tensor = keras.ops.convert_to_tensor(np.array([[2, 3]], "int32"))
    np.testing.assert_array_equal(validation.check_token_ids(tensor), [[2, 3]])
    with pytest.raises(TypeError, match="float"):
        validation.check_token_ids(keras.ops.convert_to_tensor([[2.0, 3.0]]))


# -- text ---------------------------------------------------------------------------


def test_check_text():
    assert validation.check_text("héllo ✓ 𝄞") == "héllo ✓ 𝄞"
    assert validation.check_text("café".encode()) == "café"
    with pytest.raises(ValueError, match=r"U\+DC80 at position 3"):
        validation.check_text(b"abc\x80".decode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=r"not valid UTF-8 \(byte 0xff at offset 2\)"):
        validation.check_text(b"ab\xff")
    with pytest.raises(TypeError, match="must be a string, got int"):
        validation.check_text(3)
    assert validation.check_texts(["ok", "fine"]) == ["ok", "fine"]
    with pytest.raises(ValueError, match=r"Text 1 is not valid Unicode"):
        validation.check_texts(["ok", "\udfff"])


def test_validation_docstring_examples():
    import doctest

    results = doctest.testmod(validation)
    assert results.attempted >= 2 and results.failed == 0


def test_bytes_prompts_with_invalid_utf8_get_our_error(tiny_lm):
    with pytest.raises(ValueError, match=r"Prompts\[0\] is bytes that are not valid UTF-8"):
        tiny_lm.generate([b"\xff\xfe"], max_length=12)


# -- memory estimates ----------------------------------------------------------------


def _measured_variable_bytes(backbone):
    from conftest import to_numpy

    return sum(to_numpy(v).nbytes for v in backbone.weights)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_backbone_estimate_matches_allocation(name, dtype):
    config = TINY_CONFIGS[name]
    backbone = keras_gemma.GemmaBackbone(**config, dtype=dtype)
    measured = _measured_variable_bytes(backbone)
    estimate = memory.backbone_bytes(config, dtype)
    assert abs(estimate - measured) <= 0.1 * measured, (estimate, measured)


_RSS_SCRIPT = """
import gc
import keras_gemma
from keras_gemma import memory
from keras_gemma.backbone import skip_weight_initialization

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096

small = dict(vocabulary_size=640, num_layers=1, num_query_heads=4,
             num_key_value_heads=1, hidden_dim=32, intermediate_dim=64, head_dim=16)
with skip_weight_initialization():  # warms up the backend
    keras_gemma.GemmaBackbone(**small)
config = dict(vocabulary_size=64000, num_layers=8, num_query_heads=4,
              num_key_value_heads=1, hidden_dim=512, intermediate_dim=2048, head_dim=128)
gc.collect()
before = rss()
with skip_weight_initialization():  # zeros: no initializer temporaries
    backbone = keras_gemma.GemmaBackbone(**config)
gc.collect()
print(memory.backbone_bytes(config), rss() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_backbone_estimate_matches_resident_memory():
    # A ~250 MB backbone in a fresh process: the resident memory it adds is
    # the real allocation, backend buffers and all.
    env = {**os.environ, "KERAS_BACKEND": keras.config.backend(),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    estimate, measured = map(int, result.stdout.split()[-2:])
    assert abs(estimate - measured) <= 0.1 * measured, (estimate, measured)


def test_int8_backbone_estimate_matches_allocation():
    from keras_gemma.quantization import build_int8

    config = {**TINY_CONFIGS["gemma_mqa"], "hidden_dim": 64, "intermediate_dim": 128}
    with build_int8():
        backbone = keras_gemma.GemmaBackbone(**config)
    measured = _measured_variable_bytes(backbone)
    estimate = memory.backbone_bytes(config, int8=True)
    assert abs(estimate - measured) <= 0.1 * measured, (estimate, measured)


def test_generation_estimate_matches_allocation(tokenizer):
    # Eight layers of cache dominate the transient parts, as in real models.
    config = dict(vocabulary_size=640, num_layers=8, num_query_heads=1,
                  num_key_value_heads=1, hidden_dim=32, intermediate_dim=64,
                  head_dim=64)
    backbone = keras_gemma.GemmaBackbone(**config)
    model = keras_gemma.GemmaCausalLM(backbone)
    token_ids = np.zeros((2, 2048), "int32")
    token_ids[:, :5] = [2, 17, 42, 7, 9]
    padding_mask = token_ids != 0
    state = model._start_generation(token_ids, padding_mask, [1], seed=0)
    from conftest import to_numpy

    # The cache starts at 128 positions and grows to the bucket as
    # generation goes on; the estimate is for the grown cache.
    assert state["cache"][0][0].shape[1] == 128
    grown = list(state["cache"])
    causal_lm._grow_cache(grown, 2048)
    cache = sum(to_numpy(t).nbytes for pair in grown for t in pair)
    buffers = cache + state["token_ids"].nbytes + sum(
        to_numpy(state[k]).nbytes for k in ("token_tensor", "padding_mask", "uniforms")
    )
    estimate = memory.generation_bytes(backbone, 2, 2048, prefill_length=32)
    assert estimate["key/value cache"] == cache == memory.cache_bytes(backbone, 2, 2048)
    assert abs(estimate["total"] - buffers) <= 0.1 * buffers, (estimate, buffers)


# -- the preflight's decisions (nothing large is allocated) ----------------------------


@pytest.mark.parametrize("preset", ["gemma_7b_en", "gemma_instruct_7b_en",
                                    "gemma_1.1_instruct_7b_en", "gemma2_9b_en"])
def test_7b_presets_in_bfloat16_pass_on_a_24_gb_host(preset):
    config = preset_io.preset_info(preset)["backbone"]
    memory.check_weights(config, "bfloat16", available=(24 * GB, "host memory"))
    memory.check_weights(config, int8=True, available=(24 * GB, "host memory"))
    with pytest.raises(NotEnoughMemoryError, match="dtype='bfloat16' or quantize='int8'"):
        memory.check_weights(config, "float32", available=(24 * GB, "host memory"))


def test_dtype_names():
    config = TINY_CONFIGS["gemma_mqa"]
    parameters = keras_gemma.GemmaBackbone.count_parameters(config)
    assert memory.backbone_bytes(config, "mixed_bfloat16") == 4 * parameters
    assert memory.backbone_bytes(config, "float16") == 2 * parameters


def test_preflight_refuses_exactly_what_does_not_fit():
    config = preset_io.preset_info("gemma_7b_en")["backbone"]
    needed = memory.backbone_bytes(config, "bfloat16")
    assert 16 * GB < needed < 18 * GB  # 8.5 billion parameters, 2 bytes each
    memory.check_weights(config, "bfloat16", available=(needed, "host memory"))
    with pytest.raises(NotEnoughMemoryError, match="of host memory is free"):
        memory.check_weights(config, "bfloat16", available=(needed - 1, "host memory"))
    memory.check_weights(config, "bfloat16", available=(None, "GPU memory"))  # unknown


def test_generation_preflight_names_the_largest_fitting_length():
    backbone = keras_gemma.GemmaBackbone(**TINY_CONFIGS["gemma_mqa"])
    per_token = memory.generation_bytes(backbone, 1, 2048)["total"] / 2048
    free = int(per_token * 1000)
    with pytest.raises(NotEnoughMemoryError) as error:
        memory.check_generation(backbone, 1, 4096, available=(free, "host memory"))
    largest = int(str(error.value).split("max_length <= ")[1].split()[0].replace(",", ""))
    assert 900 <= largest <= 1100
    memory.check_generation(backbone, 1, largest, available=(free, "host memory"))


def test_skip_variable_turns_the_memory_check_off(monkeypatch):
    config = dict(TINY_CONFIGS["gemma_mqa"], hidden_dim=10**9)
    monkeypatch.setenv(memory.SKIP_VARIABLE, "1")
    memory.check_weights(config, available=(GB, "host memory"))
    monkeypatch.delenv(memory.SKIP_VARIABLE)
    with pytest.raises(NotEnoughMemoryError):
        memory.check_weights(config, available=(GB, "host memory"))


def test_memory_queries():
    host = backend.host_memory_available()
    assert host is not None and 10**7 < host < 2**50
    free, where = backend.device_memory_available()
    assert isinstance(where, str) and where
    assert free is None or free > 10**7


def test_270m_generation_of_its_whole_context_passes_on_a_24_gb_host():
    backbone_config = preset_io.preset_info("gemma3_270m")["backbone"]
    assert memory.backbone_bytes(backbone_config) < 1.2 * GB

    class Shapes:  # init_cache's shapes without building 270M parameters
        num_query_heads = backbone_config["num_query_heads"]
        vocabulary_size = backbone_config["vocabulary_size"]

        def init_cache(self, batch_size, length):
            from keras import ops

            shape = (batch_size, length, backbone_config["num_key_value_heads"],
                     backbone_config["head_dim"])
            return [(ops.zeros(shape), ops.zeros(shape))] * backbone_config["num_layers"]

    parts = memory.generation_bytes(Shapes(), 1, 32768, prefill_length=32)
    assert 1 * GB < parts["key/value cache"] < 1.3 * GB  # 18 x 2 x 32768 x 256 x 4
    memory.check_generation(Shapes(), 1, 32768, prefill_length=32,
                            context_length=32768, available=(22 * GB, "host memory"))


# -- the context length of each source -------------------------------------------------


def test_context_length_of_sources(tmp_path):
    named = preset_io._Checkpoint("gemma3_270m", need_weights=False, need_files=False)
    assert named.context_length() == 32768
    hf = preset_io._Checkpoint(str(TESTS_DIR / "data" / "hf_tiny_gemma"))
    assert hf.context_length() == 8192
    from test_gguf import write_tiny_gguf

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    assert preset_io._Checkpoint(str(path)).context_length() == 1024


def test_keras_hub_preset_of_a_known_architecture_gets_its_context_length(tmp_path):
    config = preset_io.preset_info("gemma3_270m")["backbone"]
    from keras_gemma.checkpoints.keras_hub import backbone_json

    preset = tmp_path / "gemma3_270m_copy"
    preset.mkdir()
    (preset / "config.json").write_text(json.dumps(backbone_json(config)))
    (preset / "model.weights.h5").write_bytes(b"")
    checkpoint = preset_io._Checkpoint(str(preset), need_weights=False)
    assert checkpoint.context_length() == 32768
    assert math.isclose(memory.backbone_bytes(checkpoint.config, "bfloat16"),
                        2 * keras_gemma.GemmaBackbone.count_parameters(config))
