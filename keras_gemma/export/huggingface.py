"""A ``GemmaCausalLM`` as a Hugging Face folder that ``transformers`` (and
vLLM, TGI, ...) load with ``AutoModelForCausalLM.from_pretrained``.

The folder holds what Google's own Gemma repositories hold:

- ``config.json``: ``GemmaForCausalLM`` (``gemma``), ``Gemma2ForCausalLM``
  (``gemma2``), ``Gemma3ForCausalLM`` (``gemma3_text``) or
  ``Gemma4ForCausalLM`` (``gemma4_text``), written as the inverse of
  ``checkpoints.huggingface.config_from_hf``; a config that reads back
  differently (a switch the family's transformers class has no field for)
  is refused before anything is written.
- ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` shards and
  ``model.safetensors.index.json`` above ``max_shard_size``), names from
  ``checkpoints.huggingface.hf_name`` (the reader's tables, reversed), torch
  ``Linear`` layout (out, in). Norm scales are stored as we hold them: Gemma
  1-3 compute ``x * (1 + scale)`` in both, Gemma 4 ``x * scale`` in both.
  The embedding is tied, so there is no ``lm_head.weight``.
- ``tokenizer.model`` (our SentencePiece model), ``tokenizer.json``, ``tokenizer_config.json``,
  ``special_tokens_map.json``, ``chat_template.jinja``,
  ``generation_config.json`` (see ``hf_tokenizer.py``).

A LoRA model is written merged (``files.float_weights``), or with
``adapter_only=True`` as a ``peft`` adapter folder. Our int8 layout has no
transformers equivalent: an int8 model is refused.
"""

import re
from pathlib import Path

import numpy as np

from keras_gemma.checkpoints import huggingface as hf_checkpoint
from keras_gemma.export import files
from keras_gemma.export import hf_tokenizer

