"""What each decoder layer of a Gemma config is, computed once from the config.

``GemmaBackbone`` builds its blocks, caches and rotary tables from these
specs, and ``GemmaBackbone.count_parameters`` counts from them without
building anything, so the rules that turn switches into layers (which
layers slide, which share keys and values, which are wider) live here only.
"""

import dataclasses

SLIDING, FULL = "sliding_attention", "full_attention"

# The switches every Gemma 4 text model sets the same way (see the table in
# backbone.py); checkpoint readers add the ones that vary by model.
GEMMA4_COMMON_SWITCHES = {
    "query_pre_attn_scalar": 1.0,  # no query scaling
    "use_post_attention_norm": True,
    "use_post_feedforward_norm": True,
    "use_query_key_norm": True,
    "norm_scale_plus_one": False,
    "use_value_norm": True,
    "use_layer_scalar": True,
}


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    index: int
    sliding: bool  # attends to a window (if the config has one)
    head_dim: int
    num_key_value_heads: int
    rope_max_wavelength: float
    rope_scaling_factor: float
    rotary_fraction: float  # < 1: Gemma 4's proportional RoPE
    value_from_key: bool  # Gemma 4 attention_k_eq_v on full layers
    kv_source: int | None  # index of the layer whose keys/values it reuses
    intermediate_dim: int

    @property
    def rotary_key(self):
        return (self.head_dim, self.rope_max_wavelength,
                self.rope_scaling_factor, self.rotary_fraction)


def layer_types(config):
    """``"sliding_attention"`` / ``"full_attention"`` for every layer."""
    num_layers = config["num_layers"]
    explicit = config.get("layer_types")
    if explicit is not None:
        explicit = list(explicit)
        if len(explicit) != num_layers:
            raise ValueError(
                f"GemmaBackbone: `layer_types` has {len(explicit)} entries but "
                f"the model has {num_layers} layers (`num_layers`); give one "
                f"'{SLIDING}' or '{FULL}' per layer."
            )
        unknown = sorted({t for t in explicit if t not in (SLIDING, FULL)})
        if unknown:
            raise ValueError(
                f"GemmaBackbone: unknown layer types {unknown} in `layer_types`;"
                f" each must be '{SLIDING}' or '{FULL}'."
            )
        return explicit
    if config.get("sliding_window_size") is None:
        return [FULL] * num_layers
    pattern = config.get("sliding_window_pattern")
    if pattern is None:
        return [SLIDING] * num_layers
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers)]


def layer_specs(config):
    """One ``LayerSpec`` per layer; raises ValueError for impossible configs."""
    types = layer_types(config)
    num_layers = config["num_layers"]
    shared = config.get("num_kv_shared_layers") or 0
    if shared and shared >= num_layers:
        raise ValueError(
            f"GemmaBackbone: `num_kv_shared_layers` ({shared}) must be smaller "
            f"than `num_layers` ({num_layers}): shared layers reuse the keys "
            "and values of an earlier, non-shared layer."
        )
    first_shared = num_layers - shared
    local_wavelength = config.get("local_rope_max_wavelength") or config["rope_max_wavelength"]
    specs = []
    for i, layer_type in enumerate(types):
        sliding = layer_type == SLIDING
        kv_source = None
        if i >= first_shared:
            sources = [j for j in range(first_shared) if types[j] == layer_type]
            if not sources:
                raise ValueError(
                    f"GemmaBackbone: layer {i} ('{layer_type}') shares keys and "
                    f"values (`num_kv_shared_layers`={shared}), but none of the "
                    f"{first_shared} non-shared layers is a '{layer_type}' layer "
                    "to share from. Check `layer_types` and `num_kv_shared_layers`."
                )
            kv_source = sources[-1]
        wide = config.get("use_double_wide_mlp") and kv_source is not None
        if sliding:
            head_dim, kv_heads = config["head_dim"], config["num_key_value_heads"]
            rope = (float(local_wavelength), 1.0, 1.0)
        else:
            head_dim = config.get("global_head_dim") or config["head_dim"]
            kv_heads = config.get("num_global_key_value_heads") or config["num_key_value_heads"]
            rope = (float(config["rope_max_wavelength"]),
                    float(config.get("rope_scaling_factor", 1.0)),
                    float(config.get("rope_partial_rotary_factor", 1.0)))
        specs.append(LayerSpec(
            index=i,
            sliding=sliding,
            head_dim=head_dim,
            num_key_value_heads=kv_heads,
            rope_max_wavelength=rope[0],
            rope_scaling_factor=rope[1],
            rotary_fraction=rope[2],
            value_from_key=bool(config.get("attention_k_eq_v")) and not sliding,
            kv_source=kv_source,
            intermediate_dim=config["intermediate_dim"] * (2 if wide else 1),
        ))
    return specs
