"""Gemma 4 (text, dense) in llama.cpp's ``gemma4`` GGUF layout.

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
  with keys as values (``attention_k_eq_v``) has no ``attn_v``.

Per-layer embeddings, key/value sharing between layers and the expert
mixture are refused (their tensors are not written here).
"""

import numpy as np

from keras_gemma.checkpoints import gguf as gguf_reader

# The Gemma 4 switches GGUF export cannot write yet, and their "off" values.
UNSUPPORTED = {"per_layer_input_dim": 0, "num_kv_shared_layers": 0, "num_experts": None,
               "use_double_wide_mlp": False}


def check_supported(config):
    found = sorted(key for key, off in UNSUPPORTED.items() if config.get(key, off) != off)
    if found:
        raise ValueError(
            "GGUF cannot express this Gemma 4 model yet: keras_gemma writes "
            "dense Gemma 4 (the 31B's layout) but not "
            f"{', '.join(found)} (per-layer embeddings, shared key/value "
            "layers, experts). Export it with --format hf (a Hugging Face "
            "folder) and convert that with llama.cpp's convert_hf_to_gguf.py."
        )


def _full_layers(config):
    return [kind == "full_attention" for kind in config["layer_types"]]


def _head_dims(config):
    """(sliding head size, full head size)."""
    return config["head_dim"], config.get("global_head_dim") or config["head_dim"]


def metadata(config):
    """The ``gemma4.*`` keys (Python values; lists become GGUF arrays)."""
    prefix = "gemma4."
    full = _full_layers(config)
    local_dim, full_dim = _head_dims(config)
    kv_heads = config["num_key_value_heads"]
    full_kv_heads = config.get("num_global_key_value_heads") or kv_heads
    values = {
        prefix + "context_length": 131_072,
        prefix + "embedding_length": config["hidden_dim"],
        prefix + "block_count": config["num_layers"],
        prefix + "feed_forward_length": config["intermediate_dim"],
        prefix + "attention.head_count": config["num_query_heads"],
        prefix + "attention.head_count_kv": (
            kv_heads if full_kv_heads == kv_heads
            else [full_kv_heads if f else kv_heads for f in full]
        ),
        prefix + "attention.layer_norm_rms_epsilon": float(config["layer_norm_epsilon"]),
        prefix + "attention.key_length": full_dim,
        prefix + "attention.value_length": full_dim,
        prefix + "attention.key_length_swa": local_dim,
        prefix + "attention.value_length_swa": local_dim,
        prefix + "attention.sliding_window": config["sliding_window_size"],
        prefix + "attention.sliding_window_pattern": [not f for f in full],
        prefix + "attention.shared_kv_layers": 0,
        prefix + "embedding_length_per_layer_input": 0,
        prefix + "rope.freq_base": float(config["rope_max_wavelength"]),
        prefix + "rope.freq_base_swa": float(
            config["local_rope_max_wavelength"] or config["rope_max_wavelength"]
        ),
        prefix + "rope.dimension_count": full_dim,
        prefix + "rope.dimension_count_swa": local_dim,
    }
    if config["final_logit_soft_cap"] is not None:
        values[prefix + "final_logit_softcapping"] = float(config["final_logit_soft_cap"])
    return values


def expected_tensors(config):
    """GGUF tensor name -> (our path, numpy shape in the file, conversion),
    as ``checkpoints.gguf.expected_tensors`` (whose block names are reused);
    conversions "copy" for norms (stored as is), "scalar" for the layer
    scalar and "rope_freqs" for the generated frequency factors."""
    hidden = config["hidden_dim"]
    local_dim, full_dim = _head_dims(config)
    kv_heads = config["num_key_value_heads"]
    full_kv_heads = config.get("num_global_key_value_heads") or kv_heads
    names = {ours: name for name, (ours, _) in gguf_reader._BLOCK_TENSORS.items()}
    tensors = {
        "token_embd.weight": ("token_embedding/embeddings", (config["vocabulary_size"], hidden), "copy"),
        "output_norm.weight": ("final_norm/scale", (hidden,), "copy"),
        "rope_freqs.weight": (None, (full_dim // 2,), "rope_freqs"),
    }
    ff = config["intermediate_dim"]
    for i, full in enumerate(_full_layers(config)):
        head_dim = full_dim if full else local_dim
        keys = (full_kv_heads if full else kv_heads) * head_dim
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
        if full and config.get("attention_k_eq_v"):
            del shapes["attention/value/kernel"]  # llama.cpp uses the keys
        for ours, shape in shapes.items():
            conversion = "kernel" if ours.endswith("kernel") else "copy"
            tensors[f"blk.{i}.{names[ours]}.weight"] = (f"decoder_block_{i}/{ours}", shape, conversion)
        if config.get("use_layer_scalar"):
            tensors[f"blk.{i}.layer_output_scale.weight"] = (f"decoder_block_{i}/layer_scalar", (1,), "scalar")
    return tensors


def rope_freqs(config):
    """Frequency factors of the full layers' proportional RoPE: the first
    ``head * factor / 2`` pairs rotate, the others get 1e30 (no rotation)."""
    _, full_dim = _head_dims(config)
    rotated = int(full_dim * config.get("rope_partial_rotary_factor", 1.0) / 2)
    return np.asarray([1.0] * rotated + [1e30] * (full_dim // 2 - rotated), np.float32)
