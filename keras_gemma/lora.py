"""LoRA: low-rank adapters on the backbone's projection kernels.

Each adapted kernel W (in, out) gets W + (alpha / rank) * A @ B with A (in,
rank) random and B (rank, out) zero, so the model is unchanged until B
trains. This is the LoRA paper's form over the flattened projection, the
same as Hugging Face ``peft`` (whose lora_A is our A transposed and lora_B
our B transposed), which is what makes adapters portable between the two.
Keras ``Dense.enable_lora`` holds A and B (in float32, whatever the base
dtype); this module chooses the layers, freezes the rest, and saves, loads,
merges and converts adapters.
"""

import json
import os
import tempfile

import numpy as np
from keras import ops

# Names accepted in ``target`` -> the Dense layer inside each decoder block.
TARGETS = {
    "query": ("attention", "query"),
    "key": ("attention", "key"),
    "value": ("attention", "value"),
    "output": ("attention", "output_projection"),
    "gate": (None, "feedforward_gate"),
    "up": (None, "feedforward_up"),
    "down": (None, "feedforward_down"),
}
ADAPTER_FORMAT = "keras_gemma.lora/1"
# Gemma 4: the expert kernels, the router and the per-layer embedding
# layers are not targets; they stay frozen (a LoRA on 128 stacked experts
# would be 128 adapters, which peft's Gemma 4 support does not define either).

# keras-hub's layer names (``enable_lora(target_layer_names=...)``) -> ours.
# "query_dense" / "value_dense" are in keras-hub's default list (for other
# model families) and mean the same projections.
KERAS_HUB_LAYER_NAMES = {
    "query": "query",
    "query_dense": "query",
    "key": "key",
    "value": "value",
    "value_dense": "value",
    "attention_output": "output",
    "ffw_gating": "gate",
    "ffw_gating_2": "up",
    "ffw_linear": "down",
}


def target_from_layer_names(target_layer_names):
    """Our ``target`` tuple for keras-hub's ``target_layer_names``."""
    if isinstance(target_layer_names, str):
        target_layer_names = [target_layer_names]
    unknown = [n for n in target_layer_names if n not in KERAS_HUB_LAYER_NAMES]
    if unknown:
        raise ValueError(
            f"target_layer_names {unknown} name no Gemma layer. keras-hub's "
            f"Gemma layer names are {', '.join(KERAS_HUB_LAYER_NAMES)}; or use "
            f"target= with {', '.join(TARGETS)}."
        )
    target = []
    for name in target_layer_names:
        if KERAS_HUB_LAYER_NAMES[name] not in target:
            target.append(KERAS_HUB_LAYER_NAMES[name])
    return tuple(target)


def target_layers(backbone, target):
    """(block index, target name, Dense layer) for every adapted projection."""
    if isinstance(target, str):
        target = (target,)
    target = tuple(target)
    unknown = [t for t in target if t not in TARGETS]
    if unknown or not target:
        raise ValueError(
            f"LoRA target {unknown or target!r} matches no layer. Choose among "
            f"{', '.join(TARGETS)} (attention: query, key, value, output; "
            "feed-forward: gate, up, down)."
        )
    layers = []
    for index, block in enumerate(backbone.decoder_blocks):
        for name in target:
            parent, attribute = TARGETS[name]
            owner = getattr(block, parent) if parent else block
            # Gemma 4 layers without this projection (KV-shared layers have
            # no key/value, K = V full layers no value) are skipped.
            layer = getattr(owner, attribute, None)
            if layer is not None:
                layers.append((index, name, layer))
    return layers


def enable_lora(backbone, rank, alpha=None, target=("query", "value"),
                target_layer_names=None):
    # keras-hub's signature is enable_lora(rank, target_layer_names): a list
    # of names in our `alpha` place is keras-hub's positional call.
    if isinstance(alpha, (list, tuple, str)) and target_layer_names is None:
        alpha, target_layer_names = None, alpha
    if target_layer_names is not None:
        target = target_from_layer_names(target_layer_names)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA `rank` must be an integer >= 1, got {rank!r}.")
    if alpha is not None and (not isinstance(alpha, (int, float)) or alpha <= 0):
        raise ValueError(f"LoRA `alpha` must be a positive number, got {alpha!r}.")
    if backbone.lora_config is not None:
        raise ValueError(
            "LoRA is already enabled on this backbone "
            f"({backbone.lora_config}). Call merge_lora() first to fold the "
            "adapter in, or build a fresh model."
        )
    layers = target_layers(backbone, target)
    for variable in backbone.weights:
        variable.trainable = False
    for _, _, layer in layers:
        layer.enable_lora(rank, lora_alpha=alpha if alpha is not None else rank)
    backbone.lora_config = {
        "rank": rank,
        "alpha": float(alpha if alpha is not None else rank),
        "target": sorted(set(target if not isinstance(target, str) else [target]),
                         key=list(TARGETS).index),
    }


