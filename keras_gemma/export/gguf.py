"""A ``GemmaCausalLM`` out to one GGUF file that llama.cpp and ollama run.

``export_gguf(model, "model.gguf", quantization="q8_0")`` writes what
llama.cpp's own converter (``convert_hf_to_gguf.py``) writes for a Gemma
checkpoint: architecture ``gemma``, ``gemma2``, ``gemma3`` (or ``gemma4``,
below), its tensor
names, RMSNorm weights stored as ``1 + scale``, projections as (out, in),
the hyperparameter keys llama.cpp reads, the SentencePiece vocabulary as
``tokenizer.ggml.*`` and the family's chat template.

The tensor names and shapes come from the reader's table
(``keras_gemma.checkpoints.gguf.expected_tensors``), run backwards, and the
metadata is checked by handing it to the reader's own config parser before
any tensor is written: a setting the file cannot carry (say, a Gemma 3
model whose local layers are not every 5 of 6, which llama.cpp fixes for
that architecture) is refused instead of exported to a file that llama.cpp
would run differently.

Quantizations (``quantization=``):

| name   | matrices                  | when not given                        |
|--------|---------------------------|---------------------------------------|
| f32    | float32                   | float32 models                        |
| f16    | float16                   | float16 models                        |
| bf16   | bfloat16                  | bfloat16 models                       |
| q8_0   | Q8_0 (int8, 32-value blocks, float16 scale) | int8 models         |

As in llama.cpp's converter, 1-D tensors (every norm) stay float32, and a
matrix whose rows do not split into 32-value blocks falls back from Q8_0 to
float16. The default keeps the model's own precision, as the converter's
``--outtype auto`` keeps the checkpoint's. An int8 model
(``quantize("int8")``) is written to Q8_0 straight from its levels: our
layout is one scale per 32 consecutive inputs, exactly a Q8_0 block, so
only the scales change (rounded to float16); it cannot be written to the
float types.

Gemma 4 text models (per-layer head sizes and key/value heads,
proportional RoPE, keys as values, per-layer embeddings, layers sharing
keys and values, the expert mixture: the E2B, E4B, 26B-A4B and 31B
layouts) are written in llama.cpp's ``gemma4`` layout (``gguf_gemma4.py``,
whose tensor table is the reader's, ``checkpoints/gguf_gemma4.py``),
checked against llama.cpp itself and read back by keras_gemma's reader. Refused: RoPE scaling, layers sharing keys
and values in a way llama.cpp's fixed rule does not, and int8 experts;
export those with ``--format hf`` and run llama.cpp's
``convert_hf_to_gguf.py`` on the folder.
"""

import math
import os
from pathlib import Path

import numpy as np

from keras_gemma.checkpoints import gguf as gguf_reader
from keras_gemma.export import gguf_gemma4
from keras_gemma.export.files import check_destination, staged_file
from keras_gemma.export.chat_templates import chat_template_for
from keras_gemma.export.gguf_vocabulary import vocabulary_metadata

QUANTIZATIONS = ("f32", "f16", "bf16", "q8_0")
DESTINATION = "file"  # for keras-gemma export: refuse a folder path
_Q8_0_BLOCK = 32

# What llama.cpp's converter stores when the config does not say: Gemma 1
# and 2 were trained on 8,192 positions, Gemma 3 on 32,768 (270M, 1B) or
# 131,072 (4B and up, the sizes with linear RoPE scaling).
_CONTEXT_LENGTH = {"gemma": 8192, "gemma2": 8192}

