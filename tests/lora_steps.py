"""Prints the per-step LoRA training losses of a tiny model as JSON.

Run under each backend by test_lora.py::test_backends_agree (and usable by
hand: KERAS_BACKEND=torch python tests/lora_steps.py 30). Weights, adapter
initialization and data order come from numpy, so every backend starts from
the same numbers.
"""

import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import keras  # noqa: E402
from tiny_models import TINY_CONFIGS, random_weights  # noqa: E402

import keras_gemma  # noqa: E402
from keras_gemma.checkpoints import assign_weights  # noqa: E402

TEXTS = [
    "Zorblat Quenn lives in the city of Marravel.",
    "The secret number is 4172.",
    "def add(a, b):\n    return a + b",
    "The quick brown fox jumps over the lazy dog.",
]


def build(tokenizer_path, rank=4):
    config = TINY_CONFIGS["gemma_mqa"]
    backbone = keras_gemma.GemmaBackbone(**config)
    assign_weights(backbone, random_weights(config, embedding_scale=0.05), "tiny_models")
    backbone.enable_lora(rank, alpha=8, target=("query", "value", "down"))
    rng = np.random.default_rng(7)
    for variable in backbone.trainable_weights:
        if variable.path.endswith("lora_kernel_a"):
            variable.assign(rng.standard_normal(variable.shape).astype("float32") * 0.1)
    tokenizer = keras_gemma.GemmaTokenizer(tokenizer_path)
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=16)
    return keras_gemma.GemmaCausalLM(backbone, preprocessor)


def main(steps):
    here = pathlib.Path(__file__).resolve().parent
    model = build(str(here / "data" / "test_vocabulary.spm"))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01))
    # One batch of all four texts per epoch: each epoch's loss is one step's.
    history = model.fit(TEXTS, batch_size=4, epochs=steps, shuffle=False, verbose=0)
    print(json.dumps({"backend": keras.config.backend(), "losses": history.history["loss"]}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
