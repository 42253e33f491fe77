"""Hugging Face folders: ``config.json``, ``*.safetensors``, ``tokenizer.model``.

Safetensors is read here directly (an 8-byte header length, a JSON header,
then raw little-endian tensors), memory-mapped shard by shard, so loading
holds one tensor at a time beyond the model's own weights and needs neither
``safetensors`` nor ``torch``.
"""

import json
import os
import re
import struct

import numpy as np

from keras_gemma.layer_specs import GEMMA4_COMMON_SWITCHES

_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "F64": "float64"}
_SUPPORTED_MODEL_TYPES = ("gemma", "gemma2", "gemma3_text", "gemma3",
                          "gemma4_text", "gemma4")
# Multimodal Gemma 4 folders: the text model's tensors start with one of
# these; the vision and audio towers (skipped) with the others.
_GEMMA4_TEXT_PREFIXES = ("model.language_model.", "model.")
_GEMMA4_SKIPPED_PREFIXES = ("model.vision_tower.", "model.embed_vision.",
                            "model.audio_tower.", "model.embed_audio.")


def read_config(folder):
    """Our backbone kwargs from a transformers ``config.json``."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from None
    return config_from_hf(hf, path)


def config_from_hf(hf, path="config.json"):
    """Our backbone kwargs from a transformers config dict; ``path`` names it
    in errors."""
    if not isinstance(hf, dict) or not isinstance(hf.get("text_config", {}), dict):
        raise ValueError(f"{path}: not a transformers config (a JSON object).")
    model_type = hf.get("model_type")
    if model_type in ("gemma3n", "gemma3n_text"):
        raise ValueError(
            f"{path}: this is a Gemma 3n checkpoint (model_type "
            f"'{model_type}'). keras_gemma does not support Gemma 3n (its "
            "AltUp, Laurel and activation-sparsity layers are a different "
            "architecture); it reads Gemma 1, 2, 3 and 4 text models."
        )
    if model_type in ("gemma3", "gemma4") and "text_config" in hf:
        hf = {**hf["text_config"], "model_type": model_type + "_text"}
        model_type = model_type + "_text"
    if model_type not in _SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{path}: model_type '{model_type}' is not a Gemma text model "
            f"(supported: {', '.join(_SUPPORTED_MODEL_TYPES)})."
        )
    try:
        heads = hf["num_attention_heads"]
        config = {
            "vocabulary_size": hf["vocab_size"],
            "num_layers": hf["num_hidden_layers"],
            "num_query_heads": heads,
            "num_key_value_heads": hf.get("num_key_value_heads", heads),
            "hidden_dim": hf["hidden_size"],
            "intermediate_dim": hf["intermediate_size"],
            "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
            "layer_norm_epsilon": hf.get("rms_norm_eps", 1e-6),
        }
    except KeyError as error:
        raise ValueError(f"{path}: missing the key {error}.") from None
    if model_type == "gemma":
        config["rope_max_wavelength"] = _rope_theta(hf)
        return config
    if model_type == "gemma4_text":
        config.update(_gemma4_config(hf, path))
        return config

    config.update(
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar"),
        attention_logit_soft_cap=hf.get("attn_logit_softcapping"),
        final_logit_soft_cap=hf.get("final_logit_softcapping"),
        use_post_attention_norm=True,
        use_post_feedforward_norm=True,
        use_query_key_norm=model_type == "gemma3_text",
        sliding_window_size=hf.get("sliding_window"),
    )
    config["sliding_window_pattern"] = _sliding_window_pattern(hf, model_type, path)
    config.update(_rope(hf, model_type))
    if hf.get("use_bidirectional_attention") is True:  # EmbeddingGemma
        config["use_bidirectional_attention"] = True
    return config


def _gemma4_config(hf, path):
    """The Gemma 4 switches (see the table in backbone.py) of a text config."""
    activation = hf.get("hidden_activation", "gelu_pytorch_tanh")
    if activation != "gelu_pytorch_tanh":
        raise ValueError(
            f"{path}: hidden_activation '{activation}' is not supported "
            "(Gemma uses 'gelu_pytorch_tanh')."
        )
    if hf.get("attention_bias"):
        raise ValueError(f"{path}: attention_bias=true is not a Gemma 4 text model.")
    if hf.get("use_bidirectional_attention") == "all":
        raise ValueError(
            f"{path}: use_bidirectional_attention='all' (an embedding model) "
            "is not supported; keras_gemma runs causal Gemma 4 text models."
        )
    num_layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types")
    if layer_types is None:
        # transformers' default: 5 sliding layers, then 1 full.
        layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                       for i in range(num_layers)]
    layer_types = list(layer_types)
    if len(layer_types) != num_layers:
        raise ValueError(
            f"{path}: `layer_types` has {len(layer_types)} entries but the "
            f"model has {num_layers} layers (num_hidden_layers); the "
            "checkpoint's config is inconsistent."
        )
    if layer_types:
        # As transformers: the last layer is always full attention.
        layer_types[-1] = "full_attention"
    rope = hf.get("rope_parameters") or {}
    full = rope.get("full_attention") or {
        "rope_type": "proportional", "partial_rotary_factor": 0.25,
        "rope_theta": 1_000_000.0}
    local = rope.get("sliding_attention") or {"rope_theta": 10_000.0}
    if full.get("rope_type", "default") not in ("default", "proportional", "linear"):
        raise ValueError(
            f"{path}: rope_type '{full['rope_type']}' on full-attention layers "
            "is not supported (expected 'proportional' or 'default')."
        )
    partial = float(full.get("partial_rotary_factor", 1.0)) if full.get(
        "rope_type") == "proportional" else 1.0
    k_eq_v = bool(hf.get("attention_k_eq_v", False))
    global_head_dim, global_kv_heads = _full_layer_shape(hf, layer_types, k_eq_v, path)
    per_layer_dim = hf.get("hidden_size_per_layer_input", 256) or 0
    config = {
        **GEMMA4_COMMON_SWITCHES,
        "final_logit_soft_cap": hf.get("final_logit_softcapping"),
        "sliding_window_size": hf.get("sliding_window", 512),
        "layer_types": layer_types,
        "global_head_dim": global_head_dim,
        "num_global_key_value_heads": global_kv_heads,
        "attention_k_eq_v": k_eq_v,
        "rope_max_wavelength": float(full.get("rope_theta", 1_000_000.0)),
        "rope_scaling_factor": float(full.get("factor", 1.0)),
        "rope_partial_rotary_factor": partial,
        "local_rope_max_wavelength": float(local.get("rope_theta", 10_000.0)),
        "num_kv_shared_layers": hf.get("num_kv_shared_layers", 0) or 0,
        "use_double_wide_mlp": bool(hf.get("use_double_wide_mlp", False)),
        "per_layer_input_dim": per_layer_dim,
        "per_layer_vocabulary_size": (
            hf.get("vocab_size_per_layer_input", 262_144) if per_layer_dim else None),
    }
    if hf.get("enable_moe_block"):
        config.update(
            num_experts=hf.get("num_experts"),
            num_experts_per_token=hf.get("top_k_experts"),
            expert_intermediate_dim=hf.get("moe_intermediate_size"),
        )
    return config


def _full_layer_shape(hf, layer_types, k_eq_v, path):
    """(head size, key/value heads or None) of the full-attention layers.

    Google's config.json files say ``global_head_dim`` and
    ``num_global_key_value_heads`` (the latter used only with
    ``attention_k_eq_v``, as in transformers); transformers' own
    ``save_pretrained`` writes a ``per_layer_config`` by layer index.
    """
    per_layer = hf.get("per_layer_config")
    if per_layer:
        shapes = {
            (entry.get("head_dim", hf.get("head_dim")), entry.get("num_key_value_heads"))
            for index, entry in per_layer.items()
            if layer_types[int(index)] == "full_attention"
        }
        if len(shapes) > 1:
            raise ValueError(
                f"{path}: per_layer_config gives full-attention layers "
                f"different shapes {sorted(shapes, key=str)}; keras_gemma "
                "supports one head size and key/value head count per layer type."
            )
        if shapes:
            return shapes.pop()
    kv_heads = hf.get("num_global_key_value_heads") if k_eq_v else None
    return hf.get("global_head_dim", 512), kv_heads


def _sliding_window_pattern(hf, model_type, path):
    layer_types = hf.get("layer_types")
    if layer_types:
        global_layers = [i for i, t in enumerate(layer_types) if t == "full_attention"]
        if not global_layers:
            return None
        pattern = global_layers[0] + 1
        expected = [i for i in range(len(layer_types)) if (i + 1) % pattern == 0]
        if global_layers != expected:
            raise ValueError(
                f"{path}: layer_types has global layers at {global_layers}, "
                "which is not a repeating 'every N-th layer' pattern."
            )
        return pattern
    if "sliding_window_pattern" in hf:
        return hf["sliding_window_pattern"]
    return 2 if model_type == "gemma2" else 6


def _rope_theta(hf):
    """Gemma 1 and 2's one RoPE base: transformers 4 wrote ``rope_theta``,
    transformers 5 writes ``rope_parameters: {"rope_theta": ...}``."""
    parameters = hf.get("rope_parameters")
    if "rope_theta" not in hf and isinstance(parameters, dict):
        return float(parameters.get("rope_theta", 10_000.0))
    return float(hf.get("rope_theta", 10_000.0))


def _rope(hf, model_type):
    if model_type == "gemma2":
        return {"rope_max_wavelength": _rope_theta(hf),
                "local_rope_max_wavelength": _rope_theta(hf)}
    parameters = hf.get("rope_parameters")
    if isinstance(parameters, dict) and "full_attention" in parameters:
        full = parameters["full_attention"]
        local = parameters.get("sliding_attention", {})
        return {
            "rope_max_wavelength": float(full.get("rope_theta", 1_000_000.0)),
            "rope_scaling_factor": float(full.get("factor", 1.0))
            if full.get("rope_type", "default") == "linear" else 1.0,
            "local_rope_max_wavelength": float(local.get("rope_theta", 10_000.0)),
        }
    scaling = hf.get("rope_scaling") or {}
    return {
        "rope_max_wavelength": float(hf.get("rope_theta", 1_000_000.0)),
        "rope_scaling_factor": float(scaling.get("factor", 1.0))
        if scaling.get("rope_type", "linear") == "linear" else 1.0,
        "local_rope_max_wavelength": float(hf.get("rope_local_base_freq", 10_000.0)),
    }


# -- tensor names ---------------------------------------------------------------

_LAYER_NAMES = {
    "input_layernorm.weight": "pre_attention_norm/scale",
    "self_attn.q_proj.weight": "attention/query/kernel",
    "self_attn.k_proj.weight": "attention/key/kernel",
    "self_attn.v_proj.weight": "attention/value/kernel",
    "self_attn.o_proj.weight": "attention/output/kernel",
    "self_attn.q_norm.weight": "attention/query_norm/scale",
    "self_attn.k_norm.weight": "attention/key_norm/scale",
    "pre_feedforward_layernorm.weight": "pre_feedforward_norm/scale",
    "post_feedforward_layernorm.weight": "post_feedforward_norm/scale",
    "mlp.gate_proj.weight": "feedforward_gate/kernel",
    "mlp.up_proj.weight": "feedforward_up/kernel",
    "mlp.down_proj.weight": "feedforward_down/kernel",
}
# A bare Gemma3TextModel (EmbeddingGemma) saves its names without "model.".
_LAYER_PATTERN = re.compile(r"^(?:language_model\.)?(?:model\.)?layers\.(\d+)\.(.+)$")


_GEMMA4_LAYER_NAMES = {
    **_LAYER_NAMES,
    "post_attention_layernorm.weight": "post_attention_norm/scale",
    "post_feedforward_layernorm_1.weight": "post_dense_feedforward_norm/scale",
    "pre_feedforward_layernorm_2.weight": "experts/pre_norm/scale",
    "post_feedforward_layernorm_2.weight": "experts/post_norm/scale",
    "router.proj.weight": "experts/router/kernel",
    "router.scale": "experts/router_scale",
    "router.per_expert_scale": "experts/per_expert_scale",
    "experts.gate_up_proj": "experts/gate_up",  # split in _gemma4_tensors
    "experts.down_proj": "experts/down/kernel",
    "per_layer_input_gate.weight": "per_layer_input_gate/kernel",
    "per_layer_projection.weight": "per_layer_projection/kernel",
    "post_per_layer_input_norm.weight": "post_per_layer_input_norm/scale",
    "layer_scalar": "layer_scalar",
}
_GEMMA4_TOP_NAMES = {
    "embed_tokens.weight": "token_embedding/embeddings",
    "norm.weight": "final_norm/scale",
    "embed_tokens_per_layer.weight": "per_layer_embedding/token_embedding/embeddings",
    "per_layer_model_projection.weight": "per_layer_embedding/projection/kernel",
    "per_layer_projection_norm.weight": "per_layer_embedding/projection_norm/scale",
}
# Keys and values of KV-shared layers, which transformers also ignores.
_GEMMA4_SHARED_LAYER_SKIPS = ("self_attn.k_proj.", "self_attn.v_proj.",
                              "self_attn.k_norm.", "self_attn.v_norm.")


def gemma4_name(hf_name, config):
    """Our path for a Gemma 4 tensor name; None to skip, "?" + name if unknown."""
    if hf_name.endswith("lm_head.weight") or hf_name.startswith(_GEMMA4_SKIPPED_PREFIXES):
        return None
    for prefix in _GEMMA4_TEXT_PREFIXES:
        if hf_name.startswith(prefix):
            rest = hf_name[len(prefix):]
            break
    else:
        return "?" + hf_name
    if rest in _GEMMA4_TOP_NAMES:
        return _GEMMA4_TOP_NAMES[rest]
    match = re.match(r"^layers\.(\d+)\.(.+)$", rest)
    if not match:
        return "?" + hf_name
    index, rest = int(match.group(1)), match.group(2)
    first_shared = config["num_layers"] - (config.get("num_kv_shared_layers") or 0)
    if index >= first_shared and rest.startswith(_GEMMA4_SHARED_LAYER_SKIPS):
        return None
    ours = _GEMMA4_LAYER_NAMES.get(rest)
    if ours is None:
        return "?" + hf_name
    return f"decoder_block_{index}/{ours}"


def _gemma4_tensors(name, array):
    """(our path, array) pairs for one Gemma 4 tensor, in our layout."""
    if name.endswith("experts/gate_up"):
        # (experts, 2 * width, hidden): gate rows first, then up rows.
        block = name.rsplit("/", 1)[0]
        gate, up = np.split(array, 2, axis=1)
        yield block + "/gate/kernel", gate.transpose(0, 2, 1)
        yield block + "/up/kernel", up.transpose(0, 2, 1)
    elif name.endswith("experts/down/kernel"):
        yield name, array.transpose(0, 2, 1)  # (experts, hidden, width) -> (experts, width, hidden)
    elif name.endswith("layer_scalar"):
        yield name, array.reshape(())
    elif name.endswith("/kernel"):
        yield name, array.T  # torch Linear stores (out, in)
    else:
        yield name, array


def our_name(hf_name, config):
    """Our variable path for a transformers tensor name, or None to skip."""
    if hf_name in ("model.embed_tokens.weight", "language_model.model.embed_tokens.weight",
                   "embed_tokens.weight"):
        return "token_embedding/embeddings"
    if hf_name in ("model.norm.weight", "language_model.model.norm.weight", "norm.weight"):
        return "final_norm/scale"
    if hf_name.endswith("lm_head.weight"):
        return None  # tied to the embedding
    if hf_name.startswith(("vision_tower.", "multi_modal_projector.")):
        return None  # Gemma 3's image encoder: keras_gemma runs the text model
    match = _LAYER_PATTERN.match(hf_name)
    if not match:
        return "?" + hf_name
    index, rest = match.groups()
    if rest == "post_attention_layernorm.weight":
        # Gemma 1 names its pre-feed-forward norm this way.
        rest_ours = (
            "post_attention_norm/scale" if config.get("use_post_attention_norm")
            else "pre_feedforward_norm/scale"
        )
    else:
        rest_ours = _LAYER_NAMES.get(rest)
        if rest_ours is None:
            return "?" + hf_name
    return f"decoder_block_{index}/{rest_ours}"


# -- safetensors ----------------------------------------------------------------


def _shards(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            raise FileNotFoundError(
                f"{folder}: shards listed in model.safetensors.index.json are "
                f"missing: {missing}."
            )
        return [os.path.join(folder, n) for n in names]
    shards = sorted(
        os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors")
    )
    if not shards:
        raise FileNotFoundError(f"{folder}: no *.safetensors files.")
    return shards


def read_safetensors_header(path):
    """(header dict, data start offset) of one safetensors file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: too short to be a safetensors file.")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > size - 8:
            raise ValueError(
                f"{path}: header length {header_length} exceeds the file size "
                f"({size} bytes); the file is truncated or not safetensors."
            )
        try:
            header = json.loads(f.read(header_length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: corrupt safetensors header.") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a JSON object).")
    header.pop("__metadata__", None)
    for name, entry in header.items():
        _check_entry(name, entry, path)
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + header_length + end > size:
        raise ValueError(
            f"{path}: tensors end at byte {8 + header_length + end} but the "
            f"file has {size} bytes; it is truncated. Download it again."
        )
    return header, 8 + header_length


def _check_entry(name, entry, path):
    """A header entry: dtype, shape, and offsets spanning exactly its bytes."""
    def whole(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list)
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(map(whole, entry["shape"] + entry["data_offsets"]))):
        raise ValueError(
            f"{path}: corrupt safetensors header: tensor '{name}' needs a "
            f"dtype, a shape and two data offsets, got {entry!r:.120}."
        )
    begin, end = entry["data_offsets"]
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is not None:
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        expected = itemsize * int(np.prod(entry["shape"], dtype=object))
        if end - begin != expected:
            raise ValueError(
                f"{path}: corrupt safetensors header: tensor '{name}' of shape "
                f"{entry['shape']} ({entry['dtype']}) needs {expected} bytes, "
                f"but its offsets span {end - begin}."
            )


