"""Checks on the preset JSON files in ``presets/``.

The fast tests only read JSON and do arithmetic (``count_parameters``), so
they run unchanged under every Keras backend. Tests that build a real
backbone are marked ``slow``.
"""

import importlib.util
import json
import re
import pathlib
import types

import pytest

from keras_gemma import GemmaBackbone
from keras_gemma.backbone import CONFIG_DEFAULTS
from keras_gemma.backbone import GEMMA4_CONFIG_DEFAULTS
from keras_gemma.backbone import REQUIRED_CONFIG

PRESETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "presets"
# Text embedders (EmbeddingGemma) are checked in tests/test_text_embedder.py;
# Gemma 4 presets have their own checks, in tests/test_gemma4_presets.py.
PRESET_FILES = sorted(
    p for p in PRESETS_DIR.glob("*.json")
    if "embedder" not in json.loads(p.read_text()) and not p.stem.startswith("gemma4_")
)
PRESET_KEYS = {
    "name",
    "family",
    "description",
    "parameters",
    "instruct",
    "backbone",
    "sequence_length",
    "sources",
}
# Presets added with the rest of the family say where their hyperparameters
# were read.
OPTIONAL_PRESET_KEYS = {"hyperparameters_source"}
# Gemma 1-3 presets leave Gemma 4's switches at their defaults.
BACKBONE_KEYS = set(REQUIRED_CONFIG) | set(CONFIG_DEFAULTS) - set(GEMMA4_CONFIG_DEFAULTS)

EXPECTED_PRESETS = {
    "gemma_2b_en",
    "gemma_instruct_2b_en",
    "gemma_7b_en",
    "gemma_instruct_7b_en",
    "gemma_1.1_instruct_2b_en",
    "gemma_1.1_instruct_7b_en",
    "gemma2_2b_en",
    "gemma2_instruct_2b_en",
    "gemma2_9b_en",
    "gemma2_instruct_9b_en",
    "gemma2_27b_en",
    "gemma2_instruct_27b_en",
    "gemma3_270m",
    "gemma3_instruct_270m",
    "gemma3_1b",
    "gemma3_instruct_1b",
    # The rest of the family on these architectures (issue 18).
    "code_gemma_2b_en",
    "code_gemma_1.1_2b_en",
    "code_gemma_7b_en",
    "code_gemma_instruct_7b_en",
    "code_gemma_1.1_instruct_7b_en",
    "shieldgemma_2b_en",
    "shieldgemma_9b_en",
    "shieldgemma_27b_en",
    "gemma3_4b_text",
    "gemma3_instruct_4b_text",
    "gemma3_12b_text",
    "gemma3_instruct_12b_text",
    "gemma3_27b_text",
    "gemma3_instruct_27b_text",
    "medgemma_instruct_27b_text",
    "translategemma_4b_it",
    "function_gemma_instruct_270m",
}