# What ``quantization`` takes: the stored float type (our int8 has no
# transformers layout).
QUANTIZATIONS = ("f32", "f16", "bf16")
DEFAULT_MAX_SHARD_SIZE = 5 * 1024**3  # transformers' default (5 GB)
# quantization -> the stored float type; None keeps the model's own.
_DTYPES = {None: None, "f32": "float32", "f16": "float16", "bf16": "bfloat16"}
_ARCHITECTURES = {
    "gemma": ("gemma", "GemmaForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "gemma4": ("gemma4_text", "Gemma4ForCausalLM"),
}
# The context length to declare: the family's (what its RoPE was trained for).
_MAX_POSITIONS = {"gemma": 8192, "gemma2": 8192, "gemma3": 131_072, "gemma4": 131_072}
# Config keys whose meaning the per-layer specs already compare (they are
# spelled differently per family but must give the same layers).
_COMPARED_BY_LAYER_SPECS = {
    "sliding_window_pattern", "layer_types", "rope_max_wavelength",
    "local_rope_max_wavelength", "rope_scaling_factor",
    "rope_partial_rotary_factor", "global_head_dim", "num_global_key_value_heads",
    "head_dim", "num_key_value_heads", "intermediate_dim", "attention_k_eq_v",
    "num_kv_shared_layers", "use_double_wide_mlp", "dropout",
}


def export_huggingface(model, destination, quantization=None, overwrite=False,
                       adapter_only=False, max_shard_size=DEFAULT_MAX_SHARD_SIZE,
                       progress=None):
    """Writes ``model`` (a ``GemmaCausalLM``) as a Hugging Face folder.

    Args:
        destination: the folder; an existing non-empty one is refused
            unless ``overwrite``. Written atomically: a failure leaves
            nothing behind.
        quantization: the stored float type, ``"f32"``, ``"f16"``,
            ``"bf16"``, or None for the model's own dtype.
        adapter_only: write only the LoRA adapter, as a ``peft`` folder
            (``adapter_config.json`` + ``adapter_model.safetensors``).
        max_shard_size: bytes (or a string such as ``"2GB"``, ``"500MB"``)
            per safetensors file; above it the weights are sharded.
        progress: optional callable wrapping an iterable of tensors, e.g. a
            progress bar (``progress(iterable, total, description)``).

    Returns the folder's path.

    Example:

    ```python
    gemma = keras_gemma.GemmaCausalLM.from_preset("gemma3_instruct_270m")
    gemma.export_to_huggingface("gemma3_270m_hf")
    # transformers.AutoModelForCausalLM.from_pretrained("gemma3_270m_hf")
    ```
    """
    from keras_gemma.checkpoints import peft

    backbone = model.backbone
    if quantization not in _DTYPES:
        raise ValueError(
            f"Unknown quantization {quantization!r} for the Hugging Face format; "
            "use f32, f16 or bf16 (or none for the model's own dtype)."
        )
    shard_bytes = parse_size(max_shard_size)
    files.refuse_int8(
        backbone, "a Hugging Face (transformers) folder",
        "Export the float model (load it without quantize='int8'), or choose "
        "--format gguf (q8_0) or saved_model, which keep 8-bit weights.",
    )
    if adapter_only:
        if backbone.lora_config is None:
            raise ValueError(
                "adapter_only=True needs a model with a LoRA adapter; this one "
                "has none (enable_lora or load_lora_weights first)."
            )
        with files.staged_directory(destination, overwrite) as staging:
            peft.save_peft_adapter(backbone, staging)
        return str(Path(destination).resolve())

    tokenizer = getattr(model.preprocessor, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "This model has no preprocessor (and so no tokenizer); a Hugging "
            "Face folder needs one. Build the GemmaCausalLM with a "
            "GemmaCausalLMPreprocessor."
        )
    config = backbone.get_config()
    hf_config = config_to_hf(config, tokenizer, family_of(config))
    check_expressible(config, hf_config)
    dtype = _DTYPES[quantization] or _stored_dtype(backbone)
    hf_config["dtype"] = dtype

    with files.staged_directory(destination, overwrite) as staging:
        weights = files.float_weights(backbone)
        _write_weights(staging, weights, config, dtype, shard_bytes, progress)
        del weights
        files.write_json(staging / "config.json", hf_config)
        hf_tokenizer.write_tokenizer_files(
            staging, tokenizer, model_max_length=hf_config["max_position_embeddings"])
    return str(Path(destination).resolve())


def family_of(config):
    """``gemma``, ``gemma2``, ``gemma3`` or ``gemma4``: the transformers
    class family whose switches a backbone config uses."""
    if not config.get("norm_scale_plus_one", True):
        return "gemma4"
    if config.get("use_query_key_norm"):
        return "gemma3"
    if config.get("use_post_attention_norm") or config.get("use_post_feedforward_norm"):
        return "gemma2"
    return "gemma"


def config_to_hf(config, tokenizer, family):
    """The transformers ``config.json`` dict for our backbone config (the
    inverse of ``checkpoints.huggingface.config_from_hf``)."""
    from keras_gemma.backbone import CONFIG_DEFAULTS
    from keras_gemma.layer_specs import layer_types

    c = {**CONFIG_DEFAULTS, **config}
    model_type, architecture = _ARCHITECTURES[family]
    special = {
        "pad_token_id": getattr(tokenizer, "pad_token_id", 0),
        "bos_token_id": getattr(tokenizer, "bos_token_id", 2),
        "eos_token_id": getattr(tokenizer, "eos_token_id", 1),
    }
    hf = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": c["vocabulary_size"],
        "hidden_size": c["hidden_dim"],
        "intermediate_size": c["intermediate_dim"],
        "num_hidden_layers": c["num_layers"],
        "num_attention_heads": c["num_query_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "head_dim": c["head_dim"],
        "rms_norm_eps": float(c["layer_norm_epsilon"]),
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": _MAX_POSITIONS[family],
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        **special,
    }
    if family == "gemma":
        hf["hidden_act"] = "gelu_pytorch_tanh"
        theta = float(c["rope_max_wavelength"])
        # transformers 5 reads rope_parameters, 4.x rope_theta.
        hf["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        hf["rope_theta"] = theta
        return hf
    types = list(layer_types(c))
    if family == "gemma4":
        hf.update(_gemma4_fields(c, types))
        return hf
    hf.update(
        query_pre_attn_scalar=_whole(c["query_pre_attn_scalar"] or c["head_dim"]),
        attn_logit_softcapping=_float(c["attention_logit_soft_cap"]),
        final_logit_softcapping=_float(c["final_logit_soft_cap"]),
        sliding_window=_whole(c["sliding_window_size"]),
        layer_types=types,
    )
    theta = float(c["rope_max_wavelength"])
    local = float(c["local_rope_max_wavelength"] or theta)
    if family == "gemma2":
        hf["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        hf["rope_theta"] = theta
        return hf
    factor = float(c["rope_scaling_factor"])
    full = {"rope_type": "default", "rope_theta": theta}
    if factor != 1.0:
        full = {"rope_type": "linear", "factor": factor, "rope_theta": theta}
    hf["rope_parameters"] = {
        "full_attention": full,
        "sliding_attention": {"rope_type": "default", "rope_theta": local},
    }
    # The same, as transformers 4.x spelled it.
    hf.update(rope_theta=theta, rope_local_base_freq=local,
              rope_scaling={"rope_type": "linear", "factor": factor} if factor != 1.0 else None)
    if c["sliding_window_pattern"]:
        hf["sliding_window_pattern"] = c["sliding_window_pattern"]
    return hf


def _gemma4_fields(c, types):
    full = {"rope_type": "proportional", "rope_theta": float(c["rope_max_wavelength"]),
            "partial_rotary_factor": float(c["rope_partial_rotary_factor"])}
    if c["rope_scaling_factor"] != 1.0:
        full["factor"] = float(c["rope_scaling_factor"])
    local = c["local_rope_max_wavelength"] or c["rope_max_wavelength"]
    experts = c["num_experts"]
    per_layer = c["per_layer_input_dim"] or 0
    return {
        "layer_types": types,
        "sliding_window": _whole(c["sliding_window_size"]),
        "final_logit_softcapping": _float(c["final_logit_soft_cap"]),
        "rope_parameters": {
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": float(local)},
        },
        # Google's spelling (transformers turns it into per_layer_config).
        "global_head_dim": c["global_head_dim"] or c["head_dim"],
        "num_global_key_value_heads": c["num_global_key_value_heads"],
        "attention_k_eq_v": bool(c["attention_k_eq_v"]),
        "num_kv_shared_layers": c["num_kv_shared_layers"] or 0,
        "use_double_wide_mlp": bool(c["use_double_wide_mlp"]),
        "hidden_size_per_layer_input": per_layer,
        "vocab_size_per_layer_input": c["per_layer_vocabulary_size"] if per_layer else c[
            "vocabulary_size"],
        "enable_moe_block": bool(experts),
        "num_experts": experts,
        "top_k_experts": c["num_experts_per_token"] if experts else None,
        "moe_intermediate_size": c["expert_intermediate_dim"] if experts else None,
        "use_bidirectional_attention": None,
    }


def _whole(value):
    """An int for a whole number (transformers' typed configs refuse 256.0
    where they declare an int), else the value."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _float(value):
    return None if value is None else float(value)


def check_expressible(config, hf_config):
    """Refuses a config that transformers' class would run differently: the
    config read back by our own reader must give the same model."""
    from keras_gemma.backbone import CONFIG_DEFAULTS
    from keras_gemma.layer_specs import layer_specs

    architecture = hf_config["architectures"][0]
    if config.get("use_bidirectional_attention"):
        raise ValueError(
            "This backbone attends bidirectionally (an embedding model); "
            f"{architecture} is a causal language model. Export a causal model."
        )
    ours = {**CONFIG_DEFAULTS, **config}
    back = {**CONFIG_DEFAULTS, **hf_checkpoint.config_from_hf(dict(hf_config))}
    for c in (ours, back):
        c["query_pre_attn_scalar"] = c["query_pre_attn_scalar"] or c["head_dim"]
        if c["sliding_window_size"] is None or all(
                not spec.sliding for spec in layer_specs(c)):
            c["sliding_window_size"] = None
    different = []
    for key in sorted(set(ours) | set(back)):
        if key in _COMPARED_BY_LAYER_SPECS or key in ("name", "trainable", "dtype"):
            continue
        if ours.get(key) != back.get(key):
            different.append(f"{key}={ours.get(key)!r}")
    for spec, spec_back in zip(layer_specs(ours), layer_specs(back)):
        if spec != spec_back:
            different.append(f"layer {spec.index} ({spec} read back as {spec_back})")
            break
    if different:
        raise ValueError(
            f"transformers' {architecture} cannot express this model's "
            f"{', '.join(different)}; a Hugging Face folder would compute "
            "something else. Export to another format (gguf, saved_model)."
        )


def _stored_dtype(backbone):
    name = str(backbone.dtype_policy.variable_dtype)
    return name if name in ("float16", "bfloat16") else "float32"


def parse_size(size):
    """Bytes for ``5 * 2**30``, ``"5GB"``, ``"500MB"``, ``"10KiB"``."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0:
        return int(size)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), re.I)
    if not match:
        raise ValueError(
            f"max_shard_size must be a positive number of bytes or a size such "
            f"as '5GB', got {size!r}."
        )
    number, unit, binary = match.groups()
    base = 1024 if binary else 1000
    return int(float(number) * base ** " KMGT".index(unit.upper() or " "))


def _cast(array, dtype):
    if dtype == "bfloat16":
        import ml_dtypes  # a Keras dependency

        return np.asarray(array, dtype="float32").astype(ml_dtypes.bfloat16)
    return np.asarray(array, dtype=dtype)


def _write_weights(folder, weights, config, dtype, shard_bytes, progress):
    """The safetensors file(s), one tensor converted at a time."""
    names = {}
    for path in weights:
        names.setdefault(hf_checkpoint.hf_name(path, config), []).append(path)
    itemsize = np.dtype("float32").itemsize if dtype == "float32" else 2
    sizes = {name: sum(weights[p].size for p in paths) * itemsize
             for name, paths in names.items()}
    shards, current, current_size = [], [], 0
    for name in names:
        if current and current_size + sizes[name] > shard_bytes:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += sizes[name]
    shards.append(current)

    tensors = hf_checkpoint.hf_tensors(weights, config)
    if progress is not None:
        tensors = progress(tensors, len(names), "writing safetensors")
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        filename = ("model.safetensors" if len(shards) == 1
                    else f"model-{number:05d}-of-{len(shards):05d}.safetensors")
        wanted = set(shard)
        batch = {}
        for name, array in tensors:
            batch[name] = _cast(array, dtype)
            if len(batch) == len(wanted):
                break
        hf_checkpoint.write_safetensors(folder / filename, batch)
        weight_map.update(dict.fromkeys(batch, filename))
        del batch
    if len(shards) > 1:
        files.write_json(folder / "model.safetensors.index.json", {
            "metadata": {"total_size": int(sum(sizes.values()))},
            "weight_map": dict(sorted(weight_map.items())),
        })
