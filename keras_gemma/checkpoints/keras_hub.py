"""keras-hub / Kaggle "Keras" preset directories.

Layout: ``config.json`` (the backbone), ``model.weights.h5`` (or sharded:
``model.weights.json`` + ``model_*.weights.h5``), ``tokenizer.json``,
``preprocessor.json``, ``task.json``, ``metadata.json`` and
``assets/tokenizer/vocabulary.spm``.

keras-hub is never imported: its JSON is read as data and its HDF5 weights
with h5py. keras-hub stores attention kernels per head, (heads, in, head_dim),
and writes Gemma 1/2 ``intermediate_dim`` as twice the feed-forward width;
both are converted here.
"""

import datetime
import json
import os

import numpy as np

from keras_gemma.checkpoints import file_errors
from keras_gemma.layer_specs import GEMMA4_COMMON_SWITCHES, layer_specs, layer_types

# keras-hub's layer names inside model.weights.h5, per decoder block.
_BLOCK_LAYERS = {
    "pre_attention_norm/scale": "pre_attention_norm",
    "post_attention_norm/scale": "post_attention_norm",
    "pre_feedforward_norm/scale": "pre_ffw_norm",
    "post_feedforward_norm/scale": "post_ffw_norm",
    "feedforward_gate/kernel": "gating_ffw",
    "feedforward_up/kernel": "gating_ffw_2",
    "feedforward_down/kernel": "ffw_linear",
    "attention/query/kernel": "attention/query_dense",
    "attention/key/kernel": "attention/key_dense",
    "attention/value/kernel": "attention/value_dense",
    "attention/output/kernel": "attention/output_dense",
    "attention/query_norm/scale": "attention/query_norm",
    "attention/key_norm/scale": "attention/key_norm",
}
_TOP_LAYERS = {
    "token_embedding/embeddings": "reversible_embedding",
    "final_norm/scale": "rms_normalization",
}
_GEMMA3_ROPE = {"rope_max_wavelength": 1_000_000.0, "local": 10_000.0}

# keras-hub's Gemma4Backbone: dataset paths inside each decoder block's group
# (weights of a layer's own, not of a sublayer, sit in its vars/N).
_GEMMA4_BLOCK_LAYERS = {
    "pre_attention_norm/scale": "pre_attention_norm/vars/0",
    "post_attention_norm/scale": "post_attention_norm/vars/0",
    "pre_feedforward_norm/scale": "pre_ffw_norm/vars/0",
    "post_feedforward_norm/scale": "post_ffw_norm/vars/0",
    "feedforward_gate/kernel": "gating_ffw/vars/0",
    "feedforward_up/kernel": "gating_ffw_2/vars/0",
    "feedforward_down/kernel": "ffw_linear/vars/0",
    "attention/query/kernel": "attention/query_dense/vars/0",
    "attention/key/kernel": "attention/key_dense/vars/0",
    "attention/value/kernel": "attention/value_dense/vars/0",
    "attention/output/kernel": "attention/output_dense/vars/0",
    "attention/query_norm/scale": "attention/query_norm/vars/0",
    "attention/key_norm/scale": "attention/key_norm/vars/0",
    "post_dense_feedforward_norm/scale": "post_ffw_norm_dense/vars/0",
    "experts/pre_norm/scale": "pre_ffw_norm_moe/vars/0",
    "experts/post_norm/scale": "post_ffw_norm_moe_path/vars/0",
    "experts/router/kernel": "moe_router/proj/vars/0",
    "experts/router_scale": "moe_router/vars/0",
    "experts/gate/kernel": "moe_expert_bank/vars/0",
    "experts/up/kernel": "moe_expert_bank/vars/1",
    "experts/down/kernel": "moe_expert_bank/vars/2",
    "experts/per_expert_scale": "moe_expert_bank/vars/3",
    "per_layer_input_gate/kernel": "per_layer_input_gate/vars/0",
    "per_layer_projection/kernel": "per_layer_up_proj/vars/0",
    "post_per_layer_input_norm/scale": "post_per_layer_input_norm/vars/0",
    "layer_scalar": "vars/0",
}
_GEMMA4_TOP_LAYERS = {
    "token_embedding/embeddings": "reversible_embedding",
    "per_layer_embedding/token_embedding/embeddings": "embedding",
    "per_layer_embedding/projection/kernel": "dense",
    "per_layer_embedding/projection_norm/scale": "rms_normalization",
}


