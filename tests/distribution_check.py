"""Sharded vs unsharded Gemma on 8 virtual CPU devices; prints JSON.

Run by tests/test_distribution.py in a subprocess, because the device count
must be fixed before JAX starts:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax \\
        python tests/distribution_check.py
"""

import json
import os
import pathlib
import resource
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights  # noqa: E402

import keras_gemma  # noqa: E402
from keras_gemma.checkpoints import assign_weights  # noqa: E402

CONFIG = dict(TINY_CONFIGS["gemma3"])
VOCABULARY = pathlib.Path(__file__).resolve().parent / "data" / "test_vocabulary.spm"
TEXTS = ["Zorblat Quenn lives in the city of Marravel.", "The secret number is 4172.",
         "def add(a, b):\n    return a + b", "The quick brown fox."] * 2


def build():
    backbone = keras_gemma.GemmaBackbone(**CONFIG)
    assign_weights(backbone, random_weights(CONFIG, embedding_scale=0.3), "tiny")
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(
        keras_gemma.GemmaTokenizer(str(VOCABULARY)), sequence_length=16
    )
    return keras_gemma.GemmaCausalLM(backbone, preprocessor)


def run(model):
    logits = keras.ops.convert_to_numpy(
        model({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK})
    )
    generated = model.generate(
        {"token_ids": TOKEN_IDS[:, :6], "padding_mask": PADDING_MASK[:, :6]},
        max_length=14, stop_token_ids=None,
    )["token_ids"]
    model.backbone.enable_lora(4, target=("query", "value", "output", "down"))
    rng = np.random.default_rng(3)
    for variable in model.backbone.trainable_weights:
        variable.assign(rng.standard_normal(variable.shape).astype("float32") * 0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    losses = model.fit(TEXTS, batch_size=8, epochs=2, shuffle=False, verbose=0).history["loss"]
    return logits, generated, losses


def shard_shapes(model):
    shapes = {}
    for variable in model.backbone.weights:
        value = variable.value
        shapes[variable.path] = {
            "global": list(value.shape),
            "shard": list(value.sharding.shard_shape(value.shape)),
        }
    return shapes


def main():
    devices = keras.distribution.list_devices()
    reference = run(build())

    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices=devices)
    layout_map = keras_gemma.GemmaBackbone.get_layout_map(mesh)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    )
    model_parallel = build()
    sharded = run(model_parallel)
    shapes = shard_shapes(model_parallel)

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    data_parallel = run(build())
    keras.distribution.set_distribution(None)

    print(json.dumps({
        "devices": len(devices),
        "max_logit_difference": float(np.abs(sharded[0] - reference[0]).max()),
        "generation_equal": bool((sharded[1] == reference[1]).all()),
        "losses": {"single": reference[2], "model_parallel": sharded[2],
                   "data_parallel": data_parallel[2]},
        "data_parallel_logit_difference": float(np.abs(data_parallel[0] - reference[0]).max()),
        "shards": shapes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
