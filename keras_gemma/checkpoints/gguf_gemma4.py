"""Gemma 4 (text) in llama.cpp's ``gemma4`` GGUF layout: the one tensor
table, and the config and vocabulary read from a file's metadata.

``expected_tensors`` is used both ways: the writer
(``keras_gemma/export/gguf_gemma4.py``) writes it, ``read_gguf`` reads it.

How the Gemma 4 switches sit in a file, as llama.cpp's converter
(``Gemma4Model`` of ``convert_hf_to_gguf.py``) writes them and its loader
(``llama_model_gemma4``) reads them:

* layer types: ``attention.sliding_window_pattern``, one bool per layer;
* head sizes: ``attention.key_length`` (full layers) and
  ``attention.key_length_swa`` (sliding layers), values the same;
* key/value heads and MLP widths: ``attention.head_count_kv`` and
  ``feed_forward_length``, one value or one per layer (per layer when full
  layers have their own head count, or layers sharing keys and values are
  twice as wide);
* proportional RoPE on full layers: ``rope_freqs.weight`` holds frequency
  factor 1 for the rotated pairs and 1e30 (no rotation) for the others;
* keys as values (``attention_k_eq_v``): full layers without ``attn_v``;
* shared keys and values: ``attention.shared_kv_layers`` (llama.cpp's
  converter keeps those layers' unused ``attn_k``/``attn_v``/``attn_k_norm``;
  they are skipped here);
* per-layer embeddings: ``embedding_length_per_layer_input`` > 0;
* experts: ``expert_count``, ``expert_used_count``,
  ``expert_feed_forward_length``, the router ``ffn_gate_inp`` and the
  experts' projections, gate and up either separate (``ffn_gate_exps``,
  ``ffn_up_exps``) or stacked (``ffn_gate_up_exps``, gate rows first);
* norms multiply by their weight as stored (no ``1 +``), queries are not
  scaled, the layer scalar is ``layer_output_scale`` (optional in
  llama.cpp: without it the layers are not scaled).

Only what llama.cpp's converter writes is relied on; a file llama.cpp would
run differently from keras_gemma (RoPE scaling, partial rotation on sliding
layers, per-layer query heads, other KV-sharing sources) is refused by name.
"""

import numpy as np

from keras_gemma.checkpoints import sentencepiece_proto as spm
from keras_gemma.checkpoints.gguf_names import (
    BLOCK_TENSORS,
    MISSING,
    metadata_value,
    per_layer_values,
    vocabulary_size as gguf_vocabulary_size,
)
from keras_gemma.layer_specs import FULL, GEMMA4_COMMON_SWITCHES, SLIDING, layer_specs

ARCHITECTURE = "gemma4"
_PREFIX = ARCHITECTURE + "."
# rope_freqs factors of pairs that do not rotate: llama.cpp divides their
# frequency by this, leaving an angle under 1e-26 radians.
NO_ROTATION = 1e30

# Per layer: tensors a layer that reuses another's keys and values has no use for.
_KV_TENSORS = ("attention/key/kernel", "attention/value/kernel", "attention/key_norm/scale")
_NAMES = {ours: name for name, (ours, _) in BLOCK_TENSORS.items()}


# -- the tensor table ----------------------------------------------------------