def is_keras_hub_preset(path):
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, name))
        for name in ("model.weights.h5", "model.weights.json")
    )


# -- config ------------------------------------------------------------------


def stored_dtype(serialized):
    """The dtype policy name saved in a keras-hub ``config.json``, if plain."""
    dtype = serialized.get("config", {}).get("dtype")
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    known = ("float32", "bfloat16", "float16", "mixed_bfloat16", "mixed_float16")
    return dtype if dtype in known else None


def config_from_keras_hub(serialized, source):
    """Our backbone kwargs from a keras-hub (or our own) ``config.json``."""
    registered = serialized.get("registered_name") or ""
    class_name = serialized.get("class_name")
    config = dict(serialized.get("config", {}))
    if registered.startswith("keras_gemma>"):
        return {k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")}
    if class_name not in ("GemmaBackbone", "Gemma3Backbone", "Gemma4Backbone"):
        raise ValueError(
            f"{source}: config.json describes a '{class_name}', not a Gemma "
            "backbone (expected keras-hub's GemmaBackbone, Gemma3Backbone or "
            "Gemma4Backbone)."
        )
    try:
        ours = {
            "vocabulary_size": config["vocabulary_size"],
            "num_layers": config["num_layers"],
            "num_query_heads": config["num_query_heads"],
            "num_key_value_heads": config["num_key_value_heads"],
            "hidden_dim": config["hidden_dim"],
            "intermediate_dim": config["intermediate_dim"],
            "head_dim": config["head_dim"],
            "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-6),
            "dropout": config.get("dropout", 0.0),
            "attention_logit_soft_cap": config.get("attention_logit_soft_cap"),
            "final_logit_soft_cap": config.get("final_logit_soft_cap"),
            "use_post_attention_norm": config.get("use_post_attention_norm", False),
            "use_post_feedforward_norm": config.get("use_post_ffw_norm", False),
        }
    except KeyError as error:
        raise ValueError(f"{source}: config.json lacks the key {error}.") from None
    if class_name == "Gemma4Backbone":
        return {**ours, **_gemma4_config_from_keras_hub(config, source)}
    if not config.get("query_head_dim_normalize", True):
        ours["query_pre_attn_scalar"] = ours["hidden_dim"] // ours["num_query_heads"]
    sliding = config.get("use_sliding_window_attention", False)
    if class_name == "GemmaBackbone":
        # keras-hub's Gemma 1/2 layers hold intermediate_dim // 2 units.
        ours["intermediate_dim"] //= 2
        if sliding:
            # keras-hub makes even layers local: every 2nd layer is global.
            ours.update(sliding_window_size=config["sliding_window_size"],
                        sliding_window_pattern=2)
    else:
        # A multimodal preset's vision encoder is left out: keras_gemma runs
        # its text model, whose weights are stored as in a text-only preset.
        ours.update(
            use_query_key_norm=config.get("use_query_key_norm", True),
            rope_max_wavelength=_GEMMA3_ROPE["rope_max_wavelength"],
            local_rope_max_wavelength=_GEMMA3_ROPE["local"],
            rope_scaling_factor=config.get("global_rope_scaling_factor", 1.0),
        )
        if sliding:
            ours.update(sliding_window_size=config["sliding_window_size"],
                        sliding_window_pattern=6)
    return ours


def _gemma4_config_from_keras_hub(config, source):
    """The Gemma 4 switches of a keras-hub Gemma4Backbone config (text part;
    a vision or audio encoder in the preset is skipped)."""
    if config.get("is_embedding_model") or config.get("use_bidirectional_attention"):
        raise ValueError(
            f"{source}: this Gemma 4 preset is an embedding model "
            "(bidirectional attention); keras_gemma runs causal text models."
        )
    if config.get("local_rope_scaling_factor", 1.0) != 1.0:
        raise ValueError(
            f"{source}: local_rope_scaling_factor "
            f"{config['local_rope_scaling_factor']} is not supported (Gemma 4 uses 1.0)."
        )
    num_layers = config["num_layers"]
    pattern = config.get("sliding_window_pattern") or 6
    layer_types = config.get("layer_types") or [
        "full_attention" if i % pattern == pattern - 1 else "sliding_attention"
        for i in range(num_layers)
    ]
    global_kv_heads = config.get("num_global_key_value_heads")
    per_layer_dim = config.get("hidden_size_per_layer_input") or 0
    ours = {
        **GEMMA4_COMMON_SWITCHES,
        "sliding_window_size": (
            config.get("sliding_window_size", 512)
            if config.get("use_sliding_window_attention", True) else None),
        "layer_types": list(layer_types),
        "global_head_dim": config.get("global_head_dim"),
        # keras-hub: global KV heads given <=> full layers use K = V.
        "num_global_key_value_heads": global_kv_heads,
        "attention_k_eq_v": global_kv_heads is not None,
        "rope_max_wavelength": float(config.get("global_rope_wavelength") or 1_000_000.0),
        "local_rope_max_wavelength": float(config.get("local_rope_wavelength") or 10_000.0),
        "rope_scaling_factor": float(config.get("global_rope_scaling_factor", 1.0)),
        "rope_partial_rotary_factor": float(
            config.get("global_rope_partial_rotary_factor", 1.0)),
        "num_kv_shared_layers": config.get("num_kv_shared_layers", 0) or 0,
        "use_double_wide_mlp": bool(config.get("use_double_wide_mlp", False)),
        "per_layer_input_dim": per_layer_dim,
        "per_layer_vocabulary_size": (
            config.get("vocab_size_per_layer_input") if per_layer_dim else None),
    }
    if config.get("enable_moe_block"):
        ours.update(
            num_experts=config.get("num_experts"),
            num_experts_per_token=config.get("num_experts_per_token", 8),
            expert_intermediate_dim=config.get("expert_intermediate_dim"),
        )
    return ours


def weight_family(config):
    """Which keras-hub weight layout a config's checkpoint uses."""
    if not config.get("norm_scale_plus_one", True):
        return "gemma4"
    return "gemma3" if config.get("use_query_key_norm") else "gemma"


def _gemma4_keras_hub_json(config):
    """keras-hub's Gemma4Backbone config for ours, or None if it cannot say it."""
    c = {"attention_k_eq_v": False, "num_global_key_value_heads": None,
         "sliding_window_size": None, "query_pre_attn_scalar": None, **config}
    if bool(c["attention_k_eq_v"]) != (c["num_global_key_value_heads"] is not None):
        return None  # keras-hub ties K = V to having global key/value heads
    if c["query_pre_attn_scalar"] != 1.0 or c.get("attention_logit_soft_cap") is not None:
        return None
    experts = c.get("num_experts")
    return {
        "vocabulary_size": c["vocabulary_size"], "image_size": None,
        "num_layers": c["num_layers"], "num_query_heads": c["num_query_heads"],
        "num_key_value_heads": c["num_key_value_heads"], "hidden_dim": c["hidden_dim"],
        "intermediate_dim": c["intermediate_dim"], "head_dim": c["head_dim"],
        "query_head_dim_normalize": True, "attention_logit_soft_cap": None,
        "final_logit_soft_cap": c.get("final_logit_soft_cap"),
        "use_sliding_window_attention": c["sliding_window_size"] is not None,
        "sliding_window_size": c["sliding_window_size"] or 512,
        "sliding_window_pattern": 6,
        "layer_types": list(layer_types(c)),
        "global_head_dim": c.get("global_head_dim"),
        "local_rope_scaling_factor": 1.0,
        "global_rope_scaling_factor": c.get("rope_scaling_factor", 1.0),
        "vision_encoder": None, "audio_encoder": None, "num_audio_tokens_per_clip": None,
        "use_bidirectional_attention": False, "use_vision_bidirectional_attention": False,
        "layer_norm_epsilon": c.get("layer_norm_epsilon", 1e-6),
        "dropout": c.get("dropout", 0.0), "is_embedding_model": False,
        "pooling_intermediate_dim": None, "embedding_dim": None,
        "num_kv_shared_layers": c.get("num_kv_shared_layers", 0),
        "num_global_key_value_heads": c["num_global_key_value_heads"],
        "hidden_size_per_layer_input": c.get("per_layer_input_dim", 0),
        "vocab_size_per_layer_input": c.get("per_layer_vocabulary_size"),
        "global_rope_wavelength": c.get("rope_max_wavelength", 1_000_000.0),
        "local_rope_wavelength": c.get("local_rope_max_wavelength") or c.get(
            "rope_max_wavelength", 10_000.0),
        "global_rope_partial_rotary_factor": c.get("rope_partial_rotary_factor", 1.0),
        "use_double_wide_mlp": c.get("use_double_wide_mlp", False),
        "enable_moe_block": bool(experts), "num_experts": experts,
        "expert_intermediate_dim": c.get("expert_intermediate_dim"),
        "num_experts_per_token": c.get("num_experts_per_token") or 8,
    }


def _keras_hub_family(config):
    """'gemma' or 'gemma3' if keras-hub has a class for this config, else None."""
    c = {
        "query_pre_attn_scalar": None, "use_query_key_norm": False,
        "sliding_window_size": None, "sliding_window_pattern": None,
        "rope_max_wavelength": 10_000.0, "local_rope_max_wavelength": None,
        "rope_scaling_factor": 1.0, **config,
    }
    scalar = c["query_pre_attn_scalar"]
    scalar_ok = scalar in (None, c["head_dim"]) or (
        scalar == c["hidden_dim"] // c["num_query_heads"]
    )
    if not scalar_ok:
        return None
    if not c["use_query_key_norm"]:
        ok = (
            c["rope_max_wavelength"] == 10_000.0
            and c["local_rope_max_wavelength"] in (None, 10_000.0)
            and c["rope_scaling_factor"] == 1.0
            and (c["sliding_window_size"] is None or c["sliding_window_pattern"] == 2)
        )
        return "gemma" if ok else None
    ok = (
        c["rope_max_wavelength"] == _GEMMA3_ROPE["rope_max_wavelength"]
        and c["local_rope_max_wavelength"] == _GEMMA3_ROPE["local"]
        and (c["sliding_window_size"] is None or c["sliding_window_pattern"] == 6)
    )
    return "gemma3" if ok else None


def _serialized(module, class_name, config):
    return {
        "module": f"keras_hub.src.models.{module}",
        "class_name": class_name,
        "config": config,
        "registered_name": f"keras_hub>{class_name}",
    }


def _dtype_config(name):
    return {"module": "keras", "class_name": "DTypePolicy",
            "config": {"name": name}, "registered_name": None}


def backbone_json(config, dtype_name="float32"):
    """``config.json`` content: keras-hub's class when it can express the
    config (so keras-hub loads our presets), else our own."""
    base = {"trainable": True, "dtype": _dtype_config(dtype_name)}
    if weight_family(config) == "gemma4":
        gemma4 = _gemma4_keras_hub_json(config)
        family = None if gemma4 is None else "gemma4"
        if gemma4 is not None:
            return _serialized("gemma4.gemma4_backbone", "Gemma4Backbone",
                               {"name": "gemma4_backbone", **base, **gemma4})
    else:
        family = _keras_hub_family(config)
    if family is None:
        return {"module": "keras_gemma.backbone", "class_name": "GemmaBackbone",
                "config": {"name": "gemma_backbone", **base, **config},
                "registered_name": "keras_gemma>GemmaBackbone"}
    scalar = config.get("query_pre_attn_scalar")
    common = {
        "vocabulary_size": config["vocabulary_size"],
        "num_layers": config["num_layers"],
        "num_query_heads": config["num_query_heads"],
        "num_key_value_heads": config["num_key_value_heads"],
        "hidden_dim": config["hidden_dim"],
        "head_dim": config["head_dim"],
        "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-6),
        "dropout": config.get("dropout", 0.0),
        "query_head_dim_normalize": scalar in (None, config["head_dim"]),
        "use_post_ffw_norm": config.get("use_post_feedforward_norm", False),
        "use_post_attention_norm": config.get("use_post_attention_norm", False),
        "final_logit_soft_cap": config.get("final_logit_soft_cap"),
        "attention_logit_soft_cap": config.get("attention_logit_soft_cap"),
        "use_sliding_window_attention": config.get("sliding_window_size") is not None,
        "sliding_window_size": config.get("sliding_window_size") or 4096,
    }
    if family == "gemma":
        return _serialized(
            "gemma.gemma_backbone", "GemmaBackbone",
            {"name": "gemma_backbone", **base, **common,
             "intermediate_dim": 2 * config["intermediate_dim"]},
        )
    return _serialized(
        "gemma3.gemma3_backbone", "Gemma3Backbone",
        {"name": "gemma3_backbone", **base, **common,
         "intermediate_dim": config["intermediate_dim"], "image_size": None,
         "use_query_key_norm": True, "local_rope_scaling_factor": 1.0,
         "global_rope_scaling_factor": config.get("rope_scaling_factor", 1.0),
         "vision_encoder": None, "use_bidirectional_attention": False,
         "is_embedding_model": False, "pooling_intermediate_dim": None,
         "embedding_dim": None},
    )


def task_jsons(backbone_serialized, sequence_length, add_end_token=True):
    """tokenizer.json, preprocessor.json and task.json in keras-hub's form."""
    class_name = backbone_serialized["class_name"]
    gemma3 = class_name == "Gemma3Backbone"
    gemma4 = class_name == "Gemma4Backbone"
    prefix = "gemma3" if gemma3 else "gemma4" if gemma4 else "gemma"
    camel = "Gemma3" if gemma3 else "Gemma4" if gemma4 else "Gemma"
    if backbone_serialized["registered_name"].startswith("keras_gemma>"):
        camel, prefix = "Gemma", "gemma"
    tokenizer_config = {
        "name": f"{prefix}_tokenizer", "trainable": True,
        "dtype": _dtype_config("int32"), "config_file": "tokenizer.json",
        "proto": None, "sequence_length": None, "add_bos": False,
        "add_eos": False}
    if gemma4:
        # Text only: keras-hub's Gemma4Tokenizer need not find media tokens.
        tokenizer_config.update(has_vision_tokens=False, has_audio_tokens=False,
                                has_video_tokens=False)
    tokenizer = _serialized(
        f"{prefix}.{prefix}_tokenizer", f"{camel}Tokenizer", tokenizer_config)
    preprocessor_config = {
        "name": f"{prefix}_causal_lm_preprocessor", "trainable": True,
        "dtype": _dtype_config("float32"), "tokenizer": tokenizer,
        "config_file": "preprocessor.json",
        "sequence_length": sequence_length, "add_start_token": True,
        "add_end_token": add_end_token,
    }
    if gemma3 or gemma4:
        preprocessor_config.update(image_converter=None)
    preprocessor = _serialized(
        f"{prefix}.{prefix}_causal_lm_preprocessor",
        f"{camel}CausalLMPreprocessor", preprocessor_config,
    )
    task = _serialized(
        f"{prefix}.{prefix}_causal_lm", f"{camel}CausalLM",
        {"backbone": backbone_serialized, "preprocessor": preprocessor,
         "name": f"{prefix}_causal_lm"},
    )
    return tokenizer, preprocessor, task


def metadata_json(parameter_count):
    from keras_gemma import __version__

    return {
        "keras_gemma_version": __version__,
        "parameter_count": int(parameter_count),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "tasks": ["CausalLM"],
    }


# -- weights -----------------------------------------------------------------


def _block_group(index, family):
    name = {"gemma3": "gemma3_decoder_block",
            "gemma4": "gemma4_text_decoder_block"}.get(family, "gemma_decoder_block")
    return f"{name}_{index}" if index else name


def _h5_paths(variable_paths, family):
    """Our variable path -> keras-hub HDF5 dataset path."""
    paths = list(variable_paths)
    if family == "gemma4":
        top = dict(_GEMMA4_TOP_LAYERS)
        # keras-hub's norms are named by creation order: with per-layer
        # embeddings their norm comes first.
        has_per_layer = any(p.startswith("per_layer_embedding/") for p in paths)
        top["final_norm/scale"] = "rms_normalization_1" if has_per_layer else "rms_normalization"
        block_layers = _GEMMA4_BLOCK_LAYERS
    else:
        top = _TOP_LAYERS
        block_layers = {k: v + "/vars/0" for k, v in _BLOCK_LAYERS.items()}
    mapping = {}
    for path in paths:
        if path in top:
            mapping[path] = f"layers/{top[path]}/vars/0"
            continue
        block, rest = path.split("/", 1)
        index = int(block.rsplit("_", 1)[1])
        mapping[path] = f"layers/{_block_group(index, family)}/{block_layers[rest]}"
    return mapping


def _heads(path, width, config):
    """Heads of a projection of this output (query, key, value) or input
    (output) width, for keras-hub's per-head kernel layout."""
    if path.endswith(("query/kernel", "output/kernel")):
        return config["num_query_heads"]
    block = int(path.split("/", 1)[0].rsplit("_", 1)[1])
    return layer_specs(config)[block].num_key_value_heads


def _to_keras_hub(path, array, config):
    if path.endswith(("query/kernel", "key/kernel", "value/kernel")):
        hidden, width = array.shape
        heads = _heads(path, width, config)
        return array.reshape(hidden, heads, width // heads).transpose(1, 0, 2)
    if path.endswith("output/kernel"):
        heads = _heads(path, array.shape[0], config)
        return array.reshape(heads, -1, array.shape[-1])
    return array


def _from_keras_hub(path, array):
    if path.endswith(("query/kernel", "key/kernel", "value/kernel")):
        heads, hidden, head_dim = array.shape
        return array.transpose(1, 0, 2).reshape(hidden, heads * head_dim)
    if path.endswith("output/kernel"):
        heads, head_dim, hidden = array.shape
        return array.reshape(heads * head_dim, hidden)
    return array


def _weight_files(preset_dir):
    single = os.path.join(preset_dir, "model.weights.h5")
    if os.path.isfile(single):
        return [single]
    index_path = os.path.join(preset_dir, "model.weights.json")
    with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    names = set()
    for value in weight_map.values():
        names.update(value if isinstance(value, list) else [value])
    return [os.path.join(preset_dir, name) for name in sorted(names)]


def _read_dataset(dataset):
    if dataset.attrs.get("dtype") == "bfloat16":
        import ml_dtypes

        # Keras writes bfloat16 as raw 16-bit data tagged with this attribute.
        return np.array(dataset, dtype=ml_dtypes.bfloat16)
    return dataset[()]


def read_weights(preset_dir, variable_shapes, family, progress=None):
    """Reads keras-hub HDF5 weights into our layout.

    ``variable_shapes``: our variable path -> shape, for the model to load.
    Yields ``(path, array)`` one tensor at a time, so the caller can assign
    and free each before reading the next.
    """
    import h5py

    files = _weight_files(preset_dir)
    handles = []
    try:
        for name in files:
            try:
                handles.append(h5py.File(name, "r"))
            except (OSError, RuntimeError) as error:
                raise ValueError(
                    f"{name}: not a readable HDF5 weights file ({error}). The "
                    "file may be truncated or corrupt; download it again."
                ) from None
        for path, h5_path in _h5_paths(variable_shapes, family).items():
            # A corrupt file makes h5py raise anything from OSError to
            # RuntimeError and TypeError; each becomes a ValueError naming it.
            with file_errors(files[0] if len(files) == 1 else preset_dir,
                             f"could not be read at '{h5_path}'"):
                dataset = next((h[h5_path] for h in handles if h5_path in h), None)
                if dataset is None:
                    raise ValueError(
                        f"{files[0]}: no weights for layer '{path}' (looked for "
                        f"'{h5_path}'). The weights do not match config.json."
                    )
                if not isinstance(dataset, h5py.Dataset):
                    raise ValueError(
                        f"{dataset.file.filename}: '{h5_path}' is not a dataset; "
                        "the file is corrupt."
                    )
                array = _from_keras_hub(path, _read_dataset(dataset))
            yield path, array
            if progress is not None:
                progress.update(1)
    finally:
        for handle in handles:
            handle.close()


def write_weights(h5_path, backbone, family):
    """Writes ``backbone``'s weights as keras-hub's model.weights.h5."""
    import h5py
    from keras import ops
    from rich.console import Console
    from rich.progress import track

    from keras_gemma.lora import base_weights

    config = backbone._config()
    weights = base_weights(backbone)
    paths = _h5_paths(list(weights), family or "gemma")
    # (keras-hub's Gemma 4 weights take these same layouts.)
    with h5py.File(h5_path, "w") as f:
        for path in track(weights, "Writing weights", transient=True,
                          console=Console(stderr=True)):
            array = ops.convert_to_numpy(weights[path])
            dataset = f.create_dataset(
                paths[path], data=_to_keras_hub(path, array, config)
            )
            if str(array.dtype) == "bfloat16":
                dataset.attrs["dtype"] = "bfloat16"  # as Keras itself does
