"""Sharding with keras.distribution (JAX): layouts, parity, errors."""

import json
import os
import subprocess
import sys

import keras
import pytest
from conftest import TESTS_DIR

import keras_gemma

ON_JAX = keras.config.backend() == "jax"


@pytest.mark.skipif(not ON_JAX, reason="JAX only; the check runs in its own 8-device process")
def test_sharded_model_matches_unsharded():
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run(
        [sys.executable, str(TESTS_DIR / "distribution_check.py")],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"8-device run: peak resident memory {report['peak_rss_mb']:.0f} MB")
    assert report["devices"] == 8
    # 2 x 4 mesh, ModelParallel: same logits and greedy tokens.
    assert report["max_logit_difference"] <= 1e-5
    assert report["generation_equal"]
    # A LoRA fit step gives the same loss sharded, data-parallel and on one device.
    losses = report["losses"]
    for name in ("model_parallel", "data_parallel"):
        assert losses[name] == pytest.approx(losses["single"], abs=1e-5), name
    # The shardings really split the weights over the 4-way model axis.
    shards = report["shards"]

    def split(path):
        return [g // s for g, s in zip(shards[path]["global"], shards[path]["shard"])]

    block = "decoder_block_0/"
    assert split("token_embedding/embeddings") == [4, 1]
    assert split(block + "attention/query/kernel") == [1, 4]
    assert split(block + "attention/output/kernel") == [4, 1]
    assert split(block + "feedforward_gate/kernel") == [1, 4]
    assert split(block + "feedforward_down/kernel") == [4, 1]
    assert split(block + "attention/query/lora_kernel_b") == [1, 4]
    assert split(block + "attention/output/lora_kernel_a") == [4, 1]
    # One key/value head (multi-query): replicated, not split.
    assert split(block + "attention/key/kernel") == [1, 1]
    assert split(block + "attention/value/kernel") == [1, 1]
    assert split(block + "pre_attention_norm/scale") == [1]


@pytest.mark.skipif(ON_JAX, reason="checks the error on the other backends")
def test_distribution_needs_jax():
    with pytest.raises(ValueError, match="JAX backend"):
        keras_gemma.GemmaBackbone.get_layout_map(None)


@pytest.mark.skipif(not ON_JAX, reason="JAX only")
def test_layout_map_checks_axis_names():
    devices = keras.distribution.list_devices()[:1]
    mesh = keras.distribution.DeviceMesh((1, 1), ["data", "model"], devices=devices)
    with pytest.raises(ValueError, match="data_parallel_dim_name='batch'"):
        keras_gemma.GemmaBackbone.get_layout_map(mesh)
    layout_map = keras_gemma.GemmaBackbone.get_layout_map(
        mesh, data_parallel_dim_name="data", num_key_value_heads=4
    )
    # With several key/value heads divisible by the model axis, they shard.
    assert tuple(layout_map["decoder_block_2/attention/key/kernel"].axes) == (None, "model")