# Published parameter counts, written out here independently of the JSON.
# Source: the "params" field of keras-hub 0.32's
# keras_hub/src/models/gemma/gemma_presets.py and
# keras_hub/src/models/gemma3/gemma3_presets.py (instruct and 1.1 variants
# share their base model's architecture and count).
PUBLISHED_PARAMETERS = {
    "gemma_2b_en": 2_506_172_416,
    "gemma_instruct_2b_en": 2_506_172_416,
    "gemma_1.1_instruct_2b_en": 2_506_172_416,
    "gemma_7b_en": 8_537_680_896,
    "gemma_instruct_7b_en": 8_537_680_896,
    "gemma_1.1_instruct_7b_en": 8_537_680_896,
    "gemma2_2b_en": 2_614_341_888,
    "gemma2_instruct_2b_en": 2_614_341_888,
    "gemma2_9b_en": 9_241_705_984,
    "gemma2_instruct_9b_en": 9_241_705_984,
    "gemma2_27b_en": 27_227_128_320,
    "gemma2_instruct_27b_en": 27_227_128_320,
    "gemma3_270m": 268_098_176,
    "gemma3_instruct_270m": 268_098_176,
    "gemma3_1b": 999_885_952,
    "gemma3_instruct_1b": 999_885_952,
    "code_gemma_2b_en": 2_506_172_416,
    "code_gemma_1.1_2b_en": 2_506_172_416,
    "code_gemma_7b_en": 8_537_680_896,
    "code_gemma_instruct_7b_en": 8_537_680_896,
    "code_gemma_1.1_instruct_7b_en": 8_537_680_896,
    "shieldgemma_2b_en": 2_614_341_888,
    "shieldgemma_9b_en": 9_241_705_984,
    "shieldgemma_27b_en": 27_227_128_320,
    "gemma3_4b_text": 3_880_099_328,
    "gemma3_instruct_4b_text": 3_880_099_328,
    "gemma3_12b_text": 11_765_788_416,
    "gemma3_instruct_12b_text": 11_765_788_416,
    "gemma3_27b_text": 27_009_002_240,
    "gemma3_instruct_27b_text": 27_009_002_240,
    "medgemma_instruct_27b_text": 27_009_002_240,
    # keras-hub's translategemma_4b_it includes the vision encoder
    # (4_299_915_632); the text model is gemma3_4b_text's.
    "translategemma_4b_it": 3_880_099_328,
    "function_gemma_instruct_270m": 268_098_176,
}

