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

from keras_gemma.checkpoints import gguf as gguf_reader

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
    # llama.cpp: a shared sliding layer reuses the keys and values of layer
    # first_shared - 2, a shared full layer those of first_shared - 1.
    specs = _specs(config)
    first_shared = config["num_layers"] - (config.get("num_kv_shared_layers") or 0)
    for spec in specs[first_shared:]:
        expected = first_shared - (2 if spec.sliding else 1)
        if spec.kv_source != expected:
            raise ValueError(
                f"GGUF cannot express this Gemma 4 model: its layer {spec.index} "
                f"reuses the keys and values of layer {spec.kv_source}, but "
                f"llama.cpp takes those of layer {expected} (it needs the last "
                "layer before the shared ones to be a full-attention layer and "
                "the one before it a sliding one, as in E2B and E4B). Use "
                "--format hf for this model."
            )


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


def expected_tensors(config):
    """GGUF tensor name -> (our path, numpy shape in the file, conversion),
    as ``checkpoints.gguf.expected_tensors`` (whose block names are reused);
    conversions "copy" for norms (stored as is), "scalar" for the layer
    scalar and "rope_freqs" for the generated frequency factors."""
    hidden = config["hidden_dim"]
    specs = _specs(config)
    full_dim = next((spec.head_dim for spec in specs if not spec.sliding), config["head_dim"])
    names = {ours: name for name, (ours, _) in gguf_reader._BLOCK_TENSORS.items()}
    tensors = {
        "token_embd.weight": ("token_embedding/embeddings", (config["vocabulary_size"], hidden), "copy"),
        "output_norm.weight": ("final_norm/scale", (hidden,), "copy"),
        "rope_freqs.weight": (None, (full_dim // 2,), "rope_freqs"),
    }
    per_layer = config.get("per_layer_input_dim") or 0
    if per_layer:
        width = per_layer * config["num_layers"]
        tensors.update({
            # Rows trimmed to the vocabulary, as the main embedding's.
            "per_layer_token_embd.weight": (
                "per_layer_embedding/token_embedding/embeddings",
                (config["vocabulary_size"], width), "copy"),
            "per_layer_model_proj.weight": ("per_layer_embedding/projection/kernel", (width, hidden), "kernel"),
            "per_layer_proj_norm.weight": ("per_layer_embedding/projection_norm/scale", (per_layer,), "copy"),
        })
    for spec in specs:
        i, head_dim, ff = spec.index, spec.head_dim, spec.intermediate_dim
        keys = spec.num_key_value_heads * head_dim
        queries = config["num_query_heads"] * head_dim
        shapes = {
            "pre_attention_norm/scale": (hidden,),
            "attention/query/kernel": (queries, hidden),
            "attention/key/kernel": (keys, hidden),
            "attention/value/kernel": (keys, hidden),
            "attention/output/kernel": (hidden, queries),
            "attention/query_norm/scale": (head_dim,),
            "attention/key_norm/scale": (head_dim,),
            "post_attention_norm/scale": (hidden,),
            "pre_feedforward_norm/scale": (hidden,),
            "feedforward_gate/kernel": (ff, hidden),
            "feedforward_up/kernel": (ff, hidden),
            "feedforward_down/kernel": (hidden, ff),
            "post_feedforward_norm/scale": (hidden,),
        }
        if spec.kv_source is not None:  # reuses an earlier layer's keys and values
            for ours in ("attention/key/kernel", "attention/value/kernel", "attention/key_norm/scale"):
                del shapes[ours]
        elif spec.value_from_key:
            del shapes["attention/value/kernel"]  # llama.cpp uses the keys
        for ours, shape in shapes.items():
            conversion = "kernel" if ours.endswith("kernel") else "copy"
            tensors[f"blk.{i}.{names[ours]}.weight"] = (f"decoder_block_{i}/{ours}", shape, conversion)
        if config.get("num_experts"):
            tensors.update(_expert_tensors(config, i))
        if per_layer:
            prefix = f"decoder_block_{i}/"
            tensors.update({
                f"blk.{i}.inp_gate.weight": (prefix + "per_layer_input_gate/kernel", (per_layer, hidden), "kernel"),
                f"blk.{i}.proj.weight": (prefix + "per_layer_projection/kernel", (hidden, per_layer), "kernel"),
                f"blk.{i}.post_norm.weight": (prefix + "post_per_layer_input_norm/scale", (hidden,), "copy"),
            })
        if config.get("use_layer_scalar"):
            tensors[f"blk.{i}.layer_output_scale.weight"] = (f"decoder_block_{i}/layer_scalar", (1,), "scalar")
    return tensors


def _expert_tensors(config, i):
    """Block ``i``'s expert mixture (26B-A4B), beside its dense MLP: llama.cpp
    normalizes the dense output with ``post_ffw_norm_1``, the experts' input
    and output with ``pre_ffw_norm_2`` / ``post_ffw_norm_2``, and scores the
    experts from the norm of the residual stream times ``ffn_gate_inp.scale``.
    Conversion "experts" swaps the last two axes ((experts, in, out) -> the
    file's (experts, out, in))."""
    hidden, experts = config["hidden_dim"], config["num_experts"]
    width = config["expert_intermediate_dim"]
    prefix, block = f"decoder_block_{i}/", f"blk.{i}."
    return {
        block + "post_ffw_norm_1.weight": (prefix + "post_dense_feedforward_norm/scale", (hidden,), "copy"),
        block + "pre_ffw_norm_2.weight": (prefix + "experts/pre_norm/scale", (hidden,), "copy"),
        block + "post_ffw_norm_2.weight": (prefix + "experts/post_norm/scale", (hidden,), "copy"),
        block + "ffn_gate_inp.weight": (prefix + "experts/router/kernel", (experts, hidden), "kernel"),
        block + "ffn_gate_inp.scale": (prefix + "experts/router_scale", (hidden,), "copy"),
        block + "ffn_gate_exps.weight": (prefix + "experts/gate/kernel", (experts, width, hidden), "experts"),
        block + "ffn_up_exps.weight": (prefix + "experts/up/kernel", (experts, width, hidden), "experts"),
        block + "ffn_down_exps.weight": (prefix + "experts/down/kernel", (experts, hidden, width), "experts"),
        block + "ffn_down_exps.scale": (prefix + "experts/per_expert_scale", (experts,), "copy"),
    }


def rope_freqs(config):
    """Frequency factors of the full layers' proportional RoPE: the first
    ``head * factor / 2`` pairs rotate, the others get 1e30 (no rotation)."""
    full_dim = next((spec.head_dim for spec in _specs(config) if not spec.sliding), config["head_dim"])
    rotated = int(full_dim * config.get("rope_partial_rotary_factor", 1.0) / 2)
    return np.asarray([1.0] * rotated + [1e30] * (full_dim // 2 - rotated), np.float32)