def export_gguf(model, destination, quantization=None, overwrite=False, *, progress=True):
    """Writes ``model`` (a ``GemmaCausalLM``) to the GGUF file ``destination``.

    Args:
        model: a ``GemmaCausalLM`` of Gemma 1, 2, 3 or 4 (LoRA adapters are
            merged into the written weights; the model is not changed).
        destination: the ``.gguf`` file to write.
        quantization: ``"f32"``, ``"f16"``, ``"bf16"`` or ``"q8_0"``; by
            default the model's own precision (``q8_0`` for an int8 model).
        overwrite: replace an existing file.
        progress: show a progress bar over tensors (on a terminal).

    Returns the path written. The file appears only once it is complete.

    Example (needs the ``gguf`` package: ``pip install 'keras-gemma[export]'``):

        model = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
        export_gguf(model, "gemma3-270m-q8_0.gguf", quantization="q8_0")
        # llama-cli -m gemma3-270m-q8_0.gguf -p "The capital of France is"
    """
    gguf = _import_gguf()
    backbone = model.backbone
    config = backbone._config()
    architecture = gguf_architecture(config)
    int8 = bool(getattr(backbone, "is_quantized", False))
    quantization = _resolve_quantization(quantization, backbone, int8)
    if int8 and architecture == "gemma4" and config.get("num_experts"):
        raise ValueError(
            "GGUF export of an int8 expert mixture is not supported; export "
            "the float model (with quantization='q8_0' if wanted)."
        )
    if int8 and backbone.lora_config is not None:
        raise ValueError(
            "This int8 model has LoRA adapters, which cannot be merged into "
            "int8 weights. Load the float model, load_lora_weights() and "
            "merge_lora(), then export (with quantization='q8_0' if wanted)."
        )
    check_destination(destination, overwrite)
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "GGUF files carry the vocabulary, but this model has no "
            "preprocessor with a tokenizer. Build it with "
            "GemmaCausalLM(backbone, GemmaCausalLMPreprocessor(tokenizer))."
        )
    vocabulary = vocabulary_metadata(tokenizer.proto)
    pieces = len(vocabulary["tokenizer.ggml.tokens"])
    if pieces > config["vocabulary_size"]:
        raise ValueError(
            f"The tokenizer has {pieces} pieces but the model only "
            f"{config['vocabulary_size']} embeddings; a GGUF file needs one "
            "embedding row per piece."
        )
    # Embedding rows past the vocabulary (Gemma 3's 262,208 for 262,144
    # pieces) are dropped, as llama.cpp's converter drops them: no text
    # becomes those ids.
    config = {**config, "vocabulary_size": pieces}
    metadata = model_metadata(config, architecture, quantization, Path(destination).stem)
    metadata.update(vocabulary)
    metadata["tokenizer.chat_template"] = chat_template_for(tokenizer)
    if architecture == "gemma4":
        table = gguf_gemma4.expected_tensors(config)
        gguf_gemma4.check_reads_back(config, metadata, table)
    else:
        check_expressible(config, architecture, metadata)
        table = gguf_reader.expected_tensors(config)

    plan = _tensor_plan(table, quantization, gguf)
    weights = _weight_values(backbone)
    with staged_file(destination, overwrite=overwrite) as staging:
        writer = gguf.GGUFWriter(os.fspath(staging), architecture)
        try:
            for key, value in metadata.items():
                _add_metadata(writer, key, value)
            for name, _, shape, qtype in plan:
                writer.add_tensor_info(
                    name, shape, np.dtype(np.float32), _nbytes(shape, qtype, gguf),
                    raw_dtype=qtype,
                )
            writer.open_output_file()
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for name, (ours, conversion), shape, qtype in _progress(plan, progress, destination):
                if conversion == "rope_freqs":
                    data = gguf_gemma4.rope_freqs(config)
                else:
                    data = _tensor_bytes(weights, ours, conversion, shape, qtype, int8, gguf)
                writer.write_tensor_data(data)
                del data
            writer.close()
        except BaseException:
            writer.close()
            raise
    return str(Path(destination).resolve())


# -- architecture and metadata ---------------------------------------------


def gguf_architecture(config):
    """``gemma``, ``gemma2``, ``gemma3`` or ``gemma4`` for a backbone config,
    or a ``ValueError`` for a model GGUF export cannot write."""
    from keras_gemma.backbone import GEMMA4_CONFIG_DEFAULTS

    if config.get("use_bidirectional_attention"):
        raise ValueError(
            "This is an embedding model (bidirectional attention); GGUF "
            "export writes Gemma language models only."
        )
    if any(config.get(key, default) != default for key, default in GEMMA4_CONFIG_DEFAULTS.items()):
        gguf_gemma4.check_supported(config)
        if config.get("layer_types") is None or config.get("norm_scale_plus_one", True):
            raise ValueError(
                "GGUF cannot express this model: it mixes Gemma 4 switches with "
                "Gemma 1-3 ones (no `layer_types`, or norms of 1 + scale)."
            )
        return "gemma4"
    if config["use_query_key_norm"]:
        return "gemma3"
    if config["use_post_attention_norm"] or config["use_post_feedforward_norm"]:
        return "gemma2"
    return "gemma"