def _require_lora(backbone, action):
    if backbone.lora_config is None:
        raise ValueError(
            f"Cannot {action}: LoRA is not enabled on this backbone. Call "
            "backbone.enable_lora(rank) first."
        )


def lora_variables(backbone):
    """{path: variable} of the adapter weights (A and B of every layer)."""
    _require_lora(backbone, "list LoRA weights")
    found = {}
    for _, _, layer in target_layers(backbone, backbone.lora_config["target"]):
        found[layer.lora_kernel_a.path] = layer.lora_kernel_a
        found[layer.lora_kernel_b.path] = layer.lora_kernel_b
    return found


def base_weights(backbone):
    """{path: tensor} of the model's own weights, with any adapter merged in
    (as Keras does when saving), and without the adapter variables."""
    weights = {}
    for variable in backbone.weights:
        if not variable.path.rsplit("/", 1)[-1].startswith("lora_kernel"):
            weights[variable.path] = variable.value
    if backbone.lora_config is not None:
        for _, _, layer in target_layers(backbone, backbone.lora_config["target"]):
            weights[layer._kernel.path] = ops.cast(layer.kernel, layer._kernel.dtype)
    return weights


def merge_lora(backbone):
    """Folds each adapter into its kernel and removes it; weights unfreeze."""
    _require_lora(backbone, "merge LoRA")
    if getattr(backbone, "is_quantized", False):
        raise ValueError(
            "Cannot merge LoRA into int8 weights. Load the float model, "
            "load_lora_weights() into it, merge_lora(), then quantize('int8')."
        )
    for _, _, layer in target_layers(backbone, backbone.lora_config["target"]):
        merged = layer.kernel  # base + (alpha / rank) * A @ B, in the base dtype
        layer._kernel.assign(ops.cast(merged, layer._kernel.dtype))
        layer._tracker.unlock()
        del layer.lora_kernel_a
        del layer.lora_kernel_b
        layer._tracker.lock()
        layer.lora_enabled = False
        layer.lora_rank = None
        layer.lora_alpha = None
    for variable in backbone.weights:
        variable.trainable = True
    backbone.lora_config = None


def _architecture(backbone):
    config = backbone._config()
    config.pop("dropout", None)
    return config


def save_lora_weights(backbone, path):
    """Writes only the adapter (HDF5), atomically."""
    import h5py

    _require_lora(backbone, "save LoRA weights")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(handle)
    try:
        with h5py.File(staging, "w") as f:
            f.attrs["format"] = ADAPTER_FORMAT
            f.attrs["lora_config"] = json.dumps(backbone.lora_config)
            f.attrs["backbone_config"] = json.dumps(_architecture(backbone))
            for name, variable in lora_variables(backbone).items():
                f.create_dataset(name, data=ops.convert_to_numpy(variable.value))
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise


def load_lora_weights(backbone, path):
    """Loads an adapter from ``save_lora_weights``; enables LoRA if needed."""
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No LoRA adapter file at {path}.")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable adapter file ({error}).") from None
    with f:
        if f.attrs.get("format") != ADAPTER_FORMAT:
            raise ValueError(
                f"{path}: not a keras_gemma LoRA adapter (written by "
                "save_lora_weights). For peft adapters use load_peft_adapter()."
            )
        lora_config = json.loads(f.attrs["lora_config"])
        saved_architecture = json.loads(f.attrs["backbone_config"])
        ours = _architecture(backbone)
        different = sorted(k for k in ours if saved_architecture.get(k) != ours[k])
        if different:
            details = ", ".join(
                f"{k}: adapter {saved_architecture.get(k)!r} vs model {ours[k]!r}"
                for k in different[:5]
            )
            raise ValueError(
                f"{path}: this adapter was trained for a different model "
                f"({details})."
            )
        if backbone.lora_config is None:
            enable_lora(backbone, lora_config["rank"], lora_config["alpha"],
                        lora_config["target"])
        elif backbone.lora_config != lora_config:
            raise ValueError(
                f"{path}: adapter has LoRA settings {lora_config}, but this "
                f"model has {backbone.lora_config} enabled."
            )
        for name, variable in lora_variables(backbone).items():
            if name not in f:
                raise ValueError(f"{path}: the adapter lacks '{name}'.")
            variable.assign(np.asarray(f[name]))


def _callback_base():
    import keras

    return keras.callbacks.Callback


class LoRACheckpoint(_callback_base()):
    """Saves only the LoRA adapter at the end of every epoch (or when the
    monitored metric improves, with ``save_best_only``).

    ``filepath`` may contain ``{epoch}`` and log names, as in
    ``keras.callbacks.ModelCheckpoint``. Resume with
    ``backbone.load_lora_weights(path)`` and ``fit(initial_epoch=...)``.
    """

    def __init__(self, filepath, monitor="loss", save_best_only=False):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.best = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        current = logs.get(self.monitor)
        if self.save_best_only:
            if current is None or (self.best is not None and current >= self.best):
                return
            self.best = current
        path = self.filepath.format(epoch=epoch + 1, **logs)
        save_lora_weights(self.model.backbone, path)
