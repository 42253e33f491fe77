"""Hugging Face ``peft`` LoRA adapters: ``adapter_config.json`` +
``adapter_model.safetensors``, as ``PeftModel.save_pretrained`` writes them
for a transformers Gemma model.

peft stores, per adapted ``nn.Linear`` (weight (out, in)), ``lora_A.weight``
(r, in) and ``lora_B.weight`` (out, r), and adds ``scaling * B @ A`` to the
weight, with ``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
``use_rslora``). Our Dense kernels are (in, out), so our A is ``lora_A.T``,
our B is ``lora_B.T``, and our ``alpha / rank`` is peft's scaling. Tensor
names look like
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``.

Needs neither torch nor peft: safetensors is read and written here directly.
"""

import json
import math
import os
import re
import shutil
import tempfile

import numpy as np
from keras import ops

from keras_gemma import lora
from keras_gemma.checkpoints.huggingface import _to_array, read_safetensors_header
from keras_gemma.checkpoints.huggingface import write_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# transformers module name -> (parent module, our LoRA target name).
_MODULES = {
    "q_proj": ("self_attn", "query"),
    "k_proj": ("self_attn", "key"),
    "v_proj": ("self_attn", "value"),
    "o_proj": ("self_attn", "output"),
    "gate_proj": ("mlp", "gate"),
    "up_proj": ("mlp", "up"),
    "down_proj": ("mlp", "down"),
}
_HF_NAME = {target: module for module, (_, target) in _MODULES.items()}

# What we write; also the first of the prefixes we read. Gemma 3 multimodal
# models nest the decoder under ``language_model``.
_KEY_PREFIX = "base_model.model.model.layers."
_KEY_PATTERN = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?(?:language_model\.)?(?:model\.)?"
    r"layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$"
)

# Config keys whose feature changes what the adapter computes; any truthy
# value is refused.
_UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "lora_bias": "LoRA bias terms",
    "layers_to_transform": "adapting only some layers",
    "layer_replication": "layer replication",
    "modules_to_save": "fully trained extra modules",
    "trainable_token_indices": "trainable token embeddings",
    "target_parameters": "LoRA on raw parameters",
    "rank_pattern": "per-layer ranks",
    "alpha_pattern": "per-layer alphas",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "use_qalora": "QA-LoRA",
    "use_bdlora": "block-diagonal LoRA",
}


def load_peft_adapter(backbone, folder):
    """Loads a peft LoRA adapter folder into ``backbone``.

    Enables LoRA (rank ``r``, the adapter's targets, an alpha giving peft's
    scaling) unless the backbone already has exactly those settings, then
    assigns the adapter weights. ``fan_in_fan_out`` is ignored: peft forces
    it off for ``nn.Linear``, so Gemma tensors have one layout either way.
    """
    folder = os.fspath(folder)
    config_path = os.path.join(folder, CONFIG_FILE)
    weights_path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{folder}: no {CONFIG_FILE}; not a peft adapter folder."
        )
    if not os.path.isfile(weights_path):
        hint = ""
        if os.path.isfile(os.path.join(folder, "adapter_model.bin")):
            hint = (" It has adapter_model.bin (a pickled torch file), which "
                    "keras_gemma does not read; re-save it with peft's "
                    "save_pretrained(..., safe_serialization=True).")
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_FILE}.{hint}")

    rank, alpha, targets = _read_config(config_path)
    tensors = _read_tensors(weights_path, targets)
    pairs = _check_against_model(backbone, tensors, targets, rank, weights_path)

    wanted = {"rank": rank, "alpha": alpha,
              "target": sorted(targets, key=list(lora.TARGETS).index)}
    current = backbone.lora_config
    if current is None:
        lora.enable_lora(backbone, rank, alpha=alpha, target=wanted["target"])
    elif (current["rank"] != rank or list(current["target"]) != wanted["target"]
          or not math.isclose(current["alpha"], alpha, rel_tol=1e-6)):
        raise ValueError(
            f"{folder}: the adapter needs LoRA {wanted}, but this backbone "
            f"already has LoRA {current} enabled. Load it into a fresh model, "
            "or call merge_lora() first."
        )
    for layer, a, b in pairs:
        layer.lora_kernel_a.assign(a)
        layer.lora_kernel_b.assign(b)


