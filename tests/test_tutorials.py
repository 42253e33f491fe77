"""The published keras-hub Gemma tutorials, run with ``import keras_gemma as keras_hub``.

Each test is one tutorial's code, in order, changed only where the issue
allows: the import line, the preset (a tiny Gemma 3 shaped preset on disk
instead of a Kaggle download), the dataset (a few examples written here
instead of a download) and sizes (sequence lengths, number of examples).
Every other change is marked ``# CHANGED:`` with its reason; README's
"Coming from keras-hub" section lists them. Output cells (``print``,
``summary``) stay, so a failure shows where the tutorial stopped. The real
``gemma3_270m`` runs in the slow test at the end and in
notebooks/keras_hub_tutorial.ipynb.

Sources:
- keras.io, "Parameter-efficient fine-tuning of Gemma with LoRA and QLoRA"
  (examples/keras_recipes/parameter_efficient_finetuning_of_gemma_with_lora_and_qlora.py)
- ai.google.dev, "Fine-tune Gemma using LoRA" (site/en/gemma/docs/core/lora_tuning.ipynb)
- ai.google.dev, "Get started with Gemma using KerasHub" (core/keras_inference.ipynb)
- ai.google.dev, "Distributed tuning with Gemma using Keras" (core/distributed_tuning.ipynb)
"""

import gc

import keras
import numpy as np
import pytest
from tiny_preset import shared_tiny_preset

import keras_gemma as keras_hub  # the one line a user changes

PRESET = None  # set by the fixture: the tiny preset's directory

# A few translation pairs in the shape of MTNT's fr-en split (src, dst).
MTNT_FR_EN = [
    {"src": "Je suis d'accord avec toi.", "dst": "I agree with you."},
    {"src": "Il fait beau aujourd'hui !", "dst": "The weather is nice today!"},
    {"src": "C'est pas grave, on verra demain.", "dst": "It's fine, we'll see tomorrow."},
    {"src": "Merci pour le lien.", "dst": "Thanks for the link."},
]
# A few instruction/response records in the shape of databricks-dolly-15k.
DOLLY = [
    {"instruction": "Name three primary colors.", "context": "", "response": "Red, yellow and blue."},
    {"instruction": "What is the capital of Italy?", "context": "", "response": "Rome."},
    {"instruction": "Summarize this.", "context": "A long text.", "response": "Skipped: has context."},
    {"instruction": "Give me a word that rhymes with cat.", "context": "", "response": "Hat."},
]
# A few reviews in the shape of imdb_reviews (text, label).
IMDB = [
    ("A warm, funny film with a great cast.", 1),
    ("Two hours I will never get back.", 0),
    ("The plot is thin but the jokes land.", 1),
    ("Beautifully shot, badly written.", 0),
]


@pytest.fixture(autouse=True)
def tiny_preset_and_clean_globals():
    global PRESET
    PRESET = shared_tiny_preset()
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
    keras.distribution.set_distribution(None)