# Architecture keys of the published Hugging Face ``config.json`` of each
# repository (instruct repos share the base repo's values), copied by hand
# from huggingface.co/google/<repo>/blob/main/config.json. They use Hugging
# Face's names and conventions (e.g. ``intermediate_size`` is the real
# feed-forward width; ``rope_local_base_freq`` is Gemma 3's local RoPE base)
# and are read through transformers' own config classes where available.
_GEMMA_2B = dict(
    vocab_size=256000, num_hidden_layers=18, num_attention_heads=8,
    num_key_value_heads=1, hidden_size=2048, intermediate_size=16384,
    head_dim=256, rms_norm_eps=1e-6, rope_theta=10000.0,
    max_position_embeddings=8192,
)
_GEMMA_7B = dict(
    vocab_size=256000, num_hidden_layers=28, num_attention_heads=16,
    num_key_value_heads=16, hidden_size=3072, intermediate_size=24576,
    head_dim=256, rms_norm_eps=1e-6, rope_theta=10000.0,
    max_position_embeddings=8192,
)
_GEMMA2_COMMON = dict(
    vocab_size=256000, rms_norm_eps=1e-6, rope_theta=10000.0,
    max_position_embeddings=8192, sliding_window=4096,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
)
_GEMMA2_2B = dict(
    _GEMMA2_COMMON, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, hidden_size=2304, intermediate_size=9216,
    head_dim=256, query_pre_attn_scalar=256,
)
_GEMMA2_9B = dict(
    _GEMMA2_COMMON, num_hidden_layers=42, num_attention_heads=16,
    num_key_value_heads=8, hidden_size=3584, intermediate_size=14336,
    head_dim=256, query_pre_attn_scalar=256,
)
_GEMMA2_27B = dict(
    _GEMMA2_COMMON, num_hidden_layers=46, num_attention_heads=32,
    num_key_value_heads=16, hidden_size=4608, intermediate_size=36864,
    head_dim=128, query_pre_attn_scalar=144,
)
_GEMMA3_COMMON = dict(
    vocab_size=262144, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0, rope_scaling=None,
    max_position_embeddings=32768, sliding_window=512,
    sliding_window_pattern=6, query_pre_attn_scalar=256,
    attn_logit_softcapping=None, final_logit_softcapping=None,
)
_GEMMA3_270M = dict(
    _GEMMA3_COMMON, num_hidden_layers=18, num_attention_heads=4,
    num_key_value_heads=1, hidden_size=640, intermediate_size=2048,
    head_dim=256,
)
_GEMMA3_1B = dict(
    _GEMMA3_COMMON, num_hidden_layers=26, num_attention_heads=4,
    num_key_value_heads=1, hidden_size=1152, intermediate_size=6912,
    head_dim=256,
)
# Gemma 3 4B/12B/27B: the text_config of the multimodal (Gemma3ForConditional
# Generation) repos. Their vocab_size, 262208, counts 64 image-token rows
# beyond the 262144 text pieces; the text presets (like keras-hub's) keep
# the 262144 and a checkpoint's own config.json decides when it is loaded.
_GEMMA3_LARGE = dict(
    _GEMMA3_COMMON, vocab_size=262208, sliding_window=1024,
    rope_scaling={"rope_type": "linear", "factor": 8.0},
    max_position_embeddings=131072,
)
_GEMMA3_4B = dict(
    _GEMMA3_LARGE, num_hidden_layers=34, num_attention_heads=8,
    num_key_value_heads=4, hidden_size=2560, intermediate_size=10240,
    head_dim=256,
)
_GEMMA3_12B = dict(
    _GEMMA3_LARGE, num_hidden_layers=48, num_attention_heads=16,
    num_key_value_heads=8, hidden_size=3840, intermediate_size=15360,
    head_dim=256,
)
_GEMMA3_27B = dict(
    _GEMMA3_LARGE, num_hidden_layers=62, num_attention_heads=32,
    num_key_value_heads=16, hidden_size=5376, intermediate_size=21504,
    head_dim=128, query_pre_attn_scalar=168,
)
IMAGE_TOKENS = 64
HF_CONFIGS = {
    "google/gemma-2b": ("gemma", _GEMMA_2B),
    "google/gemma-2b-it": ("gemma", _GEMMA_2B),
    "google/gemma-1.1-2b-it": ("gemma", _GEMMA_2B),
    "google/gemma-7b": ("gemma", _GEMMA_7B),
    "google/gemma-7b-it": ("gemma", _GEMMA_7B),
    "google/gemma-1.1-7b-it": ("gemma", _GEMMA_7B),
    "google/gemma-2-2b": ("gemma2", _GEMMA2_2B),
    "google/gemma-2-2b-it": ("gemma2", _GEMMA2_2B),
    "google/gemma-2-9b": ("gemma2", _GEMMA2_9B),
    "google/gemma-2-9b-it": ("gemma2", _GEMMA2_9B),
    "google/gemma-2-27b": ("gemma2", _GEMMA2_27B),
    "google/gemma-2-27b-it": ("gemma2", _GEMMA2_27B),
    "google/gemma-3-270m": ("gemma3", _GEMMA3_270M),
    "google/gemma-3-270m-it": ("gemma3", _GEMMA3_270M),
    "google/gemma-3-1b-pt": ("gemma3", _GEMMA3_1B),
    "google/gemma-3-1b-it": ("gemma3", _GEMMA3_1B),
    "google/codegemma-2b": ("gemma", _GEMMA_2B),
    "google/codegemma-1.1-2b": ("gemma", _GEMMA_2B),
    "google/codegemma-7b": ("gemma", _GEMMA_7B),
    "google/codegemma-7b-it": ("gemma", _GEMMA_7B),
    "google/codegemma-1.1-7b-it": ("gemma", _GEMMA_7B),
    "google/shieldgemma-2b": ("gemma2", _GEMMA2_2B),
    "google/shieldgemma-9b": ("gemma2", _GEMMA2_9B),
    "google/shieldgemma-27b": ("gemma2", _GEMMA2_27B),
    "google/gemma-3-4b-pt": ("gemma3", _GEMMA3_4B),
    "google/gemma-3-4b-it": ("gemma3", _GEMMA3_4B),
    "google/gemma-3-12b-pt": ("gemma3", _GEMMA3_12B),
    "google/gemma-3-12b-it": ("gemma3", _GEMMA3_12B),
    "google/gemma-3-27b-pt": ("gemma3", _GEMMA3_27B),
    "google/gemma-3-27b-it": ("gemma3", _GEMMA3_27B),
    # A text-only Gemma3ForCausalLM: no image tokens.
    "google/medgemma-27b-text-it": ("gemma3", dict(_GEMMA3_27B, vocab_size=262144)),
    "google/translategemma-4b-it": ("gemma3", _GEMMA3_4B),
    "google/functiongemma-270m-it": ("gemma3", _GEMMA3_270M),
}