def expected_tensors(config):
    """GGUF tensor name -> (our path, numpy shape in the file, conversion).

    Conversions: "kernel" (transposed), "copy" (norms are stored as they
    multiply), "scalar" (the layer scalar, a 1-value tensor), "experts"
    (stacked projections, the last two axes swapped) and "rope_freqs" (no
    variable: generated from the config by the writer, read into it here).
    """
    hidden = config["hidden_dim"]
    specs = layer_specs(config)
    full_dim = _full_head_dim(config, specs)
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
            for ours in _KV_TENSORS:
                del shapes[ours]
        elif spec.value_from_key:
            del shapes["attention/value/kernel"]  # llama.cpp uses the keys
        for ours, shape in shapes.items():
            conversion = "kernel" if ours.endswith("kernel") else "copy"
            tensors[f"blk.{i}.{_NAMES[ours]}.weight"] = (f"decoder_block_{i}/{ours}", shape, conversion)
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
    The stacked projections are (experts, out, in) in the file, (experts,
    in, out) in our layers."""
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


def reading_table(config, names):
    """(table, ignored) for reading a file with tensors ``names``: the
    ``expected_tensors`` table, with stacked expert gate/up projections
    where the file has them (conversion "experts_gate_up", read into both),
    and the set of tensors llama.cpp's converter writes that no layer uses
    (keys and values of layers that share another's)."""
    table = expected_tensors(config)
    if "rope_freqs.weight" not in names and all(s.sliding for s in layer_specs(config)):
        del table["rope_freqs.weight"]  # only full layers rotate by it
    ignored = set()
    for spec in layer_specs(config):
        block = f"blk.{spec.index}."
        fused = block + "ffn_gate_up_exps.weight"
        if config.get("num_experts") and fused in names:
            gate = table.pop(block + "ffn_gate_exps.weight")
            del table[block + "ffn_up_exps.weight"]
            experts, width, hidden = gate[1]
            ours = gate[0].rsplit("/", 2)[0] + "/gate_up"
            table[fused] = (ours, (experts, 2 * width, hidden), "experts_gate_up")
        if spec.kv_source is not None:
            ignored.update(f"{block}{_NAMES[ours]}.weight" for ours in _KV_TENSORS)
    return table, ignored


def check_kv_sharing(config):
    """Raises unless the layers sharing keys and values take them from the
    layers llama.cpp takes them from: a shared sliding layer those of layer
    ``first_shared - 2``, a shared full layer those of ``first_shared - 1``
    (keras_gemma: the last non-shared layer of the same type)."""
    specs = layer_specs(config)
    first_shared = config["num_layers"] - (config.get("num_kv_shared_layers") or 0)
    for spec in specs[first_shared:]:
        expected = first_shared - (2 if spec.sliding else 1)
        if spec.kv_source != expected:
            raise ValueError(
                f"its layer {spec.index} reuses the keys and values of layer "
                f"{spec.kv_source}, but llama.cpp takes those of layer {expected} (it needs the last "
                "layer before the shared ones to be a full-attention layer and "
                "the one before it a sliding one, as in E2B and E4B)."
            )


def _full_head_dim(config, specs):
    return next((spec.head_dim for spec in specs if not spec.sliding), config["head_dim"])


# -- config from metadata ---------------------------------------------------------


def config_from_metadata(metadata, names, rope_freqs, path):
    """``GemmaBackbone`` kwargs of a ``gemma4`` file.

    Args:
        metadata: the file's metadata.
        names: the names of its tensors (some switches are told by which
            tensors exist).
        rope_freqs: the values of ``rope_freqs.weight`` (float32), or None.
        path: the file, for error messages.
    """
    def get(key, default=MISSING, kind=int):
        return metadata_value(metadata, _PREFIX + key, path, default, kind)

    num_layers = get("block_count")
    hidden_dim = get("embedding_length")
    num_query_heads = get("attention.head_count")
    if min(num_layers, hidden_dim, num_query_heads) < 1:
        raise ValueError(
            f"{path}: GGUF metadata gives {num_layers} layers, hidden size "
            f"{hidden_dim} and {num_query_heads} heads; all must be positive."
        )
    types = _layer_types(metadata, num_layers, path)
    full_dim = _head_size(get, "", hidden_dim // num_query_heads, path)
    sliding_dim = _head_size(get, "_swa", MISSING, path)
    for suffix, head in (("", full_dim), ("_swa", sliding_dim)):
        rotated = get("rope.dimension_count" + suffix, head)
        if rotated != head:
            raise ValueError(
                f"{path}: `{_PREFIX}rope.dimension_count{suffix}` is {rotated} but "
                f"the heads of those layers have {head} values; keras_gemma "
                "rotates whole heads (full-attention layers' proportional RoPE "
                "comes from rope_freqs.weight)."
            )
    _refuse_rope_scaling(metadata, path)

    shared = get("attention.shared_kv_layers", 0)
    if not 0 <= shared < num_layers:
        raise ValueError(
            f"{path}: `{_PREFIX}attention.shared_kv_layers` is {shared}; it must "
            f"be smaller than the {num_layers} layers (shared layers reuse an "
            "earlier layer's keys and values)."
        )
    kv_heads = per_layer_values(metadata, _PREFIX + "attention.head_count_kv", num_layers, path,
                                default=num_query_heads)
    sliding_kv = _one_per_type(kv_heads, types, SLIDING, "attention.head_count_kv", path)
    full_kv = _one_per_type(kv_heads, types, FULL, "attention.head_count_kv", path)
    intermediate_dim, double_wide = _mlp_widths(metadata, num_layers, shared, path)
    num_experts = get("expert_count", 0)
    per_layer_dim = get("embedding_length_per_layer_input")
    vocabulary_size = gguf_vocabulary_size(metadata, ARCHITECTURE, path)
    final_cap = get("final_logit_softcapping", None, float)
    rope_base = get("rope.freq_base", 10_000.0, float)

    config = {
        "vocabulary_size": vocabulary_size,
        "num_layers": num_layers,
        "num_query_heads": num_query_heads,
        "num_key_value_heads": sliding_kv or full_kv,
        "hidden_dim": hidden_dim,
        "intermediate_dim": intermediate_dim,
        "head_dim": sliding_dim,
        "layer_norm_epsilon": get("attention.layer_norm_rms_epsilon", kind=float),
        **GEMMA4_COMMON_SWITCHES,
        "attention_logit_soft_cap": None,
        "final_logit_soft_cap": final_cap or None,  # llama.cpp: 0 caps nothing
        "sliding_window_size": get("attention.sliding_window"),
        "sliding_window_pattern": None,
        "layer_types": types,
        "global_head_dim": full_dim,
        "num_global_key_value_heads": full_kv if full_kv and full_kv != sliding_kv else None,
        "attention_k_eq_v": _keys_as_values(names, types, num_layers - shared, path),
        "rope_max_wavelength": rope_base,
        "rope_scaling_factor": 1.0,
        "rope_partial_rotary_factor": _rotary_fraction(rope_freqs, full_dim, FULL in types, path),
        "local_rope_max_wavelength": get("rope.freq_base_swa", rope_base, float),
        "num_kv_shared_layers": shared,
        "use_double_wide_mlp": double_wide,
        "per_layer_input_dim": per_layer_dim,
        "per_layer_vocabulary_size": vocabulary_size if per_layer_dim else None,
        "use_layer_scalar": any(f"blk.{i}.layer_output_scale.weight" in names
                                for i in range(num_layers)),
    }
    if num_experts:
        config.update(
            num_experts=num_experts,
            num_experts_per_token=get("expert_used_count"),
            expert_intermediate_dim=get("expert_feed_forward_length"),
        )
    try:
        layer_specs(config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if shared:
        try:
            check_kv_sharing(config)
        except ValueError as error:
            raise ValueError(f"{path}: keras_gemma cannot run this file as llama.cpp does: {error}") from None
    return config


def _layer_types(metadata, num_layers, path):
    key = _PREFIX + "attention.sliding_window_pattern"
    pattern = metadata.get(key)
    if pattern is None:
        raise ValueError(f"{path}: GGUF metadata lacks `{key}` (one bool per layer).")
    if isinstance(pattern, bool):  # llama.cpp reads one value as every layer's
        pattern = [pattern] * num_layers
    pattern = np.asarray(pattern).tolist()
    if not isinstance(pattern, list) or len(pattern) != num_layers or not all(
            isinstance(value, bool) for value in pattern):
        raise ValueError(
            f"{path}: `{key}` is {pattern!r:.80}; expected {num_layers} bools "
            "(true for a sliding-window layer)."
        )
    return [SLIDING if sliding else FULL for sliding in pattern]


def _head_size(get, suffix, default, path):
    keys = get("attention.key_length" + suffix, default)
    values = get("attention.value_length" + suffix, keys)
    if keys != values:
        raise ValueError(
            f"{path}: `{_PREFIX}attention.key_length{suffix}` ({keys}) and "
            f"`{_PREFIX}attention.value_length{suffix}` ({values}) differ; "
            "Gemma 4 keys and values have one head size."
        )
    return keys


def _refuse_rope_scaling(metadata, path):
    kind = metadata.get(_PREFIX + "rope.scaling.type", "none")
    factor = metadata.get(_PREFIX + "rope.scaling.factor", 1.0)
    if kind != "none" or factor not in (0.0, 1.0):
        raise ValueError(
            f"{path}: RoPE scaling ({_PREFIX}rope.scaling.type {kind!r}, factor "
            f"{factor!r}) in a gemma4 file is not supported: llama.cpp scales "
            "every layer's positions, keras_gemma only its full-attention "
            "layers'."
        )


def _one_per_type(values, types, kind, key, path):
    """The one value ``values`` holds for the layers of type ``kind`` (0 if none)."""
    found = sorted({value for value, t in zip(values, types) if t == kind})
    if len(found) > 1:
        raise ValueError(
            f"{path}: `{_PREFIX}{key}` gives the {kind} layers different values "
            f"({found}); keras_gemma supports one per layer type."
        )
    return found[0] if found else 0


def _mlp_widths(metadata, num_layers, shared, path):
    """(intermediate_dim, use_double_wide_mlp) from the per-layer widths."""
    key = _PREFIX + "feed_forward_length"
    widths = per_layer_values(metadata, key, num_layers, path)
    first_shared = num_layers - shared
    own, sharing = set(widths[:first_shared]), set(widths[first_shared:])
    width = widths[0]
    if len(own) == 1 and sharing <= {width, 2 * width} and len(sharing) <= 1:
        return width, sharing == {2 * width} and width > 0
    raise ValueError(
        f"{path}: `{key}` is {widths}; keras_gemma needs one width for every "
        f"layer, except that the {shared} layers sharing keys and values may "
        "all be twice as wide (use_double_wide_mlp)."
    )


def _keys_as_values(names, types, first_shared, path):
    """Whether full layers take their values from the keys: they have no attn_v."""
    full = [i for i in range(first_shared) if types[i] == FULL]
    lacking = [i for i in full if f"blk.{i}.attn_v.weight" not in names]
    if lacking and lacking != full:
        raise ValueError(
            f"{path}: full-attention layers {lacking} have no `attn_v` but "
            f"layers {sorted(set(full) - set(lacking))} do; keras_gemma takes "
            "values from keys in all full-attention layers or in none."
        )
    return bool(full) and lacking == full


def _rotary_fraction(rope_freqs, full_dim, has_full_layers, path):
    """``rope_partial_rotary_factor`` from the frequency factors: the first
    pairs rotate (factor 1), the others do not (factor 1e30)."""
    name = "rope_freqs.weight"
    if not has_full_layers:
        return 1.0
    if rope_freqs is None:
        raise ValueError(
            f"{path}: tensor {name!r} (the full-attention layers' RoPE frequency "
            "factors, which llama.cpp's gemma4 needs) is missing."
        )
    factors = np.asarray(rope_freqs, np.float64).reshape(-1)
    rotated = int(np.sum(factors == 1.0))
    expected = np.concatenate([np.ones(rotated), np.full(len(factors) - rotated, NO_ROTATION)])
    if len(factors) != full_dim // 2 or not np.allclose(factors, expected, rtol=1e-3):
        raise ValueError(
            f"{path}: tensor {name!r} holds {len(factors)} factors "
            f"{factors[:8].tolist()}...; keras_gemma reads proportional RoPE "
            f"only: {full_dim // 2} factors, 1 for the pairs that rotate "
            "followed by 1e30 for those that do not."
        )
    fraction = 2 * rotated / full_dim
    if int(fraction * full_dim // 2) != rotated:  # what rotary_embedding computes
        raise ValueError(
            f"{path}: {rotated} of {full_dim // 2} rotated pairs is not a "
            "fraction keras_gemma can express."
        )
    return fraction


# -- vocabulary ---------------------------------------------------------------------


def tokenizer_proto(metadata, path):
    """A serialized SentencePiece model from a ``gemma4`` vocabulary (what
    llama.cpp's converter writes from Gemma 4's ``tokenizer.json``: its
    pieces in id order, ``tokenizer.ggml.merges``, and scores that carry
    nothing), through the same rebuild as the ``tokenizer.json`` itself."""
    from keras_gemma.checkpoints.tokenizer_json import bpe_tokenizer_proto

    tokens = metadata["tokenizer.ggml.tokens"]
    merges = metadata.get("tokenizer.ggml.merges")
    if merges is None:
        raise ValueError(
            f"{path}: its gemma4 vocabulary has no `tokenizer.ggml.merges`; a "
            "BPE vocabulary cannot be rebuilt without them."
        )
    types = metadata.get("tokenizer.ggml.token_type")
    types = [spm.NORMAL] * len(tokens) if types is None else np.asarray(types).tolist()
    if len(types) != len(tokens):
        raise ValueError(f"{path}: the vocabulary has {len(tokens)} tokens but {len(types)} token types.")
    # Matched whole in text, as by llama.cpp and transformers.
    added = [{"id": index, "content": token} for index, (token, kind) in enumerate(zip(tokens, types))
             if kind in (spm.CONTROL, spm.USER_DEFINED, spm.UNKNOWN)]
    roles = {}
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                      ("pad", "padding_token_id"), ("unk", "unknown_token_id")):
        index = metadata.get("tokenizer.ggml." + key)
        if index is not None:
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(tokens):
                raise ValueError(
                    f"{path}: tokenizer.ggml.{key} is {index}, outside the "
                    f"{len(tokens)}-token vocabulary."
                )
            roles[f"{role}_token"] = tokens[index]
    vocab = {token: index for index, token in enumerate(tokens)}
    return bpe_tokenizer_proto(
        vocab, added, list(merges), roles,
        byte_fallback=spm.BYTE in types,
        source=f"{path} (its tokenizer.ggml.* vocabulary)",
    )
