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

_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16",
           "F64": "float64"}
_SUPPORTED_MODEL_TYPES = ("gemma", "gemma2", "gemma3_text", "gemma3")


def read_config(folder):
    """Our backbone kwargs from a transformers ``config.json``."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from None
    if not isinstance(hf, dict) or not isinstance(hf.get("text_config", {}), dict):
        raise ValueError(f"{path}: not a transformers config (a JSON object).")
    model_type = hf.get("model_type")
    if model_type == "gemma3" and "text_config" in hf:
        hf = {**hf["text_config"], "model_type": "gemma3_text"}
        model_type = "gemma3_text"
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
        config["rope_max_wavelength"] = float(hf.get("rope_theta", 10_000.0))
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


def _rope(hf, model_type):
    if model_type == "gemma2":
        return {"rope_max_wavelength": float(hf.get("rope_theta", 10_000.0)),
                "local_rope_max_wavelength": float(hf.get("rope_theta", 10_000.0))}
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


def read_weights(folder, config):
    """Yields (our path, float32 array) tensor by tensor, shard by shard."""
    for path in _shards(folder):
        header, offset = read_safetensors_header(path)
        data = np.memmap(path, dtype="uint8", mode="r", offset=offset)
        for hf_name, entry in header.items():
            name = our_name(hf_name, config)
            if name is None:
                continue
            if name.startswith("?"):
                raise ValueError(
                    f"{path}: unexpected tensor '{hf_name}' for a Gemma text "
                    "model."
                )
            array = _to_array(data, entry, hf_name, path)
            if name.endswith("/kernel"):
                array = array.T  # torch Linear stores (out, in)
            yield name, np.array(array, dtype="float32")
        del data