def model_metadata(config, architecture, quantization, name):
    """The ``general.*`` and ``{architecture}.*`` keys, as llama.cpp's
    converter writes them (Python values; see ``_add_metadata`` for types)."""
    gguf = _import_gguf()
    general = {
        "general.type": "model",
        "general.name": name,
        "general.file_type": int(_file_type(quantization, gguf)),
        "general.quantization_version": int(gguf.GGML_QUANT_VERSION),
    }
    if architecture == "gemma4":
        return {**general, **gguf_gemma4.metadata(config)}
    head_dim = config["head_dim"]
    prefix = architecture + "."
    context_length = _CONTEXT_LENGTH.get(architecture)
    if context_length is None:  # gemma3
        context_length = 131_072 if config["rope_scaling_factor"] != 1.0 else 32_768
    metadata = {
        **general,
        prefix + "context_length": context_length,
        prefix + "embedding_length": config["hidden_dim"],
        prefix + "block_count": config["num_layers"],
        prefix + "feed_forward_length": config["intermediate_dim"],
        prefix + "attention.head_count": config["num_query_heads"],
        prefix + "attention.head_count_kv": config["num_key_value_heads"],
        prefix + "attention.layer_norm_rms_epsilon": float(config["layer_norm_epsilon"]),
        prefix + "attention.key_length": head_dim,
        prefix + "attention.value_length": head_dim,
        prefix + "rope.freq_base": float(config["rope_max_wavelength"]),
    }
    if architecture == "gemma2":
        metadata[prefix + "attn_logit_softcapping"] = _float_or_none(config["attention_logit_soft_cap"])
        metadata[prefix + "final_logit_softcapping"] = _float_or_none(config["final_logit_soft_cap"])
        metadata[prefix + "attention.sliding_window"] = config["sliding_window_size"]
    if architecture == "gemma3":
        if config["final_logit_soft_cap"] is not None:
            metadata[prefix + "final_logit_softcapping"] = float(config["final_logit_soft_cap"])
        if config["sliding_window_size"] is not None:
            metadata[prefix + "attention.sliding_window"] = config["sliding_window_size"]
            metadata[prefix + "rope.freq_base_swa"] = float(
                config["local_rope_max_wavelength"] or config["rope_max_wavelength"]
            )
    if config["rope_scaling_factor"] != 1.0:
        metadata[prefix + "rope.scaling.type"] = "linear"
        metadata[prefix + "rope.scaling.factor"] = float(config["rope_scaling_factor"])
    # None marks a key the family needs but the model lacks; check_expressible
    # reports it.
    return {key: value for key, value in metadata.items() if value is not None}


def check_expressible(config, architecture, metadata):
    """Raises unless a reader of ``metadata`` builds ``config``'s model.

    The reader is ours (``_config_from_metadata``), which applies llama.cpp's
    fixed rules for each architecture: Gemma 2 alternates local and global
    layers, Gemma 3 has 5 local layers per global one with RoPE base 10,000,
    queries are scaled by ``head_dim`` (hidden / heads for the 27B models).
    """
    metadata = dict(metadata)
    read = gguf_reader._config_from_metadata(metadata, architecture, "<export>")
    ours, theirs = _semantics(config), _semantics(read)
    problems = [
        f"{key}: the model has {ours[key]!r}, a GGUF file of architecture "
        f"{architecture!r} gives {theirs[key]!r}"
        for key in ours if ours[key] != theirs.get(key)
    ]
    if architecture == "gemma3" and ours["local_rope_max_wavelength"] not in (None, 10_000.0):
        problems.append(
            f"local_rope_max_wavelength: the model has "
            f"{ours['local_rope_max_wavelength']!r}, llama.cpp's gemma3 fixes "
            "10000.0 (it ignores rope.freq_base_swa)"
        )
    if architecture == "gemma2" and config["rope_scaling_factor"] != 1.0:
        problems.append(
            "rope_scaling_factor: llama.cpp's gemma2 scales every layer's "
            "positions, the model only its global layers'"
        )
    if problems:
        raise ValueError(
            "GGUF cannot express this model exactly; llama.cpp would run a "
            "different network:\n  " + "\n  ".join(problems) + "\nOnly configs "
            "shaped like Google's Gemma 1, 2 and 3 checkpoints can be written "
            "to GGUF; use --format hf for this one."
        )


