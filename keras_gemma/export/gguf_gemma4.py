"""Gemma 4 (text) in llama.cpp's ``gemma4`` GGUF layout.

What llama.cpp's converter (``Gemma4Model``) and loader
(``llama_model_gemma4``) expect, for the Gemma 4 switches written here:

* per-layer attention: ``attention.sliding_window_pattern`` (one bool per
  layer), ``attention.key_length`` / ``value_length`` the full layers' head
  size and ``*_swa`` the sliding layers', ``attention.head_count_kv`` a
  per-layer array when full layers have their own count;
* proportional RoPE on full layers: ``rope.dimension_count`` is the whole
  full head and one ``rope_freqs`` tensor gives frequency factor 1 to the
  rotated pairs and 1e30 (no rotation) to the rest;
* norms multiply by their weight as stored (no ``1 +``); the value norm has
  no weight; ``blk.N.layer_output_scale`` is the layer scalar; a full layer
  with keys as values (``attention_k_eq_v``) has no ``attn_v``;
* per-layer embeddings (E2B, E4B): ``per_layer_token_embd``,
  ``per_layer_model_proj``, ``per_layer_proj_norm`` and per block
  ``inp_gate``, ``proj``, ``post_norm``; layers that reuse an earlier
  layer's keys and values (``attention.shared_kv_layers``) have no key and
  value tensors, and ``feed_forward_length`` is per layer when the shared
  ones are twice as wide;
* the expert mixture (26B-A4B): router ``ffn_gate_inp`` (+ ``.scale``),
  stacked ``ffn_{gate,up,down}_exps`` and the per-expert ``ffn_down_exps.
  scale``, with the norms around the dense MLP and the experts.
"""

import numpy as np

# The one tensor table, read by keras_gemma's reader too.
from keras_gemma.checkpoints.gguf_gemma4 import NO_ROTATION, check_kv_sharing, expected_tensors  # noqa: F401

# The Gemma 4 switches GGUF export cannot write yet, and their "off" values.
UNSUPPORTED = {"rope_scaling_factor": 1.0}


def check_supported(config):
    found = sorted(key for key, off in UNSUPPORTED.items() if config.get(key, off) != off)
    if found:
        raise ValueError(
            "GGUF cannot express this Gemma 4 model yet: keras_gemma writes "
            "dense Gemma 4 (E2B, E4B, 31B layouts) but not "
            f"{', '.join(found)} (RoPE scaling). Export it "
            "with --format hf (a Hugging Face folder) and convert that with "
            "llama.cpp's convert_hf_to_gguf.py."
        )
    try:
        check_kv_sharing(config)
    except ValueError as error:
        raise ValueError(
            f"GGUF cannot express this Gemma 4 model: {error} Use --format hf for this model."
        ) from None


def check_reads_back(config, metadata_values, table):
    """Raises unless a reader of this metadata and these tensors builds
    ``config``'s network: the reader is ours (``checkpoints.gguf_gemma4``),
    which applies llama.cpp's fixed rules (queries not scaled, norms and
    the value norm as in Google's Gemma 4), so a model that mixes in other
    settings is refused instead of written to a file llama.cpp would run
    differently."""
    from keras_gemma.checkpoints.gguf_gemma4 import config_from_metadata

    read = config_from_metadata(metadata_values, set(table), rope_freqs(config), "<export>")
    ours, theirs = _semantics(config), _semantics(read)
    problems = [f"{key}: the model has {ours[key]!r}, a gemma4 GGUF file gives {theirs[key]!r}"
                for key in ours if ours[key] != theirs[key]]
    if problems:
        raise ValueError(
            "GGUF cannot express this Gemma 4 model exactly; llama.cpp would "
            "run a different network:\n  " + "\n  ".join(problems) + "\nUse "
            "--format hf for this model."
        )


