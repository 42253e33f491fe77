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
    if class_name not in ("GemmaBackbone", "Gemma3Backbone"):
        raise ValueError(
            f"{source}: config.json describes a '{class_name}', not a Gemma "
            "backbone (expected keras-hub's GemmaBackbone or Gemma3Backbone)."
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
    family = _keras_hub_family(config)
    base = {"trainable": True, "dtype": _dtype_config(dtype_name)}
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
    gemma3 = backbone_serialized["class_name"] == "Gemma3Backbone"
    prefix = "gemma3" if gemma3 else "gemma"
    camel = "Gemma3" if gemma3 else "Gemma"
    if backbone_serialized["registered_name"].startswith("keras_gemma>"):
        camel, prefix = "Gemma", "gemma"
    tokenizer = _serialized(
        f"{prefix}.{prefix}_tokenizer", f"{camel}Tokenizer",
        {"name": f"{prefix}_tokenizer", "trainable": True,
         "dtype": _dtype_config("int32"), "config_file": "tokenizer.json",
         "proto": None, "sequence_length": None, "add_bos": False,
         "add_eos": False},
    )
    preprocessor_config = {
        "name": f"{prefix}_causal_lm_preprocessor", "trainable": True,
        "dtype": _dtype_config("float32"), "tokenizer": tokenizer,
        "config_file": "preprocessor.json",
        "sequence_length": sequence_length, "add_start_token": True,
        "add_end_token": add_end_token,
    }
    if gemma3:
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
    name = "gemma3_decoder_block" if family == "gemma3" else "gemma_decoder_block"
    return f"{name}_{index}" if index else name


def _h5_paths(variable_paths, family):
    """Our variable path -> keras-hub HDF5 dataset path."""
    mapping = {}
    for path in variable_paths:
        if path in _TOP_LAYERS:
            mapping[path] = f"layers/{_TOP_LAYERS[path]}/vars/0"
            continue
        block, rest = path.split("/", 1)
        index = int(block.rsplit("_", 1)[1])
        mapping[path] = (
            f"layers/{_block_group(index, family)}/{_BLOCK_LAYERS[rest]}/vars/0"
        )
    return mapping


def _to_keras_hub(path, array, config):
    if path.endswith(("query/kernel", "key/kernel", "value/kernel")):
        hidden, width = array.shape
        heads = width // config["head_dim"]
        return array.reshape(hidden, heads, config["head_dim"]).transpose(1, 0, 2)
    if path.endswith("output/kernel"):
        return array.reshape(-1, config["head_dim"], array.shape[-1])
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
    with h5py.File(h5_path, "w") as f:
        for path in track(weights, "Writing weights", transient=True,
                          console=Console(stderr=True)):
            array = ops.convert_to_numpy(weights[path])
            dataset = f.create_dataset(
                paths[path], data=_to_keras_hub(path, array, config)
            )
            if str(array.dtype) == "bfloat16":
                dataset.attrs["dtype"] = "bfloat16"  # as Keras itself does
