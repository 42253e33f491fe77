"""keras_gemma as a drop-in for keras-hub's Gemma API.

1. The API walk reads keras-hub's public Gemma classes from the installed
   keras-hub (members its own modules define) and checks that each exists on
   ours, with every keras-hub parameter accepted by name and keras-hub's
   positional parameters in the same places. What differs is printed; it
   must be one of the differences listed (with their reasons) in
   ``ACKNOWLEDGED``, which README's "Coming from keras-hub" spells out.
2. ``model.save("x.keras")`` + ``keras.models.load_model`` gives the same text.
3. A seeded sampler gives the same text on fresh models, as in keras-hub.
4. keras-hub arguments keras_gemma cannot honour fail with our own message.
"""

import inspect
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import TESTS_DIR
from tiny_preset import shared_tiny_preset

import keras_gemma
import keras_gemma as keras_hub_alike  # what users write: `import keras_gemma as keras_hub`

keras_hub = pytest.importorskip("keras_hub")

CLASSES = {
    "models": [
        "GemmaBackbone", "GemmaCausalLM", "GemmaCausalLMPreprocessor", "GemmaTokenizer",
        "Gemma3Backbone", "Gemma3CausalLM", "Gemma3CausalLMPreprocessor", "Gemma3Tokenizer",
        "Gemma4Backbone", "Gemma4CausalLM", "Gemma4CausalLMPreprocessor", "Gemma4Tokenizer",
        "CausalLM", "Backbone", "CausalLMPreprocessor",
    ],
    "samplers": ["Sampler", "GreedySampler", "RandomSampler", "TopKSampler", "TopPSampler"],
}
SAMPLER_FUNCTIONS = ["get", "serialize", "deserialize"]