# keras-hub presets that include a vision encoder: (a keras-hub multimodal
# preset with the same encoder, its text-only keras-hub preset).
KERAS_HUB_WITH_VISION = {"translategemma_4b_it": ("gemma3_4b", "gemma3_4b_text")}


def _text_vocabulary(hf):
    """The text vocabulary of a published config (image tokens removed)."""
    if hf["vocab_size"] == 262144 + IMAGE_TOKENS:
        return hf["vocab_size"] - IMAGE_TOKENS
    return hf["vocab_size"]


def _load(path):
    with open(path) as f:
        return json.load(f)


def _preset(name):
    return _load(PRESETS_DIR / f"{name}.json")


def _hf_repo(preset):
    return preset["sources"]["huggingface"].removeprefix("hf://")


def _is_local(backbone, index):
    """Whether layer ``index`` is local, by GemmaBackbone's own rule."""
    view = types.SimpleNamespace(**backbone)
    return GemmaBackbone.is_sliding_window_layer(view, index)


def _preset_ids(paths):
    return [p.stem for p in paths]


# -- every file -------------------------------------------------------------


def test_expected_presets_present():
    assert {p.stem for p in PRESET_FILES} == EXPECTED_PRESETS


@pytest.mark.parametrize("path", PRESET_FILES, ids=_preset_ids(PRESET_FILES))
def test_preset_file_is_well_formed(path):
    preset = _load(path)
    assert PRESET_KEYS <= set(preset) <= PRESET_KEYS | OPTIONAL_PRESET_KEYS
    assert preset["name"] == path.stem
    assert preset["family"] in ("gemma", "gemma2", "gemma3")
    assert isinstance(preset["description"], str) and preset["description"]
    assert "\n" not in preset["description"]
    assert isinstance(preset["instruct"], bool)
    assert preset["instruct"] == (
        "instruct" in preset["name"] or preset["name"].endswith("_it")
    )
    assert isinstance(preset["sequence_length"], int)
    assert preset["sequence_length"] > 0
    assert set(preset["sources"]) == {"kaggle", "huggingface"}
    # Fine-tunes live under their own Kaggle model (codegemma, shieldgemma...).
    assert re.fullmatch(
        rf"kaggle://(keras|google)/[a-z0-9-]+/keras/{re.escape(preset['name'])}/\d+",
        preset["sources"]["kaggle"],
    )
    assert preset["sources"]["huggingface"].startswith("hf://google/")
    # Every constructor argument is written out (dtype is a load-time
    # choice, not part of the architecture).
    assert set(preset["backbone"]) == BACKBONE_KEYS
    for name in REQUIRED_CONFIG:
        value = preset["backbone"][name]
        assert isinstance(value, int) and not isinstance(value, bool)


@pytest.mark.parametrize("path", PRESET_FILES, ids=_preset_ids(PRESET_FILES))
def test_parameter_count_matches_architecture(path):
    preset = _load(path)
    assert isinstance(preset["parameters"], int)
    assert GemmaBackbone.count_parameters(preset["backbone"]) == (
        preset["parameters"]
    )


@pytest.mark.parametrize("path", PRESET_FILES, ids=_preset_ids(PRESET_FILES))
def test_parameter_count_matches_published(path):
    preset = _load(path)
    assert preset["parameters"] == PUBLISHED_PARAMETERS[preset["name"]]


def test_published_gemma_1_counts():
    # Gemma 1's model card / keras-hub numbers, as literals.
    assert _preset("gemma_2b_en")["parameters"] == 2_506_172_416
    assert _preset("gemma_7b_en")["parameters"] == 8_537_680_896
    assert (
        GemmaBackbone.count_parameters(_preset("gemma_2b_en")["backbone"])
        == 2_506_172_416
    )
    assert (
        GemmaBackbone.count_parameters(_preset("gemma_7b_en")["backbone"])
        == 8_537_680_896
    )