def _to_array(data, entry, name, path):
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ValueError(
            f"{path}: tensor '{name}' has dtype {entry['dtype']}, which "
            f"keras_gemma does not read (supported: {', '.join(_DTYPES)})."
        )
    begin, end = entry["data_offsets"]
    raw = data[begin:end]
    if dtype == "bfloat16":
        # bfloat16 is the top half of a float32.
        array = (raw.view("<u2").astype("uint32") << 16).view("float32")
    else:
        array = raw.view("<" + np.dtype(dtype).str[1:])
    return array.reshape(entry["shape"])


def _is_gemma4(config):
    return not config.get("norm_scale_plus_one", True)


def _check_has_text_weights(folder, shards, config):
    """A Gemma 4 folder whose tensors are all vision/audio gets a clear error."""
    for path in shards:
        header, _ = read_safetensors_header(path)
        if any(gemma4_name(n, config) is not None for n in header):
            return
    raise ValueError(
        f"{folder}: config.json describes a Gemma 4 model, but the "
        "safetensors files hold no language-model weights (only vision/audio "
        "towers, which keras_gemma skips). Download the full checkpoint, "
        "including the model.language_model.* tensors."
    )


def read_weights(folder, config):
    """Yields (our path, float32 array) tensor by tensor, shard by shard."""
    gemma4 = _is_gemma4(config)
    shards = _shards(folder)
    if gemma4:
        _check_has_text_weights(folder, shards, config)
    for path in shards:
        header, offset = read_safetensors_header(path)
        data = np.memmap(path, dtype="uint8", mode="r", offset=offset)
        for hf_name, entry in header.items():
            name = gemma4_name(hf_name, config) if gemma4 else our_name(hf_name, config)
            if name is None:
                continue
            if name.startswith("?"):
                raise ValueError(
                    f"{path}: unexpected tensor '{hf_name}' for a Gemma text "
                    "model."
                )
            array = _to_array(data, entry, hf_name, path)
            if gemma4:
                for ours, value in _gemma4_tensors(name, array):
                    yield ours, np.array(value, dtype="float32")
                continue
            if name.endswith("/kernel"):
                array = array.T  # torch Linear stores (out, in)
            yield name, np.array(array, dtype="float32")
        del data