# Reasons, by the member they excuse ("*" = on every class). README's
# "Coming from keras-hub" section lists the same.
_TEXT_ONLY = "keras_gemma is text-only: no image/audio/video inputs"
_LAYER_INTERNALS = (
    "tokenizer and preprocessor are plain Python, not Keras layers: "
    "called with __call__, no build/call/symbolic specs"
)
_GENERATE_INTERNALS = (
    "generation is one compiled decode loop over a key/value cache, with "
    "sampling inside it; keras-hub's step functions do not exist"
)
_SAMPLER_INTERNALS = (
    "samplers map (logits, one uniform number) to a token inside the "
    "compiled loop; keras-hub's sampler loop and its hooks do not exist"
)
_PRESET_REGISTRY = "known presets: keras_gemma.list_presets() / preset_info(name)"
_ENTRY_POINT = (
    "keras_gemma.models.CausalLM/Backbone/CausalLMPreprocessor are from_preset "
    "entry points, not base classes"
)
_NO_TASK_WEIGHTS = "a Gemma causal LM has no task weights apart from the backbone's (tied embedding)"
ACKNOWLEDGED_MEMBERS = {
    "presets": _PRESET_REGISTRY,
    "export_to_transformers": (
        "on the model only (a whole Hugging Face folder); LoRA adapters: "
        "backbone.save_peft_adapter"),
    "backbone_cls": "one class per concept: no class-to-class registry",
    "preprocessor_cls": "one class per concept: no class-to-class registry",
    "tokenizer_cls": "one class per concept: no class-to-class registry",
    "image_converter_cls": _TEXT_ONLY,
    "audio_converter_cls": _TEXT_ONLY,
    "video_converter_cls": _TEXT_ONLY,
    "image_converter": _TEXT_ONLY,
    "audio_converter": _TEXT_ONLY,
    "video_converter": _TEXT_ONLY,
    "image_size": _TEXT_ONLY,
    "max_images_per_prompt": _TEXT_ONLY,
    "num_audio_tokens_per_clip": _TEXT_ONLY,
    "call_with_cache": _GENERATE_INTERNALS,
    "generate_step": _GENERATE_INTERNALS,
    "make_generate_function": _GENERATE_INTERNALS,
    "preprocess_samples": _GENERATE_INTERNALS,
    "has_task_weights": _NO_TASK_WEIGHTS,
    "load_task_weights": _NO_TASK_WEIGHTS,
    "save_task_weights": _NO_TASK_WEIGHTS,
    "default_lora_layer_names": "enable_lora's default target is ('query', 'value'), keras-hub's default",
    "build": _LAYER_INTERNALS,
    "call": _LAYER_INTERNALS,
    "get_build_config": _LAYER_INTERNALS,
    "compute_output_spec": _LAYER_INTERNALS,
    "load_preset_assets": "presets are read by keras_gemma.preset_io, in one place",
    "set_proto": "a GemmaTokenizer is built from its proto once: GemmaTokenizer(proto)",
    "special_token_ids": "tokenizer.special_tokens is a {piece: id} dict; ids: its values()",
    "compute_probabilities": _SAMPLER_INTERNALS,
    "get_next_token": _SAMPLER_INTERNALS,
    "run_loop": _SAMPLER_INTERNALS,
    "variables": _SAMPLER_INTERNALS,
}
# (class, member) -> reason, for members of the entry-point classes and for
# preprocessors' save_to_preset.
ACKNOWLEDGED_CLASS_MEMBERS = {
    ("GemmaCausalLMPreprocessor", "save_to_preset"): "save the model: GemmaCausalLM.save_to_preset",
    ("Gemma3CausalLMPreprocessor", "save_to_preset"): "save the model: GemmaCausalLM.save_to_preset",
    ("Gemma4CausalLMPreprocessor", "save_to_preset"): "save the model: GemmaCausalLM.save_to_preset",
    ("GemmaTokenizer", "save_to_preset"): "save the model: GemmaCausalLM.save_to_preset",
    ("Gemma3Tokenizer", "save_to_preset"): "save the model: GemmaCausalLM.save_to_preset",
    ("Gemma4Tokenizer", "save_to_preset"): "save the model: GemmaCausalLM.save_to_preset",
}
for _name in ("CausalLM", "Backbone", "CausalLMPreprocessor"):
    for _member in (
        "backbone", "compile", "evaluate", "fit", "generate", "get_quantization_layer_structure",
        "layers", "predict", "predict_on_batch", "preprocessor", "save_to_preset",
        "summary", "test_on_batch", "train_on_batch", "from_config", "get_config",
        "enable_lora", "load_lora_weights", "save_lora_weights", "token_embedding",
        "generate_postprocess", "generate_preprocess", "sequence_length", "tokenizer",
    ):
        ACKNOWLEDGED_CLASS_MEMBERS[(_name, _member)] = _ENTRY_POINT
# (class, method) -> {keras-hub parameter: reason}, or one reason for all.
_OUR_CONFIG_NAMES = (
    "GemmaBackbone takes our config names and order (use_post_feedforward_norm, "
    "sliding_window_pattern, query_pre_attn_scalar...); keras-hub presets are "
    "translated on load, and its Gemma 1/2 intermediate_dim is twice ours"
)
_TOKENIZER_KEYWORDS = (
    "detokenize(ids) and id_to_token(token_id) name their argument differently; "
    "positional calls are the same"
)
ACKNOWLEDGED_PARAMETERS = {
    ("GemmaBackbone", "__init__"): _OUR_CONFIG_NAMES,
    ("Gemma4Backbone", "__init__"): _OUR_CONFIG_NAMES,  # Gemma4Backbone is GemmaBackbone
    ("CausalLM", "__init__"): _ENTRY_POINT,
    ("Backbone", "__init__"): _ENTRY_POINT,
    ("CausalLMPreprocessor", "__init__"): _ENTRY_POINT,
    ("Gemma4CausalLM", "generate"): {
        "assistant_model": "no speculative decoding (refused with a clear error)",
    },
    ("Gemma4CausalLM", "__init__"): {
        "final_logit_cap": "the soft cap is the backbone's final_logit_soft_cap",
    },
    ("GemmaCausalLMPreprocessor", "from_preset"): {
        "config_file": "presets are read by keras_gemma.preset_io, in one place",
    },
    ("Gemma3CausalLMPreprocessor", "from_preset"): {
        "config_file": "presets are read by keras_gemma.preset_io, in one place",
    },
    ("Gemma4CausalLMPreprocessor", "from_preset"): {
        "config_file": "presets are read by keras_gemma.preset_io, in one place",
    },
}
for _name in ("GemmaBackbone", "Gemma3Backbone", "Gemma4Backbone"):
    ACKNOWLEDGED_PARAMETERS[(_name, "save_to_preset")] = {
        "max_shard_size": "weights are written as one model.weights.h5",
    }