def test_variants_share_their_base_architecture():
    pairs = [
        ("gemma_2b_en", "gemma_instruct_2b_en"),
        ("gemma_2b_en", "gemma_1.1_instruct_2b_en"),
        ("gemma_7b_en", "gemma_instruct_7b_en"),
        ("gemma_7b_en", "gemma_1.1_instruct_7b_en"),
        ("gemma2_2b_en", "gemma2_instruct_2b_en"),
        ("gemma2_9b_en", "gemma2_instruct_9b_en"),
        ("gemma2_27b_en", "gemma2_instruct_27b_en"),
        ("gemma3_270m", "gemma3_instruct_270m"),
        ("gemma3_1b", "gemma3_instruct_1b"),
    ]
    for base, variant in pairs:
        base, variant = _preset(base), _preset(variant)
        assert base["backbone"] == variant["backbone"]
        assert base["parameters"] == variant["parameters"]
        assert base["sequence_length"] == variant["sequence_length"]
        assert base["family"] == variant["family"]


@pytest.mark.parametrize("path", PRESET_FILES, ids=_preset_ids(PRESET_FILES))
def test_family_switches(path):
    preset = _load(path)
    b = preset["backbone"]
    family = preset["family"]
    if family == "gemma":
        assert b["attention_logit_soft_cap"] is None
        assert b["final_logit_soft_cap"] is None
        assert not b["use_post_attention_norm"]
        assert not b["use_post_feedforward_norm"]
        assert not b["use_query_key_norm"]
        assert b["sliding_window_size"] is None
        assert b["rope_max_wavelength"] == 10_000.0
    elif family == "gemma2":
        assert b["attention_logit_soft_cap"] == 50.0
        assert b["final_logit_soft_cap"] == 30.0
        assert b["use_post_attention_norm"] and b["use_post_feedforward_norm"]
        assert not b["use_query_key_norm"]
        assert b["sliding_window_size"] == 4096
        assert b["sliding_window_pattern"] == 2
        assert b["rope_max_wavelength"] == 10_000.0
        # Layer 0 is local, layer 1 global, alternating.
        assert [_is_local(b, i) for i in range(4)] == [True, False] * 2
    else:
        assert b["attention_logit_soft_cap"] is None
        assert b["final_logit_soft_cap"] is None
        assert b["use_post_attention_norm"] and b["use_post_feedforward_norm"]
        assert b["use_query_key_norm"]
        assert b["sliding_window_pattern"] == 6
        assert b["rope_max_wavelength"] == 1_000_000.0
        assert b["local_rope_max_wavelength"] == 10_000.0
        # Five local layers, then one global.
        assert [_is_local(b, i) for i in range(6)] == [True] * 5 + [False]
    assert b["dropout"] == 0.0
    assert b["layer_norm_epsilon"] == 1e-6


# -- independent sources ----------------------------------------------------


@pytest.mark.parametrize("path", PRESET_FILES, ids=_preset_ids(PRESET_FILES))
def test_matches_hugging_face_config(path):
    """Compares with the published HF config.json values hard-coded above."""
    preset = _load(path)
    family, hf = HF_CONFIGS[_hf_repo(preset)]
    b = preset["backbone"]
    assert family == preset["family"]
    assert b["vocabulary_size"] == _text_vocabulary(hf)
    assert b["num_layers"] == hf["num_hidden_layers"]
    assert b["num_query_heads"] == hf["num_attention_heads"]
    assert b["num_key_value_heads"] == hf["num_key_value_heads"]
    assert b["hidden_dim"] == hf["hidden_size"]
    assert b["intermediate_dim"] == hf["intermediate_size"]
    assert b["head_dim"] == hf["head_dim"]
    assert b["layer_norm_epsilon"] == hf["rms_norm_eps"]
    assert (b["query_pre_attn_scalar"] or b["head_dim"]) == hf.get(
        "query_pre_attn_scalar", hf["head_dim"]
    )
    assert b["attention_logit_soft_cap"] == hf.get("attn_logit_softcapping")
    assert b["final_logit_soft_cap"] == hf.get("final_logit_softcapping")
    assert b["sliding_window_size"] == hf.get("sliding_window")
    assert b["rope_max_wavelength"] == hf["rope_theta"]
    assert (b["local_rope_max_wavelength"] or b["rope_max_wavelength"]) == (
        hf.get("rope_local_base_freq", hf["rope_theta"])
    )
    # Gemma 3 4B+ scale the global layers' RoPE linearly by 8.
    scaling = hf.get("rope_scaling")
    expected_factor = 1.0 if scaling is None else scaling["factor"]
    assert scaling is None or scaling["rope_type"] == "linear"
    assert b["rope_scaling_factor"] == expected_factor
    assert preset["sequence_length"] == hf["max_position_embeddings"]


