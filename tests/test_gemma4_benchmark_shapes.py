"""The shapes of benchmarks/gemma4_generate.py are what its docstring says
(E2B's switches at fewer layers; expert shapes differing only in experts and
top-k), read through our transformers-config reader. Nothing is built or run."""

import importlib.util
import json

from conftest import TESTS_DIR

from keras_gemma.checkpoints.huggingface import config_from_hf
from keras_gemma.layer_specs import layer_specs

_spec = importlib.util.spec_from_file_location(
    "gemma4_generate", TESTS_DIR.parent / "benchmarks" / "gemma4_generate.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def ours(name, quick=False):
    return config_from_hf({**bench.shape_config(name, quick), "model_type": "gemma4_text"})


def test_e2b_shape_has_e2b_widths_and_switches():
    e2b = json.loads((TESTS_DIR.parent / "presets" / "gemma4_2b.json").read_text())["backbone"]
    for quick in (False, True):
        config = ours("e2b", quick)
        specs = layer_specs(config)
        shared = [s for s in specs if s.kv_source is not None]
        # Both layer types share keys/values and get the double-wide MLP; the last layer is full.
        assert {s.sliding for s in shared} == {True, False}
        assert {s.intermediate_dim for s in shared} == {2 * config["intermediate_dim"]}
        assert not specs[-1].sliding and config["per_layer_input_dim"]
    config = ours("e2b")
    for key in ("hidden_dim", "intermediate_dim", "num_query_heads", "num_key_value_heads",
                "head_dim", "global_head_dim", "per_layer_input_dim", "sliding_window_size",
                "rope_partial_rotary_factor", "final_logit_soft_cap"):
        assert config[key] == e2b[key], key
    assert config["layer_types"][:5] == e2b["layer_types"][:5]


def test_expert_shapes_differ_only_in_experts_and_top_k():
    configs = {name: ours(name) for name in bench.SHAPES if name.startswith("moe")}
    assert {(c["num_experts"], c["num_experts_per_token"]) for c in configs.values()} == {
        (128, 8), (16, 8), (128, 2)}
    strip = ("num_experts", "num_experts_per_token")
    widths = [{k: v for k, v in c.items() if k not in strip} for c in configs.values()]
    assert all(w == widths[0] for w in widths)
    assert widths[0]["attention_k_eq_v"] and not layer_specs(widths[0] | {
        "num_experts": 128, "num_experts_per_token": 8})[-1].sliding