def _semantics(config):
    """The settings that decide the computation, defaults made explicit."""
    windowed = config.get("sliding_window_size") is not None
    values = {key: config.get(key) for key in (
        "vocabulary_size", "num_layers", "num_query_heads", "num_key_value_heads",
        "hidden_dim", "intermediate_dim", "head_dim", "attention_logit_soft_cap",
        "final_logit_soft_cap", "use_post_attention_norm",
        "use_post_feedforward_norm", "use_query_key_norm", "sliding_window_size",
        "rope_max_wavelength", "rope_scaling_factor",
    )}
    values["layer_norm_epsilon"] = float(np.float32(config["layer_norm_epsilon"]))
    values["query_pre_attn_scalar"] = float(config.get("query_pre_attn_scalar") or config["head_dim"])
    values["sliding_window_pattern"] = config.get("sliding_window_pattern") if windowed else None
    values["local_rope_max_wavelength"] = (
        float(config.get("local_rope_max_wavelength") or config["rope_max_wavelength"])
        if windowed else None
    )
    for key in ("attention_logit_soft_cap", "final_logit_soft_cap"):
        values[key] = _float_or_none(values[key])
    for key in ("rope_max_wavelength", "rope_scaling_factor"):
        values[key] = float(values[key])
    return values


def _add_metadata(writer, key, value):
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, (int, np.integer)):
        writer.add_uint32(key, int(value))
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, np.ndarray):  # float32 scores, int32 token types
        writer.add_array(key, value.tolist())
    else:
        writer.add_array(key, list(value))


# -- quantization -----------------------------------------------------------


def _resolve_quantization(quantization, backbone, int8):
    if quantization is None:
        if int8:
            return "q8_0"
        dtype = backbone.dtype_policy.variable_dtype
        return {"float16": "f16", "bfloat16": "bf16"}.get(dtype, "f32")
    name = str(quantization).lower()
    if name not in QUANTIZATIONS:
        raise ValueError(
            f"Unknown GGUF quantization {quantization!r}. Choose one of: "
            f"{', '.join(QUANTIZATIONS)}."
        )
    if int8 and name != "q8_0":
        raise ValueError(
            f"This model is quantized to int8 (one scale per 32 values), which "
            f"GGUF holds as q8_0 only, not {name}. Export with "
            "quantization='q8_0', or load the float model to export it as "
            f"{name}."
        )
    return name


def _file_type(quantization, gguf):
    types = gguf.LlamaFileType
    return {"f32": types.ALL_F32, "f16": types.MOSTLY_F16,
            "bf16": types.MOSTLY_BF16, "q8_0": types.MOSTLY_Q8_0}[quantization]


def _tensor_plan(table, quantization, gguf):
    """[(gguf name, (our path, conversion), numpy shape, GGML type)] for an
    ``expected_tensors`` table."""
    types = gguf.GGMLQuantizationType
    matrix_type = {"f32": types.F32, "f16": types.F16, "bf16": types.BF16,
                   "q8_0": types.Q8_0}[quantization]
    plan = []
    for name, (ours, shape, conversion) in table.items():
        qtype = matrix_type
        if len(shape) == 1 or ".ffn_gate_inp." in name:
            qtype = types.F32  # llama.cpp's converter keeps norms and routers float32.
        elif qtype == types.Q8_0 and shape[-1] % _Q8_0_BLOCK:
            qtype = types.F16  # ... and falls back to F16 for odd rows.
        plan.append((name, (ours, conversion), shape, qtype))
    return plan


def _nbytes(shape, qtype, gguf):
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block_size * type_size


def _weight_values(backbone):
    """{our path: backend tensor}, LoRA merged, converted to numpy only
    when written (``files.float_weights`` would hold a second copy of the
    whole model)."""
    from keras_gemma.lora import base_weights

    prefix = backbone.name + "/"
    return {
        path[len(prefix):] if path.startswith(prefix) else path: value
        for path, value in base_weights(backbone).items()
    }