def lora_parameter_count(backbone, rank, targets=("query", "value")):
    """rank * (in + out) per adapted kernel, written out from the config."""
    widths = {
        "query": (backbone.hidden_dim, backbone.num_query_heads * backbone.head_dim),
        "value": (backbone.hidden_dim, backbone.num_key_value_heads * backbone.head_dim),
    }
    return backbone.num_layers * sum(rank * sum(widths[t]) for t in targets)


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_keras_io_lora_and_qlora_recipe(capsys, tmp_path):
    import tensorflow as tf

    keras.config.set_dtype_policy("bfloat16")

    # CHANGED (dataset): tfds.load("mtnt/fr-en") -> the examples above.
    train_ds = tf.data.Dataset.from_tensor_slices(
        {key: [example[key] for example in MTNT_FR_EN] for key in ("src", "dst")}
    )
    examples = train_ds.take(3)
    examples = examples.as_numpy_iterator()
    for idx, example in enumerate(examples):
        print(f"Example {idx}:")
        for key, val in example.items():
            print(f"{key}: {val}")
        print()

    train_ds = train_ds.map(
        lambda x: tf.strings.join(
            [
                "<start_of_turn>user\n",
                "Translate French into English:\n",
                x["src"],
                "<end_of_turn>\n",
                "<start_of_turn>model\n",
                "Translation:\n",
                x["dst"],
                "<end_of_turn>",
            ]
        )
    )
    examples = train_ds.take(3)
    examples = examples.as_numpy_iterator()
    for idx, example in enumerate(examples):
        print(f"Example {idx}:")
        print(example)
        print()

    train_ds = train_ds.batch(1).take(100)

    # CHANGED (preset, size): "gemma_1.1_instruct_2b_en", sequence_length=256.
    # Like Kaggle's Gemma presets, this one is stored in bfloat16 (a stored
    # dtype wins over the global policy, in keras-hub as here).
    preset = shared_tiny_preset("bfloat16")
    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor.from_preset(
        preset, sequence_length=96
    )
    gemma_lm = keras_hub.models.GemmaCausalLM.from_preset(
        preset, preprocessor=preprocessor
    )
    gemma_lm.summary()

    gemma_lm.backbone.enable_lora(rank=4)
    gemma_lm.summary()

    optimizer = keras.optimizers.SGD(learning_rate=1e-4)
    gemma_lm.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=optimizer,
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    history = gemma_lm.fit(train_ds, epochs=1)

    template = (
        "<start_of_turn>user\n"
        "Translate French into English:\n"
        "{inputs}"
        "<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Translation:\n"
    )
    prompt = template.format(inputs="Bonjour, je m'appelle Morgane.")
    outputs = gemma_lm.generate(prompt, max_length=72)  # CHANGED (size): 256
    print("Translation:\n", outputs.replace(prompt, ""))

    # What the recipe shows, checked: bfloat16 weights, only the adapters
    # train, the fit ran over the data, and the output continues the prompt.
    assert gemma_lm.backbone.dtype_policy.name == "bfloat16"
    assert trainable_count(gemma_lm) == lora_parameter_count(gemma_lm.backbone, 4)
    assert np.isfinite(history.history["loss"][0])
    assert outputs.startswith(prompt)

    del preprocessor
    del gemma_lm
    del optimizer
    gc.collect()

    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor.from_preset(
        preset, sequence_length=96
    )
    gemma_lm = keras_hub.models.GemmaCausalLM.from_preset(
        preset, preprocessor=preprocessor
    )
    gemma_lm.quantize("int8")
    gemma_lm.backbone.enable_lora(rank=4)
    gemma_lm.summary()

    optimizer = keras.optimizers.SGD(learning_rate=1e-4)
    gemma_lm.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=optimizer,
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    history = gemma_lm.fit(train_ds, epochs=1)

    prompt = template.format(inputs="Bonjour, je m'appelle Morgane.")
    outputs = gemma_lm.generate(prompt, max_length=72)
    print("Translation:\n", outputs.replace(prompt, ""))

    assert gemma_lm.backbone.is_quantized
    assert trainable_count(gemma_lm) == lora_parameter_count(gemma_lm.backbone, 4)
    assert np.isfinite(history.history["loss"][0])
    assert outputs.startswith(prompt)
    assert "Translate French into English" in capsys.readouterr().out
    # Not in the recipe: an int8 model refuses a .keras file up front,
    # saying what to do (Keras could not load it back).
    with pytest.raises(ValueError, match="quantize\\('int8'\\) after loading"):
        gemma_lm.save(tmp_path / "int8.keras")