for _name in ("GemmaTokenizer", "Gemma3Tokenizer", "Gemma4Tokenizer"):
    ACKNOWLEDGED_PARAMETERS[(_name, "detokenize")] = _TOKENIZER_KEYWORDS
    ACKNOWLEDGED_PARAMETERS[(_name, "id_to_token")] = _TOKENIZER_KEYWORDS


def _keras_hub_members(cls):
    """Public members that keras-hub's own modules define on ``cls``."""
    members = {}
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":
            continue
        raw = inspect.getattr_static(cls, name)
        function = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
        function = function.fget if isinstance(function, property) else function
        if (getattr(function, "__module__", "") or "").startswith("keras_hub"):
            members[name] = raw
    return members


def _callable(raw):
    if isinstance(raw, (classmethod, staticmethod)):
        return raw.__func__
    return raw if inspect.isfunction(raw) else None


def _parameter_differences(name, member, theirs, ours):
    """What keras-hub's signature allows that ours does not."""
    acknowledged = ACKNOWLEDGED_PARAMETERS.get((name, member), {})
    if isinstance(acknowledged, str):
        return []
    their_parameters = [
        p for p in inspect.signature(theirs).parameters.values()
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    signature = inspect.signature(ours)
    our_parameters = [p for p in signature.parameters.values() if p.name not in ("self", "cls")]
    our_names = {p.name for p in our_parameters}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in our_parameters)
    our_positional = [
        p.name for p in our_parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    differences = []
    for index, parameter in enumerate(their_parameters):
        if parameter.name in acknowledged:
            continue
        if parameter.name not in our_names and not takes_any:
            differences.append(f"{name}.{member}: no parameter `{parameter.name}`")
        elif parameter.name not in our_names:
            # Our **kwargs takes it: forwarded to Keras (fit's validation_split)
            # or checked by the alias itself (tested by constructing them).
            continue
        elif parameter.kind is parameter.POSITIONAL_OR_KEYWORD and (
            index >= len(our_positional) or our_positional[index] != parameter.name
        ) and not _order_free(name, member):
            differences.append(
                f"{name}.{member}: `{parameter.name}` is positional #{index} in "
                f"keras-hub, #{our_positional.index(parameter.name) if parameter.name in our_positional else '-'} here"
            )
    return differences


def _order_free(name, member):
    # GemmaCausalLM takes (backbone, preprocessor) in either order, telling
    # them apart by type (keras-hub's Gemma3/4CausalLM swap the two), and
    # enable_lora(rank, [names]) is told from enable_lora(rank, alpha) so.
    return (member == "__init__" and name.endswith("CausalLM")) or member == "enable_lora"


# Translating aliases take **kwargs and check the names themselves.
_TRANSLATING = {("Gemma3Backbone", "__init__")}


def test_keras_hub_gemma_api_surface_exists_here(tiny_lm):
    instances = {
        "CausalLM": tiny_lm, "Backbone": tiny_lm.backbone,
        "CausalLMPreprocessor": tiny_lm.preprocessor, "Tokenizer": tiny_lm.preprocessor.tokenizer,
    }
    differences, acknowledged, checked = [], [], 0
    for namespace, names in CLASSES.items():
        for name in names:
            theirs = getattr(getattr(keras_hub, namespace), name)
            ours = getattr(getattr(keras_hub_alike, namespace), name, None)
            if ours is None:
                differences.append(f"keras_gemma.{namespace}.{name} is missing")
                continue
            kind = next((k for k in instances if name.endswith(k)), None)
            instance = instances.get(kind) if name not in instances else None
            for member, raw in sorted(_keras_hub_members(theirs).items()):
                checked += 1
                present = hasattr(ours, member) or (
                    instance is not None and hasattr(instance, member)
                )
                if not present:
                    reason = ACKNOWLEDGED_CLASS_MEMBERS.get((name, member)) or ACKNOWLEDGED_MEMBERS.get(member)
                    entry = f"{namespace}.{name}.{member}"
                    (acknowledged if reason else differences).append(
                        f"{entry}: {reason}" if reason else f"{entry} is missing"
                    )
                    continue
                their_function = _callable(raw)
                our_raw = inspect.getattr_static(ours, member, None)
                our_function = _callable(our_raw) if our_raw is not None else None
                if their_function is None or our_function is None or (name, member) in _TRANSLATING:
                    continue
                differences += _parameter_differences(name, member, their_function, our_function)
    for function in SAMPLER_FUNCTIONS:
        checked += 1
        if not callable(getattr(keras_hub_alike.samplers, function, None)):
            differences.append(f"samplers.{function} is missing")
    print(f"checked {checked} keras-hub members")
    print("acknowledged differences (README, 'Coming from keras-hub'):")
    print("\n".join(f"  {line}" for line in acknowledged))
    print("unexpected differences:")
    print("\n".join(f"  {line}" for line in differences) or "  none")
    assert not differences, "\n".join(differences)
    assert checked > 150  # the walk really read keras-hub's classes


def test_every_acknowledged_difference_is_in_the_readme():
    readme = (TESTS_DIR.parent / "README.md").read_text()
    section = readme.split("## Coming from keras-hub", 1)[1].split("\n## ", 1)[0]
    for member in sorted(set(ACKNOWLEDGED_MEMBERS) | {"save_to_preset", "max_shard_size", "config_file"}):
        assert f"`{member}`" in section, f"README's keras-hub section does not mention `{member}`"


# -- shared tiny model ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_preset():
    return shared_tiny_preset()


@pytest.fixture(scope="module")
def tiny_lm(tiny_preset):
    return keras_hub_alike.models.Gemma3CausalLM.from_preset(tiny_preset)


# -- .keras files ---------------------------------------------------------------


def test_keras_file_round_trip_gives_the_same_text(tiny_preset, tmp_path):
    model = keras_hub_alike.models.GemmaCausalLM.from_preset(tiny_preset)
    model.backbone.enable_lora(rank=2)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5))
    model.fit(["The quick brown fox jumps.", "Hello world"], epochs=1, verbose=0)
    model.preprocessor.sequence_length = 24
    prompts = ["The quick brown", "Hello"]
    greedy = model.generate(prompts, max_length=24)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    assert type(loaded) is keras_gemma.GemmaCausalLM
    assert loaded.preprocessor.sequence_length == 24
    assert loaded.preprocessor.tokenizer.proto == model.preprocessor.tokenizer.proto
    assert loaded.generate(prompts, max_length=24) == greedy
    # Recompiled as saved: the optimizer comes back, and it trains on.
    assert isinstance(loaded.optimizer, keras.optimizers.SGD)
    loaded.fit(["Hello world"], epochs=1, verbose=0)