def _transformers_config(family, hf):
    transformers = pytest.importorskip("transformers")
    cls = {
        "gemma": transformers.GemmaConfig,
        "gemma2": transformers.Gemma2Config,
        "gemma3": transformers.Gemma3TextConfig,
    }[family]
    return cls(**hf)


def _rope_thetas(config):
    """(global, local) RoPE bases of a transformers config, across versions."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "full_attention" in params:
        return (
            params["full_attention"]["rope_theta"],
            params["sliding_attention"]["rope_theta"],
        )
    if isinstance(params, dict) and "rope_theta" in params:
        return params["rope_theta"], params["rope_theta"]
    theta = config.rope_theta
    return theta, getattr(config, "rope_local_base_freq", theta)


@pytest.mark.parametrize("path", PRESET_FILES, ids=_preset_ids(PRESET_FILES))
def test_layer_types_match_transformers(path):
    """Reads the published config through transformers' own config class,
    and checks which layers are local and the RoPE bases of each kind."""
    preset = _load(path)
    family, hf = HF_CONFIGS[_hf_repo(preset)]
    config = _transformers_config(family, hf)
    b = preset["backbone"]
    assert config.num_hidden_layers == b["num_layers"]
    assert config.intermediate_size == b["intermediate_dim"]
    layer_types = getattr(config, "layer_types", None)
    if family == "gemma":
        assert layer_types is None or set(layer_types) == {"full_attention"}
        expected_local = [False] * b["num_layers"]
    else:
        assert len(layer_types) == b["num_layers"]
        expected_local = [t == "sliding_attention" for t in layer_types]
        assert config.sliding_window == b["sliding_window_size"]
    assert [
        _is_local(b, i) for i in range(b["num_layers"])
    ] == expected_local
    global_theta, local_theta = _rope_thetas(config)
    assert b["rope_max_wavelength"] == global_theta
    assert (b["local_rope_max_wavelength"] or b["rope_max_wavelength"]) == (
        local_theta
    )


def test_transformers_defaults_are_published_configs():
    # transformers' GemmaConfig() defaults are gemma-7b's config and
    # Gemma2Config() defaults are gemma-2-2b's (checked against the HF
    # config.json files); Gemma3TextConfig() defaults are not a published
    # model, so they are not used.
    transformers = pytest.importorskip("transformers")
    for preset_name, config in [
        ("gemma_7b_en", transformers.GemmaConfig()),
        ("gemma2_2b_en", transformers.Gemma2Config()),
    ]:
        b = _preset(preset_name)["backbone"]
        assert config.vocab_size == b["vocabulary_size"]
        assert config.num_hidden_layers == b["num_layers"]
        assert config.num_attention_heads == b["num_query_heads"]
        assert config.num_key_value_heads == b["num_key_value_heads"]
        assert config.hidden_size == b["hidden_dim"]
        assert config.intermediate_size == b["intermediate_dim"]
        assert config.head_dim == b["head_dim"]


def _keras_hub_presets(module):
    """keras-hub's presets dict, read without importing keras_hub."""
    spec = importlib.util.find_spec("keras_hub")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("keras_hub is not installed")
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    path = root / "src" / "models" / module / f"{module}_presets.py"
    if not path.exists():
        pytest.skip(f"{path} not found")
    file_spec = importlib.util.spec_from_file_location(
        f"_keras_hub_{module}_presets", path
    )
    mod = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(mod)
    return mod.backbone_presets


