"""The Gemma 4 presets against the published configs and transformers.

tests/data/gemma4_parameter_counts.json (written by
tests/data/make_hf_gemma4_oracle.py) holds the ``text_config`` of each
published Gemma 4 checkpoint and the parameter count of transformers'
``Gemma4ForCausalLM`` built from it on the meta device.
"""

import json
import pathlib

import pytest

from keras_gemma import GemmaBackbone
from keras_gemma.backbone import CONFIG_DEFAULTS, REQUIRED_CONFIG
from keras_gemma.checkpoints.huggingface import config_from_hf

ROOT = pathlib.Path(__file__).resolve().parent.parent
COUNTS = json.loads((ROOT / "tests" / "data" / "gemma4_parameter_counts.json").read_text())["models"]
PRESETS = {
    "gemma4_2b": "gemma-4-E2B", "gemma4_instruct_2b": "gemma-4-E2B",
    "gemma4_4b": "gemma-4-E4B", "gemma4_instruct_4b": "gemma-4-E4B",
    "gemma4_26b_a4b": "gemma-4-26B-A4B", "gemma4_instruct_26b_a4b": "gemma-4-26B-A4B",
    "gemma4_31b": "gemma-4-31B", "gemma4_instruct_31b": "gemma-4-31B",
}


def preset(name):
    return json.loads((ROOT / "presets" / f"{name}.json").read_text())


def test_the_gemma4_presets_are_the_expected_ones():
    assert {p.stem for p in (ROOT / "presets").glob("gemma4_*.json")} == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_the_published_config(name):
    record = preset(name)
    assert record["family"] == "gemma4" and record["instruct"] == ("instruct" in name)
    repo = PRESETS[name] + ("-it" if record["instruct"] else "")
    assert record["sources"]["huggingface"] == f"hf://google/{repo}"
    assert repo in record["config_source"]
    assert set(record["backbone"]) == set(REQUIRED_CONFIG) | set(CONFIG_DEFAULTS)
    published = dict(COUNTS[PRESETS[name]]["text_config"], model_type="gemma4_text")
    expected = {**CONFIG_DEFAULTS, **config_from_hf(published)}
    assert record["backbone"] == expected


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_matches_transformers(name):
    """count_parameters (no allocation) == Gemma4ForCausalLM's parameters,
    plus the one output scalar per layer transformers keeps as a buffer."""
    record = preset(name)
    hf = COUNTS[PRESETS[name]]
    assert hf["layer_scalars"] == record["backbone"]["num_layers"]
    assert record["parameters"] == hf["parameters"] + hf["layer_scalars"]
    assert GemmaBackbone.count_parameters(record["backbone"]) == record["parameters"]


def test_published_architecture_facts():
    e2b, moe = preset("gemma4_2b")["backbone"], preset("gemma4_26b_a4b")["backbone"]
    assert e2b["num_kv_shared_layers"] == 20 and e2b["use_double_wide_mlp"]
    assert e2b["per_layer_input_dim"] == 256 and e2b["layer_types"][4] == "full_attention"
    assert moe["num_experts"] == 128 and moe["num_experts_per_token"] == 8
    assert moe["attention_k_eq_v"] and moe["num_global_key_value_heads"] == 2
    for name in PRESETS:
        b = preset(name)["backbone"]
        assert b["final_logit_soft_cap"] == 30.0 and b["rope_partial_rotary_factor"] == 0.25
        assert b["layer_types"][-1] == "full_attention"