def _semantics(config):
    """The settings that decide the computation: each layer's shape, and the
    rest of the config (those that only feed the layers' shapes left out)."""
    from keras_gemma.backbone import CONFIG_DEFAULTS

    shaped_by_layers = {
        "dropout", "sliding_window_pattern", "layer_types", "head_dim", "global_head_dim",
        "num_key_value_heads", "num_global_key_value_heads", "attention_k_eq_v",
        "intermediate_dim", "use_double_wide_mlp", "num_kv_shared_layers",
        "rope_max_wavelength", "local_rope_max_wavelength", "rope_scaling_factor",
        "rope_partial_rotary_factor", "per_layer_vocabulary_size",
    }
    values = {key: config.get(key, default) for key, default in CONFIG_DEFAULTS.items()
              if key not in shaped_by_layers}
    for key in ("vocabulary_size", "num_layers", "num_query_heads", "hidden_dim"):
        values[key] = config[key]
    values["layer_norm_epsilon"] = float(np.float32(config["layer_norm_epsilon"]))
    values["layers"] = _specs(config)
    return values


def _specs(config):
    from keras_gemma.layer_specs import layer_specs

    return layer_specs(config)


def metadata(config):
    """The ``gemma4.*`` keys (Python values; lists become GGUF arrays)."""
    prefix = "gemma4."
    specs = _specs(config)
    local = [spec for spec in specs if spec.sliding]
    full = [spec for spec in specs if not spec.sliding]
    local_dim = local[0].head_dim if local else config["head_dim"]
    full_dim = full[0].head_dim if full else local_dim
    kv_heads = [spec.num_key_value_heads for spec in specs]
    widths = [spec.intermediate_dim for spec in specs]
    values = {
        prefix + "context_length": 131_072,
        prefix + "embedding_length": config["hidden_dim"],
        prefix + "block_count": config["num_layers"],
        prefix + "feed_forward_length": widths[0] if len(set(widths)) == 1 else widths,
        prefix + "attention.head_count": config["num_query_heads"],
        prefix + "attention.head_count_kv": kv_heads[0] if len(set(kv_heads)) == 1 else kv_heads,
        prefix + "attention.layer_norm_rms_epsilon": float(config["layer_norm_epsilon"]),
        prefix + "attention.key_length": full_dim,
        prefix + "attention.value_length": full_dim,
        prefix + "attention.key_length_swa": local_dim,
        prefix + "attention.value_length_swa": local_dim,
        prefix + "attention.sliding_window": config["sliding_window_size"],
        prefix + "attention.sliding_window_pattern": [spec.sliding for spec in specs],
        prefix + "attention.shared_kv_layers": config.get("num_kv_shared_layers") or 0,
        prefix + "embedding_length_per_layer_input": config.get("per_layer_input_dim") or 0,
        prefix + "rope.freq_base": float(config["rope_max_wavelength"]),
        prefix + "rope.freq_base_swa": float(
            config["local_rope_max_wavelength"] or config["rope_max_wavelength"]
        ),
        prefix + "rope.dimension_count": full_dim,
        prefix + "rope.dimension_count_swa": local_dim,
    }
    if config["final_logit_soft_cap"] is not None:
        values[prefix + "final_logit_softcapping"] = float(config["final_logit_soft_cap"])
    if config.get("num_experts"):
        values[prefix + "expert_count"] = config["num_experts"]
        values[prefix + "expert_used_count"] = config["num_experts_per_token"]
        values[prefix + "expert_feed_forward_length"] = config["expert_intermediate_dim"]
    return values


def rope_freqs(config):
    """Frequency factors of the full layers' proportional RoPE: the first
    ``head * factor / 2`` pairs rotate, the others get 1e30 (no rotation)."""
    full_dim = next((spec.head_dim for spec in _specs(config) if not spec.sliding), config["head_dim"])
    rotated = int(full_dim * config.get("rope_partial_rotary_factor", 1.0) / 2)
    return np.asarray([1.0] * rotated + [NO_ROTATION] * (full_dim // 2 - rotated), np.float32)