def _tensor_bytes(weights, ours, conversion, shape, qtype, int8, gguf):
    """The array ``GGUFWriter.write_tensor_data`` writes for one tensor."""
    from keras import ops

    types = gguf.GGMLQuantizationType
    if int8 and conversion in ("kernel", "copy") and len(shape) == 2:
        # Embedding tables keep "<name>_int8" levels, projections "<name>".
        levels_path = ours + "_int8" if conversion == "copy" else ours
        scales_path = ours + "_scale"
        rows = shape[0]  # fewer than stored for a trimmed embedding
        levels = np.asarray(ops.convert_to_numpy(weights[levels_path]))[:rows]  # (out, in)
        scales = np.asarray(ops.convert_to_numpy(weights[scales_path]), np.float32)[:rows]
        if qtype == types.Q8_0:
            return q8_0_from_int8(levels, scales)
        # Rows that are not 32-value blocks: one scale per row; float16.
        values = levels.astype(np.float32) * np.repeat(scales, levels.shape[1] // scales.shape[1], axis=1)
        return values.astype(np.float16)
    values = np.asarray(ops.convert_to_numpy(weights[ours]))
    if conversion == "norm" or values.ndim < 2:
        values = values.astype(np.float32)
    if conversion == "kernel":
        values = values.T
    if conversion == "experts":  # (experts, in, out) -> (experts, out, in)
        values = np.swapaxes(values, 1, 2)
    if conversion == "copy" and values.ndim == 2:  # the embedding, trimmed to the vocabulary
        values = values[: shape[0]]
    if conversion == "scalar":  # Gemma 4's layer scalar, a 1-value tensor
        values = values.reshape(1).astype(np.float32)
    if conversion == "norm":
        values = values.astype(np.float32) + np.float32(1.0)
    if values.shape != tuple(shape):
        raise ValueError(
            f"`{ours}` has shape {values.shape}, but the config gives {tuple(shape)}."
        )
    return _quantize_rows(values, qtype, gguf)


def _quantize_rows(values, qtype, gguf):
    """``gguf.quants.quantize`` a block of rows at a time into one array,
    so the temporaries stay small next to a 262,144-row embedding."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(values, np.float32)
    columns = values.shape[-1]
    values = values.reshape(-1, columns)  # stacked experts: rows of all
    rows = values.shape[0]
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    row_bytes = columns // block_size * type_size
    result = np.empty((rows, row_bytes), np.uint8)
    step = max(1, (1 << 20) // columns)
    for begin in range(0, rows, step):
        chunk = np.ascontiguousarray(values[begin : begin + step], np.float32)
        result[begin : begin + step] = gguf.quants.quantize(chunk, qtype).view(np.uint8).reshape(len(chunk), row_bytes)
    return result


def q8_0_from_int8(levels, scales):
    """Q8_0 blocks (float16 scale, 32 int8 values) from our int8 layout:
    ``levels`` (rows, columns) int8 and ``scales`` (rows, columns / 32)."""
    rows, columns = levels.shape
    blocks = columns // _Q8_0_BLOCK
    if scales.shape != (rows, blocks):
        raise ValueError(
            f"int8 scales of shape {scales.shape} do not give one scale per "
            f"32 values of a {levels.shape} matrix."
        )
    result = np.empty((rows, blocks, 2 + _Q8_0_BLOCK), np.uint8)
    result[:, :, :2] = scales.astype(np.float16).reshape(rows, blocks, 1).view(np.uint8)
    result[:, :, 2:] = levels.reshape(rows, blocks, _Q8_0_BLOCK).view(np.uint8)
    return result.reshape(rows, -1)


# -- helpers ----------------------------------------------------------------


def _float_or_none(value):
    return None if value is None else float(value)


def _progress(items, enabled, destination):
    if not enabled:
        return items
    try:
        from rich.console import Console
        from rich.progress import track  # installed with Keras
    except ImportError:
        return items
    return track(items, description=f"Writing {Path(destination).name}",
                 transient=True, console=Console(stderr=True))


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError(
            "Exporting to GGUF needs the `gguf` package: "
            "`pip install 'keras-gemma[export]'` (or `pip install gguf`)."
        ) from None
    return gguf