# -- tokenizer --------------------------------------------------------------------


def tokenizer_file(folder):
    """The one place that finds a Hugging Face folder's tokenizer file.

    Gemma 1-3 folders ship SentencePiece's ``tokenizer.model``; Gemma 4
    folders ship only ``tokenizer.json`` (read by
    ``checkpoints/tokenizer_json.py``).
    """
    folder = str(folder)
    model = os.path.join(folder, "tokenizer.model")
    if os.path.isfile(model):
        return model
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return os.path.join(folder, "tokenizer.json")
    raise FileNotFoundError(
        f"{folder}: the tokenizer file tokenizer.model is missing (expected at "
        f"{model})."
    )


# -- writing: the same name tables, read backwards ---------------------------------

_INVERSE_LAYER_NAMES = {ours: hf for hf, ours in _LAYER_NAMES.items()}
_INVERSE_GEMMA4_LAYER_NAMES = {ours: hf for hf, ours in _GEMMA4_LAYER_NAMES.items()}
_INVERSE_GEMMA4_TOP_NAMES = {ours: hf for hf, ours in _GEMMA4_TOP_NAMES.items()}
_OUR_LAYER_PATH = re.compile(r"^decoder_block_(\d+)/(.+)$")


def hf_name(path, config):
    """The transformers ``*ForCausalLM`` tensor name of our variable ``path``
    (the inverse of ``our_name`` / ``gemma4_name``, from the same tables).

    Gemma 4's expert ``gate`` and ``up`` kernels share one tensor
    (``experts.gate_up_proj``); both map to it (``hf_tensors`` joins them).
    """
    gemma4 = _is_gemma4(config)
    if path == "token_embedding/embeddings":
        return "model.embed_tokens.weight"
    if path == "final_norm/scale":
        return "model.norm.weight"
    if gemma4 and path in _INVERSE_GEMMA4_TOP_NAMES:
        return "model." + _INVERSE_GEMMA4_TOP_NAMES[path]
    match = _OUR_LAYER_PATH.match(path)
    if not match:
        raise ValueError(f"No Hugging Face name for the weight '{path}'.")
    index, rest = match.groups()
    if gemma4:
        if rest in ("experts/gate/kernel", "experts/up/kernel"):
            rest = "experts/gate_up"
        hf = _INVERSE_GEMMA4_LAYER_NAMES.get(rest)
    elif rest == "post_attention_norm/scale":
        hf = "post_attention_layernorm.weight"
    elif rest == "pre_feedforward_norm/scale" and not config.get("use_post_attention_norm"):
        hf = "post_attention_layernorm.weight"  # Gemma 1's name for it
    else:
        hf = _INVERSE_LAYER_NAMES.get(rest)
    if hf is None:
        raise ValueError(f"No Hugging Face name for the weight '{path}'.")
    return f"model.layers.{index}.{hf}"