def test_ai_google_dev_lora_tuning():
    gemma_lm = keras_hub.models.Gemma3CausalLM.from_preset(PRESET)  # CHANGED (preset)
    gemma_lm.summary()

    template = "Instruction:\n{instruction}\n\nResponse:\n{response}"

    prompt = template.format(
        instruction="What should I do on a trip to Europe?",
        response="",
    )
    sampler = keras_hub.samplers.TopKSampler(k=5, seed=2)
    gemma_lm.compile(sampler=sampler)
    before = gemma_lm.generate(prompt, max_length=80)  # CHANGED (size): 256
    print(before)

    prompt = template.format(
        instruction="Explain the process of photosynthesis in a way that a child could understand.",
        response="",
    )
    print(gemma_lm.generate(prompt, max_length=80))

    # CHANGED (dataset): the first 1000 lines of databricks-dolly-15k.jsonl
    # -> the records above, read the same way.
    prompts = []
    responses = []
    line_count = 0
    for examples in DOLLY:
        if line_count >= 1000:
            break
        if examples["context"]:
            continue
        prompts.append(examples["instruction"])
        responses.append(examples["response"])
        line_count += 1
    data = {
        "prompts": prompts,
        "responses": responses
    }

    gemma_lm.backbone.enable_lora(rank=4)
    gemma_lm.summary()

    gemma_lm.preprocessor.sequence_length = 64  # CHANGED (size): 256
    optimizer = keras.optimizers.AdamW(
        learning_rate=5e-5,
        weight_decay=0.01,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "scale"])

    gemma_lm.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=optimizer,
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    history = gemma_lm.fit(data, epochs=1, batch_size=1)

    prompt = template.format(
        instruction="What should I do on a trip to Europe?",
        response="",
    )
    sampler = keras_hub.samplers.TopKSampler(k=5, seed=2)
    gemma_lm.compile(sampler=sampler)
    after = gemma_lm.generate(prompt, max_length=80)
    print(after)

    prompt = template.format(
        instruction="Explain the process of photosynthesis in a way that a child could understand.",
        response="",
    )
    print(gemma_lm.generate(prompt, max_length=80))

    assert len(prompts) == 3  # the record with context was skipped
    assert trainable_count(gemma_lm) == lora_parameter_count(gemma_lm.backbone, 4)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
    assert gemma_lm.preprocessor.sequence_length == 64
    assert before.startswith("Instruction:\nWhat should I do") and after.startswith(
        "Instruction:\nWhat should I do"
    )
    # (Seeded samplers on fresh models: test_keras_hub_compat.)


def test_ai_google_dev_get_started_with_keras_hub():
    gemma_lm = keras_hub.models.Gemma3CausalLM.from_preset(
        PRESET,  # CHANGED (preset): "gemma3_instruct_4b"
        dtype="bfloat16",
    )
    gemma_lm.summary()

    one = gemma_lm.generate("what is keras in 3 bullet points?", max_length=40)  # CHANGED (size): 64
    two = gemma_lm.generate(
        ["what is keras in 3 bullet points?",
         "The universe is"],
        max_length=40)

    PROMPT_TEMPLATE = """<start_of_turn>user
{question}
<end_of_turn>
<start_of_turn>model
"""
    question = """"what is keras in 3 bullet points?"""
    prompt = PROMPT_TEMPLATE.format(question=question)
    chat = gemma_lm.generate(prompt)

    gemma_lm.compile(sampler="top_k")
    sampled = gemma_lm.generate("The universe is", max_length=40)

    # CHANGED: the image cells (generate({"images": ..., "prompts": ...}),
    # preprocessor.max_images_per_prompt) are left out: keras_gemma is
    # text-only.
    assert gemma_lm.backbone.dtype_policy.name == "bfloat16"
    assert isinstance(one, str) and one.startswith("what is keras")
    assert isinstance(two, list) and two[0] == one and two[1].startswith("The universe is")
    assert chat.startswith(prompt)  # no max_length: the preset's sequence_length
    assert sampled.startswith("The universe is")


