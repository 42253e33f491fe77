"""sentence-transformers folders (EmbeddingGemma's Hugging Face layout).

Beside a transformers model (``config.json``, ``model.safetensors``,
``tokenizer.model``) such a folder describes the rest of the pipeline:
``modules.json`` lists the modules in order (Transformer, Pooling, Dense...,
Normalize), each configured in its sub-folder (``1_Pooling/config.json``,
``2_Dense/config.json`` + ``model.safetensors`` with ``linear.weight``);
``config_sentence_transformers.json`` holds the task prompts and
``sentence_bert_config.json`` the longest sequence. Both the
sentence-transformers 5 and 6 spellings of these files are read.
"""

import json
import os

import numpy as np

from keras_gemma.checkpoints import huggingface

_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "linear",
    "torch.nn.modules.activation.Tanh": "tanh",
}
DEFAULT_SEQUENCE_LENGTH = 2048  # EmbeddingGemma's max_seq_length


def is_sentence_transformers_folder(folder):
    return os.path.isfile(os.path.join(folder, "modules.json"))


def _json(folder, name, required=True):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(
                f"{folder}: the sentence-transformers file {name} is missing."
            )
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from None


def read_pipeline(folder):
    """``GemmaTextEmbedder`` keyword arguments (all but the backbone and
    tokenizer) from a sentence-transformers folder, plus ``"dense_folders"``."""
    folder = str(folder)
    modules = _json(folder, "modules.json")
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if not kinds or kinds[0] != "Transformer" or modules[0].get("path", "") != "":
        raise ValueError(
            f"{folder}/modules.json: the first module must be the Transformer "
            f"in the folder itself; found {kinds[:1]}."
        )
    if len(kinds) < 2 or kinds[1] != "Pooling":
        raise ValueError(
            f"{folder}/modules.json: expected Pooling after the Transformer, "
            f"found {kinds}."
        )
    _check_pooling(folder, modules[1]["path"])
    dense_folders, dims, biases, activations = [], [], set(), set()
    normalize = False
    for module, kind in zip(modules[2:], kinds[2:]):
        if kind == "Dense" and not normalize:
            config = _json(os.path.join(folder, module["path"]), "config.json")
            activation = _ACTIVATIONS.get(config.get("activation_function"))
            if activation is None or config.get("use_residual"):
                raise ValueError(
                    f"{folder}/{module['path']}: a Dense layer with activation "
                    f"{config.get('activation_function')!r}"
                    f"{' and a residual' if config.get('use_residual') else ''} "
                    "is not supported (Identity or Tanh, no residual)."
                )
            dense_folders.append(os.path.join(folder, module["path"]))
            dims.append(int(config["out_features"]))
            biases.add(bool(config.get("bias", True)))
            activations.add(activation)
        elif kind == "Normalize" and not normalize:
            normalize = True
        else:
            raise ValueError(
                f"{folder}/modules.json: the module sequence {kinds} is not "
                "Transformer, Pooling, Dense..., [Normalize], which "
                "GemmaTextEmbedder runs."
            )
    if len(biases) > 1 or len(activations) > 1:
        raise ValueError(
            f"{folder}: Dense layers that differ in bias or activation are not "
            "supported."
        )
    st_config = _json(folder, "config_sentence_transformers.json", required=False) or {}
    pipeline = {
        "projection_dims": dims,
        "projection_use_bias": biases.pop() if biases else False,
        "projection_activation": activations.pop() if activations else "linear",
        "normalize": normalize,
        "sequence_length": _sequence_length(folder),
        "dense_folders": dense_folders,
    }
    if st_config.get("prompts"):
        pipeline["prompts"] = dict(st_config["prompts"])
    pipeline.update(_special_tokens(folder))
    return pipeline


def _check_pooling(folder, path):
    config = _json(os.path.join(folder, path), "config.json")
    # sentence-transformers 6 writes "pooling_mode": "mean"; 5 wrote flags.
    mode = config.get("pooling_mode")
    if mode is None:
        flags = [k for k, v in config.items() if k.startswith("pooling_mode_") and v]
        mode = "mean" if flags == ["pooling_mode_mean_tokens"] else flags
    if mode != "mean":
        raise ValueError(
            f"{folder}/{path}/config.json: pooling {mode!r} is not supported; "
            "GemmaTextEmbedder pools by the mean over tokens, as EmbeddingGemma."
        )
    if config.get("include_prompt", True) is not True:
        raise ValueError(
            f"{folder}/{path}/config.json: include_prompt=false is not "
            "supported (EmbeddingGemma pools over the prompt too)."
        )


def _sequence_length(folder):
    config = _json(folder, "sentence_bert_config.json", required=False) or {}
    if config.get("max_seq_length"):
        return int(config["max_seq_length"])
    tokenizer = _json(folder, "tokenizer_config.json", required=False) or {}
    length = tokenizer.get("model_max_length")
    if isinstance(length, int) and 0 < length < 10**9:
        return length
    return DEFAULT_SEQUENCE_LENGTH


def _special_tokens(folder):
    """Whether the tokenizer puts <bos>/<eos> around a text."""
    tokenizer = _json(folder, "tokenizer_config.json", required=False) or {}
    if "add_bos_token" in tokenizer or "add_eos_token" in tokenizer:
        return {"add_bos": bool(tokenizer.get("add_bos_token", True)),
                "add_eos": bool(tokenizer.get("add_eos_token", False))}
    # transformers 5 writes them as tokenizer.json's post-processor template.
    fast = _json(folder, "tokenizer.json", required=False) or {}
    template = (fast.get("post_processor") or {}).get("single")
    if isinstance(template, list):
        pieces = [
            item.get("SpecialToken", {}).get("id") if "SpecialToken" in item else "$"
            for item in template
        ]
        return {"add_bos": pieces[:1] == ["<bos>"], "add_eos": pieces[-1:] == ["<eos>"]}
    return {"add_bos": True, "add_eos": True}  # EmbeddingGemma's tokenizer


def read_projection_weights(dense_folders):
    """Yields (our path, float32 array) for each Dense layer's kernel and bias."""
    for i, dense in enumerate(dense_folders):
        path = os.path.join(dense, "model.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{dense}: model.safetensors is missing (older "
                "pytorch_model.bin files are not read; re-save the model "
                "with a recent sentence-transformers)."
            )
        header, offset = huggingface.read_safetensors_header(path)
        data = np.memmap(path, dtype="uint8", mode="r", offset=offset)
        names = {"linear.weight": "kernel", "linear.bias": "bias"}
        unexpected = sorted(set(header) - set(names))
        if unexpected:
            raise ValueError(f"{path}: unexpected tensors {unexpected}.")
        for name, entry in header.items():
            array = huggingface._to_array(data, entry, name, path)
            if name == "linear.weight":
                array = array.T  # torch Linear stores (out, in)
            yield f"projection_{i}/{names[name]}", np.array(array, dtype="float32")
        del data