def hf_tensors(weights, config):
    """Yields (transformers name, array in transformers' layout) for our
    ``weights`` ({path: array}), the inverse of ``read_weights``."""
    gemma4 = _is_gemma4(config)
    written = set()
    for path in weights:
        name = hf_name(path, config)
        array = weights[path]
        if not gemma4:
            yield name, array.T if path.endswith("/kernel") else array
        elif path.endswith(("experts/gate/kernel", "experts/up/kernel")):
            # One tensor for both, at the first of the two (names come in
            # the order of ``weights``).
            if name in written:
                continue
            written.add(name)
            block = path.rsplit("/", 2)[0]
            gate, up = weights[block + "/gate/kernel"], weights[block + "/up/kernel"]
            # (experts, hidden, width) each -> (experts, 2 * width, hidden).
            yield name, np.concatenate(
                [gate.transpose(0, 2, 1), up.transpose(0, 2, 1)], axis=1)
        elif path.endswith("experts/down/kernel"):
            yield name, array.transpose(0, 2, 1)
        elif path.endswith("layer_scalar"):
            yield name, array.reshape((1,))
        elif path.endswith("/kernel"):
            yield name, array.T
        else:
            yield name, array


_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def write_safetensors(path, tensors, metadata=None):
    """Writes ``tensors`` ({name: numpy array of float32, float16 or
    ml_dtypes bfloat16}) to a safetensors file, one tensor at a time, keys
    in the given order; the file is fsynced."""
    header = {"__metadata__": dict(metadata or {"format": "pt"})}
    position = 0
    for name, array in tensors.items():
        dtype = _SAFETENSORS_DTYPES.get(np.dtype(array.dtype).name)
        if dtype is None:
            raise TypeError(f"Cannot write tensor '{name}' of dtype {array.dtype} "
                            "to safetensors (float32, float16, bfloat16 only).")
        size = int(array.nbytes)
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [position, position + size]}
        position += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for array in tensors.values():
            f.write(_little_endian_bytes(array))
        f.flush()
        os.fsync(f.fileno())


def _little_endian_bytes(array):
    """C-order little-endian bytes (bfloat16 through its uint16 bits)."""
    array = np.ascontiguousarray(array)
    if np.dtype(array.dtype).name == "bfloat16":
        return array.view("uint16").astype("<u2", copy=False).tobytes()
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