@pytest.mark.parametrize("path", PRESET_FILES, ids=_preset_ids(PRESET_FILES))
def test_matches_keras_hub_presets(path):
    preset = _load(path)
    module = "gemma3" if preset["family"] == "gemma3" else "gemma"
    presets = _keras_hub_presets(module)
    keras_hub_preset = presets[preset["name"]]
    params = keras_hub_preset["metadata"]["params"]
    if preset["name"] in KERAS_HUB_WITH_VISION:
        # keras-hub's preset carries the vision encoder; take away the size
        # keras-hub itself gives it (the multimodal minus the text preset).
        multimodal, text = KERAS_HUB_WITH_VISION[preset["name"]]
        params -= presets[multimodal]["metadata"]["params"] - (
            presets[text]["metadata"]["params"]
        )
    assert params == preset["parameters"]
    # Kaggle versions move on; compare the handle without its version.
    handle = keras_hub_preset["kaggle_handle"]
    assert preset["sources"]["kaggle"].rsplit("/", 1)[0] == (
        handle.rsplit("/", 1)[0]
    )


FAMILY_COUNTS = json.loads(
    (pathlib.Path(__file__).parent / "data" / "family_param_counts.json").read_text()
)["counts"]
FAMILY_PRESETS = [
    p for p in PRESET_FILES
    if _hf_repo(_load(p)) in FAMILY_COUNTS
]


@pytest.mark.parametrize("path", FAMILY_PRESETS, ids=_preset_ids(FAMILY_PRESETS))
def test_parameter_count_matches_transformers(path):
    """transformers' count of the published config, built on the meta
    device by tests/data/make_family_param_counts.py (cached)."""
    preset = _load(path)
    entry = FAMILY_COUNTS[_hf_repo(preset)]
    b = preset["backbone"]
    assert entry["family"] == preset["family"]
    if "text_vocabulary_parameters" in entry:
        # A multimodal repo: its embedding has 64 image-token rows more.
        assert entry["text_vocabulary_parameters"] == preset["parameters"]
        assert entry["parameters"] - preset["parameters"] == IMAGE_TOKENS * b["hidden_dim"]
    else:
        assert entry["parameters"] == preset["parameters"]
    hf = HF_CONFIGS[_hf_repo(preset)][1]
    for key, value in entry["config"].items():
        assert hf[key] == value, key


def test_every_new_preset_has_a_transformers_count():
    assert {p.stem for p in FAMILY_PRESETS} == {
        p.stem for p in PRESET_FILES if "hyperparameters_source" in _load(p)
    }


# -- real builds (slow) -------------------------------------------------------


def _small_architectures():
    seen, paths = [], []
    for path in PRESET_FILES:
        preset = _load(path)
        if preset["parameters"] < 3e8 and preset["backbone"] not in seen:
            seen.append(preset["backbone"])
            paths.append(path)
    return paths


SMALL = _small_architectures()


@pytest.mark.slow
@pytest.mark.parametrize("path", SMALL, ids=_preset_ids(SMALL))
def test_small_preset_builds_with_published_count(path):
    preset = _load(path)
    backbone = GemmaBackbone(**preset["backbone"], dtype="bfloat16")
    assert backbone.count_params() == preset["parameters"]
    assert backbone.count_params() == PUBLISHED_PARAMETERS[preset["name"]]


@pytest.mark.slow
def test_gemma_2b_builds_with_published_count():
    # bfloat16 halves the memory: about 5 GB for 2.5B parameters.
    backbone = GemmaBackbone.from_preset("gemma_2b_en", load_weights=False, dtype="bfloat16")
    assert backbone.count_params() == 2_506_172_416