@pytest.mark.skipif(keras.config.backend() != "jax", reason="the guide is JAX-only (Keras' distribution API)")
def test_ai_google_dev_distributed_tuning():
    import tensorflow as tf

    # CHANGED (size): (1, 8) TPU cores -> (1, every device here).
    device_mesh = keras.distribution.DeviceMesh(
        (1, len(keras.distribution.list_devices())),
        ["batch", "model"],
        devices=keras.distribution.list_devices())

    # CHANGED: the guide writes the layout map by hand, with keras-hub's
    # weight paths and 3-D per-head einsum kernels ("attention_output",
    # "ffw_gating", (model, None, None)); keras_gemma's kernels are 2-D
    # Dense kernels with other names, so the map that matches them comes
    # from the helper keras-hub also has (GemmaBackbone.get_layout_map).
    layout_map = keras_hub.models.GemmaBackbone.get_layout_map(device_mesh)

    model_parallel = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch")

    keras.distribution.set_distribution(model_parallel)
    gemma_lm = keras_hub.models.GemmaCausalLM.from_preset(PRESET)  # CHANGED (preset)

    decoder_block_1 = gemma_lm.backbone.get_layer('decoder_block_1')
    print(type(decoder_block_1))
    specs = []
    for variable in decoder_block_1.weights:
        print(f'{variable.path:<58}  {str(variable.shape):<16}  {str(variable.value.sharding.spec)}')
        specs.append(variable.value.sharding.spec)

    gemma_lm.generate("Best comedy movies in the 90s ", max_length=40)  # CHANGED (size): 64

    # CHANGED (dataset): tfds "imdb_reviews" -> the reviews above, batched by 2.
    imdb_train = tf.data.Dataset.from_tensor_slices(
        ([text for text, _ in IMDB], [label for _, label in IMDB])
    ).batch(2)
    imdb_train = imdb_train.map(lambda x, y: x)
    imdb_train.unbatch().take(1).get_single_element().numpy()
    imdb_train = imdb_train.take(2000)

    gemma_lm.backbone.enable_lora(rank=4)

    gemma_lm.preprocessor.sequence_length = 32  # CHANGED (size): 128
    optimizer = keras.optimizers.AdamW(
        learning_rate=5e-5,
        weight_decay=0.01,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "scale"])

    gemma_lm.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=optimizer,
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    gemma_lm.summary()
    history = gemma_lm.fit(imdb_train, epochs=1)

    text = gemma_lm.generate("Best comedy movies in the 90s ", max_length=40)

    assert any("model" in str(spec) for spec in specs)  # the weights are laid out
    assert np.isfinite(history.history["loss"][0])
    assert text.startswith("Best comedy movies in the 90s")


# -- the real model -------------------------------------------------------------


@pytest.mark.slow
def test_lora_tutorial_on_gemma3_270m():
    """ai.google.dev's LoRA tutorial on the real gemma3_270m, at CI size."""
    gemma_lm = keras_hub.models.Gemma3CausalLM.from_preset("gemma3_270m")  # CHANGED (preset)
    template = "Instruction:\n{instruction}\n\nResponse:\n{response}"
    prompt = template.format(instruction="What is the capital of France?", response="")
    gemma_lm.compile(sampler=keras_hub.samplers.TopKSampler(k=5, seed=2))
    before = gemma_lm.generate(prompt, max_length=48)
    fresh = keras_hub.models.Gemma3CausalLM.from_preset("gemma3_270m")
    fresh.compile(sampler=keras_hub.samplers.TopKSampler(k=5, seed=2))
    assert fresh.generate(prompt, max_length=48) == before
    del fresh

    data = {
        "prompts": [r["instruction"] for r in DOLLY if not r["context"]],
        "responses": [r["response"] for r in DOLLY if not r["context"]],
    }
    gemma_lm.backbone.enable_lora(rank=4)
    gemma_lm.preprocessor.sequence_length = 32
    optimizer = keras.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01)
    optimizer.exclude_from_weight_decay(var_names=["bias", "scale"])
    gemma_lm.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=optimizer,
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    history = gemma_lm.fit(data, epochs=1, batch_size=1)
    gemma_lm.compile(sampler="greedy")
    answer = gemma_lm.generate(prompt, max_length=48)
    print(before, answer, sep="\n---\n")
    assert np.isfinite(history.history["loss"][0])
    assert "Paris" in answer