def test_keras_file_loads_in_a_fresh_process(tiny_lm, tmp_path):
    path = tmp_path / "model.keras"
    tiny_lm.compile(sampler="greedy")
    expected = tiny_lm.generate("The quick brown", max_length=20)
    tiny_lm.save(path)
    code = (
        "import keras, keras_gemma.models\n"
        f"model = keras.models.load_model({str(path)!r})\n"
        "print(repr(model.generate('The quick brown', max_length=20)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == repr(expected)


def test_config_without_assets_says_how_to_get_the_vocabulary(tiny_lm):
    config = json.loads(json.dumps(tiny_lm.get_config()))
    rebuilt = keras_gemma.GemmaCausalLM.from_config(config)
    assert rebuilt.preprocessor.sequence_length == tiny_lm.preprocessor.sequence_length
    with pytest.raises(ValueError, match="load_model"):
        rebuilt.generate("Hello", max_length=12)


# int8 models refusing .keras files: see test_tutorials (QLoRA).


# -- seeded samplers --------------------------------------------------------------


def test_seeded_sampler_is_reproducible_across_fresh_models(tiny_preset):
    texts = []
    for _ in range(2):
        model = keras_hub_alike.models.Gemma3CausalLM.from_preset(tiny_preset)
        model.compile(sampler=keras_hub_alike.samplers.TopKSampler(k=5, seed=2))
        texts.append([model.generate("The quick brown", max_length=24) for _ in range(2)])
    assert texts[0] == texts[1]
    first, second = texts[0]
    # As with keras-hub's seed generator, each call draws new numbers ...
    assert first != second
    # ... another seed gives other text ...
    model.compile(sampler=keras_hub_alike.samplers.TopKSampler(k=5, seed=7))
    assert model.generate("The quick brown", max_length=24) != first
    # ... and without a seed, every call is random. (A high temperature
    # makes the top 5 near equally likely: the tiny random model's own
    # distribution can be so peaked that three draws agree by chance.)
    model.compile(sampler=keras_hub_alike.samplers.TopKSampler(k=5, temperature=100.0))
    assert len({model.generate("The quick brown", max_length=24) for _ in range(3)}) > 1


def test_sampler_arguments_are_keras_hubs():
    samplers = keras_hub_alike.samplers
    assert samplers.TopPSampler().p == keras_hub.samplers.TopPSampler().p == 0.1
    assert samplers.TopKSampler().k == keras_hub.samplers.TopKSampler().k == 5
    for name, kwargs in [("TopKSampler", dict(k=3, seed=4, temperature=0.7)),
                         ("TopPSampler", dict(p=0.5, k=10, seed=1, temperature=2.0)),
                         ("RandomSampler", dict(seed=9, temperature=0.5))]:
        ours = getattr(samplers, name)(**kwargs)
        getattr(keras_hub.samplers, name)(**kwargs)  # the same call works there
        restored = samplers.deserialize(json.loads(json.dumps(samplers.serialize(ours))))
        assert type(restored) is type(ours) and restored.get_config() == ours.get_config()
    assert isinstance(samplers.get("top_k"), samplers.TopKSampler)
    with pytest.raises(NotImplementedError, match="no BeamSampler"):
        samplers.BeamSampler(num_beams=2)


# -- keras-hub arguments: accepted with their meaning, or a clear error ------------


def test_from_preset_uses_the_given_preprocessor_and_backbone(tiny_preset):
    models = keras_hub_alike.models
    preprocessor = models.GemmaCausalLMPreprocessor.from_preset(tiny_preset, sequence_length=20)
    assert preprocessor.sequence_length == 20
    model = models.GemmaCausalLM.from_preset(tiny_preset, preprocessor=preprocessor)
    assert model.preprocessor is preprocessor
    backbone = models.Backbone.from_preset(tiny_preset, dtype="bfloat16")
    assert backbone.dtype_policy.name == "bfloat16"
    model = models.CausalLM.from_preset(tiny_preset, backbone=backbone)
    assert model.backbone is backbone
    assert models.Gemma3CausalLM(preprocessor, backbone).backbone is backbone  # keras-hub order
    assert models.GemmaCausalLM(backbone, preprocessor).preprocessor is preprocessor
    def embeddings(model):
        return keras.ops.convert_to_numpy(model.backbone.token_embedding.embeddings)

    untrained = models.GemmaCausalLM.from_preset(tiny_preset, load_weights=False)
    trained = models.GemmaCausalLM.from_preset(tiny_preset)
    assert not np.allclose(embeddings(untrained), embeddings(trained), atol=1e-3)
    with pytest.raises(ValueError, match="either `preprocessor=` or `sequence_length=`"):
        models.GemmaCausalLM.from_preset(tiny_preset, preprocessor=preprocessor, sequence_length=8)
    with pytest.raises(TypeError, match="takes: preset, load_weights, dtype"):
        models.GemmaBackbone.from_preset(tiny_preset, sequence_length=8)
    with pytest.raises(TypeError, match="GemmaBackbone"):
        models.GemmaCausalLM(backbone=preprocessor, preprocessor=None)


def test_lora_takes_keras_hub_layer_names(tiny_preset, tmp_path):
    model = keras_hub_alike.models.GemmaCausalLM.from_preset(tiny_preset)
    model.backbone.enable_lora(rank=2, target_layer_names=["query", "value", "ffw_linear"])
    assert model.backbone.lora_config["target"] == ["query", "value", "down"]
    model.backbone.save_lora_weights(tmp_path / "a.lora.h5")
    other = keras_hub_alike.models.GemmaCausalLM.from_preset(tiny_preset)
    other.backbone.load_lora_weights(tmp_path / "a.lora.h5")
    assert other.backbone.lora_config == model.backbone.lora_config
    with pytest.raises(ValueError, match="keras-hub's Gemma layer names"):
        other.backbone.enable_lora(rank=2, target_layer_names=["attention_dense"])


def test_unsupported_keras_hub_options_say_so(tiny_lm):
    models = keras_hub_alike.models
    with pytest.raises(NotImplementedError, match="layer_intercept_fn"):
        tiny_lm.score(np.array([[2, 5, 6]]), layer_intercept_fn=lambda x, i: x)
    with pytest.raises(NotImplementedError, match="filters"):
        tiny_lm.quantize("int8", filters=["query"])
    tokenizer = tiny_lm.preprocessor.tokenizer
    with pytest.raises(ValueError, match="text-only"):
        models.Gemma3CausalLMPreprocessor(tokenizer, image_converter=object())
    preprocessor = models.Gemma3CausalLMPreprocessor(
        tokenizer, image_converter=None, sequence_length=16, max_images_per_prompt=2
    )
    assert preprocessor.sequence_length == 16
    assert models.Gemma3Tokenizer(tokenizer.proto, has_vision_tokens=False).vocabulary_size() == tokenizer.vocabulary_size()
    with pytest.raises(ValueError, match="vision encoder"):
        models.Gemma3Backbone(vocabulary_size=640, image_size=896, num_layers=1,
                              num_query_heads=2, num_key_value_heads=1, hidden_dim=16,
                              intermediate_dim=32, head_dim=8, vision_encoder=object())
    with pytest.raises(ValueError, match="positive integer"):
        tiny_lm.preprocessor.sequence_length = 0
    with pytest.raises(ValueError, match="text-only"):
        tiny_lm.generate({"images": np.zeros((1, 8, 8, 3)), "prompts": ["Hi"]})


def test_gemma3_backbone_takes_keras_hub_arguments_as_a_keras_hub_config_loads():
    from keras_gemma.checkpoints.keras_hub import config_from_keras_hub

    arguments = dict(
        vocabulary_size=640, image_size=896, num_layers=2, num_query_heads=4,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64, head_dim=16,
        query_head_dim_normalize=True, use_query_key_norm=True, use_post_ffw_norm=True,
        use_post_attention_norm=True, use_sliding_window_attention=True,
        sliding_window_size=4, global_rope_scaling_factor=2.0,
    )
    theirs = keras_hub.models.Gemma3Backbone(**arguments)
    ours = keras_hub_alike.models.Gemma3Backbone(**arguments)
    expected = config_from_keras_hub(
        {"class_name": "Gemma3Backbone", "config": theirs.get_config()}, "keras-hub"
    )
    assert {k: v for k, v in ours._config().items() if k in expected} == expected
    assert ours.count_params() == theirs.count_params()