def save_peft_adapter(backbone, folder, base_model_name_or_path=None):
    """Writes the backbone's LoRA adapter as a peft adapter folder
    (``adapter_config.json`` + ``adapter_model.safetensors``, float32) that
    ``peft.PeftModel.from_pretrained`` loads onto a transformers Gemma
    ``*ForCausalLM`` of the same architecture. Other files in an existing
    folder are kept."""
    if backbone.lora_config is None:
        raise ValueError(
            "Cannot save a peft adapter: LoRA is not enabled on this "
            "backbone. Call backbone.enable_lora(rank) first."
        )
    settings = backbone.lora_config
    tensors = {}
    for index, target, layer in lora.target_layers(backbone, settings["target"]):
        module = _HF_NAME[target]
        stem = f"{_KEY_PREFIX}{index}.{_MODULES[module][0]}.{module}"
        a = ops.convert_to_numpy(layer.lora_kernel_a.value)
        b = ops.convert_to_numpy(layer.lora_kernel_b.value)
        tensors[stem + ".lora_A.weight"] = a.T  # (rank, in)
        tensors[stem + ".lora_B.weight"] = b.T  # (out, rank)
    alpha = settings["alpha"]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "r": settings["rank"],
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "target_modules": sorted(_HF_NAME[t] for t in settings["target"]),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
        "inference_mode": True,
    }

    folder = os.path.abspath(os.fspath(folder))
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(folder)}.")
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; it may become `folder`
        _write_safetensors(os.path.join(staging, WEIGHTS_FILE), tensors)
        with open(os.path.join(staging, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        if not os.path.exists(folder):
            try:
                os.rename(staging, folder)
                return
            except OSError:
                if not os.path.isdir(folder):  # created meanwhile: fall through
                    raise
        if not os.path.isdir(folder):
            raise NotADirectoryError(f"{folder} exists and is not a folder.")
        # Replace our two files in the existing folder, each atomically;
        # the weights first, so the config never describes missing tensors.
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)


# -- reading ---------------------------------------------------------------------


def _read_config(path):
    """(rank, our alpha, our target names) of a peft adapter_config.json."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a peft adapter config (not a JSON object).")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise ValueError(
            f"{path}: peft_type is {peft_type!r}; keras_gemma reads only LoRA "
            "adapters (peft_type 'LORA')."
        )
    bias = config.get("bias", "none")
    if bias != "none":
        raise ValueError(
            f"{path}: bias is {bias!r}; keras_gemma supports only LoRA "
            "adapters without trained biases (bias 'none')."
        )
    for key, feature in _UNSUPPORTED_OPTIONS.items():
        if config.get(key):
            raise ValueError(
                f"{path}: {key} = {config[key]!r}; keras_gemma does not "
                f"support {feature} in peft adapters."
            )

    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{path}: r must be an integer >= 1, got {rank!r}.")
    lora_alpha = config.get("lora_alpha", 8)  # peft's default
    if (isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float))
            or lora_alpha <= 0):
        raise ValueError(
            f"{path}: lora_alpha must be a positive number, got {lora_alpha!r}."
        )
    # Ours scales by alpha / rank; peft by lora_alpha / r, or with rsLoRA by
    # lora_alpha / sqrt(r).
    alpha = float(lora_alpha) * (math.sqrt(rank) if config.get("use_rslora") else 1.0)

    modules = config.get("target_modules")
    if isinstance(modules, str):
        if modules == "all-linear":
            # For a *ForCausalLM this means every projection (not lm_head).
            modules = list(_MODULES)
        else:
            raise ValueError(
                f"{path}: target_modules is the regular expression "
                f"{modules!r}; keras_gemma reads only a list of module names "
                f"(among {', '.join(_MODULES)})."
            )
    if not isinstance(modules, (list, tuple)) or not modules:
        raise ValueError(
            f"{path}: target_modules must be a non-empty list of module names, "
            f"got {modules!r}."
        )
    targets = set()
    for module in modules:
        # peft matches an entry against the end of a module's dotted name.
        short = str(module).rsplit(".", 1)[-1]
        if short not in _MODULES:
            raise ValueError(
                f"{path}: target module {module!r} is not one keras_gemma can "
                f"adapt (known: {', '.join(_MODULES)})."
            )
        targets.add(_MODULES[short][1])
    return rank, alpha, targets


def _read_tensors(path, targets):
    """{(layer index, target): {"A": (r, in), "B": (out, r)}} float32 arrays."""
    header, offset = read_safetensors_header(path)
    data = np.memmap(path, dtype="uint8", mode="r", offset=offset) if header else None
    tensors = {}
    for name, entry in header.items():
        match = _KEY_PATTERN.match(name)
        module = match and match.group(3)
        if not match or module not in _MODULES or match.group(2) != _MODULES[module][0]:
            raise ValueError(
                f"{path}: tensor '{name}' is not a LoRA factor of a Gemma "
                f"decoder projection ({', '.join(_MODULES)}); keras_gemma "
                "cannot load it."
            )
        target = _MODULES[module][1]
        if target not in targets:
            raise ValueError(
                f"{path}: tensor '{name}' adapts {module}, which "
                f"adapter_config.json does not list in target_modules."
            )
        key = (int(match.group(1)), target)
        factor = match.group(4)
        if factor in tensors.get(key, {}):
            raise ValueError(f"{path}: more than one lora_{factor} for '{name}'.")
        array = np.array(_to_array(data, entry, name, path), dtype="float32")
        tensors.setdefault(key, {})[factor] = (name, array)
    del data
    return tensors


def _lora_dims(layer):
    """(in, out) of a Dense layer's kernel, as Keras' enable_lora sees it."""
    kernel = layer._kernel if hasattr(layer, "_kernel") else layer.kernel
    in_dim, out_dim = kernel.shape[0], kernel.shape[-1]
    if getattr(layer, "is_int8", False):  # our int8 levels are (out, in)
        in_dim, out_dim = out_dim, in_dim
    if getattr(layer, "quantization_mode", None) == "int4" and hasattr(
        layer, "_orig_input_dim"
    ):
        in_dim = layer._orig_input_dim  # the int4 kernel is packed by 2
    return int(in_dim), int(out_dim)


def _check_against_model(backbone, tensors, targets, rank, path):
    """[(Dense layer, our A (in, r), our B (r, out))], after checking that the
    adapter covers every targeted projection with the model's shapes."""
    num_layers = len(backbone.decoder_blocks)
    extra = sorted({index for index, _ in tensors if index >= num_layers})
    if extra:
        raise ValueError(
            f"{path}: the adapter has tensors for layer {extra[0]}, but the "
            f"model has only {num_layers} layers; it was trained for a "
            "different model."
        )
    pairs = []
    order = sorted(targets, key=list(lora.TARGETS).index)
    for index, target, layer in lora.target_layers(backbone, order):
        module = _HF_NAME[target]
        found = tensors.get((index, target), {})
        for factor in "AB":
            if factor not in found:
                raise ValueError(
                    f"{path}: no lora_{factor} for layers.{index}."
                    f"{_MODULES[module][0]}.{module}, which adapter_config.json "
                    "lists in target_modules. keras_gemma loads only adapters "
                    "that cover every layer."
                )
        in_dim, out_dim = _lora_dims(layer)
        for factor, expected in (("A", (rank, in_dim)), ("B", (out_dim, rank))):
            name, array = found[factor]
            if tuple(array.shape) != expected:
                raise ValueError(
                    f"{path}: tensor '{name}' has shape {tuple(array.shape)}, "
                    f"but layer '{layer.path}' of this model with r={rank} "
                    f"needs {expected}. The adapter was trained for a "
                    "different model, or its r does not match its tensors."
                )
        pairs.append((layer, found["A"][1].T, found["B"][1].T))
    return pairs


# -- writing ---------------------------------------------------------------------


def _write_safetensors(path, tensors):
    """float32 tensors -> a safetensors file (keys sorted)."""
    write_safetensors(path, {name: np.asarray(tensors[name], dtype="float32")
                             for name in sorted(tensors)})
