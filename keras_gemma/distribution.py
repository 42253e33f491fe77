"""Layouts for sharding Gemma with ``keras.distribution`` (JAX backend).

Megatron-style tensor parallelism over the mesh's model axis: the query,
key, value, gate and up projections are split by output column, the
attention output and down projections by input row, and the embedding by
vocabulary row, so each device holds about 1 / model_axis_size of the
weights and activations are exchanged once per sub-layer. Norms are
replicated. With a single key/value head (multi-query attention) the key and
value projections are replicated: one head cannot be split across devices.
Gemma 4's experts are split over the model axis by expert (expert
parallelism) and its per-layer embedding table by vocabulary row.
"""

import keras

# Regexes (LayoutMap full-matches them) on variable paths such as
# "decoder_block_3/attention/query/kernel".
_COLUMN_PARALLEL = (r".*/attention/query", r".*/feedforward_gate", r".*/feedforward_up")
_KEY_VALUE = (r".*/attention/key", r".*/attention/value")
_ROW_PARALLEL = (r".*/attention/output", r".*/feedforward_down")
# Gemma 4: expert kernels (experts, in, out) are split by expert, so each
# device holds whole experts and routes its tokens' choices to them; the
# per-layer embedding table is split by vocabulary row like the main one.
_EXPERT_KERNELS = r".*/experts/(gate|up|down)/kernel"
_PER_LAYER_TABLE = r"per_layer_embedding/token_embedding/embeddings"


def _require_jax():
    if keras.config.backend() != "jax":
        raise ValueError(
            "Sharding with keras.distribution works on the JAX backend only "
            f"(Keras is running {keras.config.backend()!r}). Set "
            "KERAS_BACKEND=jax to distribute Gemma across devices."
        )


def get_layout_map(
    device_mesh,
    model_parallel_dim_name="model",
    data_parallel_dim_name="batch",
    num_key_value_heads=None,
):
    """A ``keras.distribution.LayoutMap`` for ``GemmaBackbone`` weights.

    ``num_key_value_heads``: pass the model's value to shard its key/value
    projections too; by default (or when it is 1, or not a multiple of the
    model axis) they are replicated, which is right for multi-query models.
    """
    _require_jax()
    model = model_parallel_dim_name
    if model not in device_mesh.axis_names:
        raise ValueError(
            f"The device mesh has axes {device_mesh.axis_names}; "
            f"model_parallel_dim_name={model!r} is not one of them."
        )
    if data_parallel_dim_name not in device_mesh.axis_names:
        raise ValueError(
            f"The device mesh has axes {device_mesh.axis_names}; "
            f"data_parallel_dim_name={data_parallel_dim_name!r} is not one of them."
        )
    model_size = device_mesh.shape[device_mesh.axis_names.index(model)]
    shard_key_value = (
        num_key_value_heads is not None
        and num_key_value_heads > 1
        and num_key_value_heads % model_size == 0
    )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    layout_map["token_embedding/embeddings"] = (model, None)
    layout_map[_PER_LAYER_TABLE] = (model, None)
    layout_map[_EXPERT_KERNELS] = (model, None, None)
    column = _COLUMN_PARALLEL + (_KEY_VALUE if shard_key_value else ())
    for name in column:
        layout_map[f"{name}/kernel"] = (None, model)
        # LoRA: A (in, rank) is small and replicated; B (rank, out) follows W.
        layout_map[f"{name}/lora_kernel_a"] = (None, None)
        layout_map[f"{name}/lora_kernel_b"] = (None, model)
    for name in _ROW_PARALLEL:
        layout_map[f"{name}/kernel"] = (model, None)
        layout_map[f"{name}/lora_kernel_a"] = (model, None)
        layout_map[f"{name}/lora_kernel_b"] = (None, None)
    if not shard_key_value:
        for name in _KEY_VALUE:
            layout_map[f"{name}/.*"] = (None, None)
    return layout_map
