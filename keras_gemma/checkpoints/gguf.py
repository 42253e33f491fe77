"""Gemma checkpoints in llama.cpp's GGUF format.

``read_gguf(path)`` turns a ``.gguf`` file of architecture ``gemma``,
``gemma2``, ``gemma3`` or ``gemma4`` into a ``GemmaBackbone`` config, a
dict of numpy weights keyed by our variable paths, and a SentencePiece
model rebuilt from the vocabulary stored in the file's metadata. Gemma 4's
layout (per-layer head sizes, proportional RoPE, per-layer embeddings, KV
sharing, experts; norms stored as they multiply) and its vocabulary are
read by ``gguf_gemma4.py``; the tensor names every architecture shares are
in ``gguf_names.py``.

The file layout (GGUF version 2 and 3, little-endian) is parsed here, with
numpy over a memory map, so reading the header of a 262,144-token vocabulary
takes a fraction of a second. Dequantization is left to the ``gguf`` package
(``gguf.quants.dequantize``), which is needed only to read weights.

Conventions that differ from ours, all undone here:

* GGUF lists a tensor's dimensions fastest-first, so a numpy view of the
  data has shape ``(out, in)``; our ``Dense`` kernels are ``(in, out)``.
* llama.cpp's converter stores Gemma 1-3's RMSNorm weights as
  ``1 + scale``; our ``RMSNorm`` holds ``scale``.
* llama.cpp respells user-defined vocabulary pieces made of spaces with real
  spaces (``"  "`` for ``"▁▁"``) and marks Hugging Face's special tokens
  (``<start_of_turn>``...) CONTROL, which SentencePiece would never match in
  text. The rebuilt vocabulary restores ``"▁"`` and makes those tokens
  USER_DEFINED, except ``<bos>``, ``<eos>`` and ``<pad>`` (CONTROL) and
  ``<unk>`` (UNKNOWN), which SentencePiece needs with those types.

Unlike llama models, Gemma's query and key rows are stored unpermuted: both
llama.cpp and Gemma use the "rotate half" rotary layout.
"""

import dataclasses
import math
import mmap
import os
import struct

import numpy as np

from keras_gemma.checkpoints import gguf_gemma4
from keras_gemma.checkpoints import sentencepiece_proto as spm
from keras_gemma.checkpoints.gguf_names import (
    BLOCK_TENSORS,
    MISSING,
    metadata_value,
    vocabulary_size as gguf_vocabulary_size,
)

SUPPORTED_ARCHITECTURES = ("gemma", "gemma2", "gemma3", "gemma4")

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4
# Metadata arrays longer than this are left out of `GGUFCheckpoint.metadata`.
_MAX_METADATA_ARRAY = 64
# Dequantize at most this many elements at a time, to bound the temporary
# float32 copies the `gguf` package makes.
_CHUNK_ELEMENTS = 1 << 22

# GGUF metadata value types: id -> (name, numpy dtype or None).
_STRING, _ARRAY = 8, 9
_VALUE_TYPES = {
    0: ("UINT8", np.dtype("<u1")),
    1: ("INT8", np.dtype("<i1")),
    2: ("UINT16", np.dtype("<u2")),
    3: ("INT16", np.dtype("<i2")),
    4: ("UINT32", np.dtype("<u4")),
    5: ("INT32", np.dtype("<i4")),
    6: ("FLOAT32", np.dtype("<f4")),
    7: ("BOOL", np.dtype("<u1")),
    _STRING: ("STRING", None),
    _ARRAY: ("ARRAY", None),
    10: ("UINT64", np.dtype("<u8")),
    11: ("INT64", np.dtype("<i8")),
    12: ("FLOAT64", np.dtype("<f8")),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# GGML tensor types whose bytes the `gguf` package's numpy code reads
# without its dequantizers: name -> numpy dtype.
_PLAIN_TYPES = {"F32": np.float32, "F16": np.float16}


@dataclasses.dataclass
class GGUFCheckpoint:
    """What ``read_gguf`` found in a file.

    Attributes:
        config: ``GemmaBackbone`` keyword arguments.
        weights: our variable path (``decoder_block_0/attention/query/kernel``)
            -> numpy array, in the requested dtype and our layers' shapes.
            Empty when read with ``load_weights=False``.
        tokenizer_proto: serialized SentencePiece ``ModelProto`` rebuilt from
            the ``tokenizer.ggml.*`` metadata, or ``None`` if the file has no
            vocabulary.
        metadata: the file's metadata, except arrays of more than 64 values
            (the vocabulary): key -> ``int``, ``float``, ``bool``, ``str`` or
            ``list``.
        architecture: ``general.architecture``.
        path: the file read.
    """

    config: dict
    weights: dict
    tokenizer_proto: "bytes | None"
    metadata: dict
    architecture: str
    path: str


def read_gguf(path, dtype="float32", progress=True, load_weights=True):
    """Reads a Gemma GGUF checkpoint.

    Args:
        path: the ``.gguf`` file.
        dtype: numpy dtype of the returned weights: ``"float32"``,
            ``"float16"`` or ``"bfloat16"`` (needs ``ml_dtypes``, which JAX and
            TensorFlow install).
        progress: show a progress bar over tensors (rich, installed with Keras).
        load_weights: if ``False``, only the header is read (config,
            vocabulary, tensor shapes are all still checked) and ``weights`` is
            empty.

    Returns:
        A ``GGUFCheckpoint``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a complete GGUF file, its architecture is
            not Gemma, its tensors do not match its config, or a tensor has a
            type that cannot be dequantized.
    """
    path = os.fspath(path)
    out_dtype = _numpy_dtype(dtype)
    if not os.path.exists(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"Expected a GGUF file, got a directory: {path}")

    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise _invalid(path, "the file is empty")
        buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    header = None
    try:
        header = _parse_header(buffer, path)
        arrays = header.metadata
        architecture = arrays.get("general.architecture")
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"{path}: GGUF architecture {architecture!r} is not supported; "
                f"keras_gemma reads {', '.join(SUPPORTED_ARCHITECTURES)}."
            )
        config = _config(header, architecture, path, buffer)
        plan = _plan_tensors(header.tensors, config, path, buffer, architecture)
        tokenizer_proto = build_tokenizer_proto(arrays, path)
        weights = {}
        if load_weights:
            weights = dict(_iter_tensors(
                buffer, _progress(plan, progress, path), out_dtype, path
            ))
        metadata = {
            key: value
            for key, value in arrays.items()
            if not (isinstance(value, (list, np.ndarray)) and len(value) > _MAX_METADATA_ARRAY)
        }
        metadata = {
            key: value.tolist() if isinstance(value, np.ndarray) else value
            for key, value in metadata.items()
        }
    finally:
        del header
        try:
            buffer.close()
        except BufferError:  # An exception traceback still holds a view.
            pass
    return GGUFCheckpoint(
        config=config,
        weights=weights,
        tokenizer_proto=tokenizer_proto,
        metadata=metadata,
        architecture=architecture,
        path=path,
    )


def read_gguf_metadata(path):
    """The metadata (all of it, vocabulary included) and tensor list of a file.

    Returns ``(metadata, tensors)``: ``metadata`` maps keys to Python values
    (numeric arrays as numpy arrays, string arrays as lists) and ``tensors``
    is a list of ``(name, numpy_shape, ggml_type_id)``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            raise _invalid(path, "the file is empty")
        buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        header = _parse_header(buffer, path)
        return header.metadata, [
            (t.name, t.shape, t.ggml_type) for t in header.tensors
        ]
    finally:
        buffer.close()


# -- file layout -------------------------------------------------------------


@dataclasses.dataclass
class _TensorInfo:
    name: str
    shape: tuple  # numpy order: slowest-varying first.
    ggml_type: int
    start: int  # absolute byte offset
    nbytes: int


@dataclasses.dataclass
class _Header:
    version: int
    metadata: dict
    tensors: list


class _Cursor:
    """Reads little-endian values from a buffer, failing cleanly at its end."""

    def __init__(self, buffer, path):
        self.buffer = buffer
        self.path = path
        self.size = len(buffer)
        self.position = 0

    def need(self, count, what):
        if count < 0 or self.position + count > self.size:
            raise _invalid(
                self.path,
                f"{what} at byte {self.position} needs {count} bytes but the "
                f"file has {self.size} (truncated or corrupt)",
            )

    def u32(self, what):
        self.need(4, what)
        (value,) = _U32.unpack_from(self.buffer, self.position)
        self.position += 4
        return value

    def u64(self, what):
        self.need(8, what)
        (value,) = _U64.unpack_from(self.buffer, self.position)
        self.position += 8
        return value

    def string(self, what):
        length = self.u64(what)
        self.need(length, what)
        data = self.buffer[self.position : self.position + length]
        self.position += length
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid(self.path, f"{what} is not valid UTF-8") from None

    def value(self, value_type, what):
        if value_type == _STRING:
            return self.string(what)
        if value_type == _ARRAY:
            element_type = self.u32(what)
            count = self.u64(what)
            if element_type not in _VALUE_TYPES or element_type == _ARRAY:
                raise _invalid(
                    self.path, f"{what} is an array of unknown type {element_type}"
                )
            if element_type == _STRING:
                return self.strings(count, what)
            dtype = _VALUE_TYPES[element_type][1]
            self.need(count * dtype.itemsize, what)
            values = np.frombuffer(
                self.buffer, dtype=dtype, count=count, offset=self.position
            ).copy()
            self.position += count * dtype.itemsize
            return values.astype(bool) if element_type == 7 else values
        if value_type not in _VALUE_TYPES:
            raise _invalid(self.path, f"{what} has unknown value type {value_type}")
        dtype = _VALUE_TYPES[value_type][1]
        self.need(dtype.itemsize, what)
        value = np.frombuffer(
            self.buffer, dtype=dtype, count=1, offset=self.position
        )[0]
        self.position += dtype.itemsize
        if value_type == 7:
            return bool(value)
        if value_type == 6:
            # Shortest decimal that rounds to this float32: 1e-06, not
            # 9.999999974752427e-07.
            return float(str(value))
        return value.item()

    def strings(self, count, what):
        # Every string takes at least its 8-byte length.
        self.need(count * 8, what)
        buffer, position, size = self.buffer, self.position, self.size
        unpack = _U64.unpack_from
        values = []
        append = values.append
        try:
            for _ in range(count):
                (length,) = unpack(buffer, position)
                position += 8
                end = position + length
                if end > size:
                    raise IndexError
                append(buffer[position:end].decode("utf-8"))
                position = end
        except (IndexError, struct.error):
            self.position = position
            raise _invalid(
                self.path,
                f"{what} runs past the end of the file at byte {position} "
                f"(truncated or corrupt)",
            ) from None
        except UnicodeDecodeError:
            raise _invalid(self.path, f"{what} holds a string that is not UTF-8") from None
        self.position = position
        return values


def _parse_header(buffer, path):
    cursor = _Cursor(buffer, path)
    cursor.need(4, "the magic number")
    magic = bytes(buffer[0:4])
    if magic != _MAGIC:
        raise _invalid(
            path, f"it does not start with the GGUF magic bytes (found {magic!r})"
        )
    cursor.position = 4
    version = cursor.u32("the version")
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version > 0xFFFF else ""
        raise _invalid(
            path, f"GGUF version {version}{hint} is not supported (2 and 3 are)"
        )
    tensor_count = cursor.u64("the tensor count")
    kv_count = cursor.u64("the metadata count")
    # Every entry takes at least 8 bytes; this rejects garbage counts early.
    if (tensor_count + kv_count) * 8 > cursor.size:
        raise _invalid(
            path,
            f"the header announces {tensor_count} tensors and {kv_count} "
            f"metadata entries, more than a {cursor.size}-byte file can hold "
            f"(truncated or corrupt)",
        )

    metadata = {}
    for index in range(kv_count):
        key = cursor.string(f"metadata key #{index}")
        value_type = cursor.u32(f"the type of metadata {key!r}")
        metadata[key] = cursor.value(value_type, f"metadata {key!r}")

    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _invalid(path, f"general.alignment is {alignment!r}, not a power of two")

    infos = []
    for index in range(tensor_count):
        name = cursor.string(f"the name of tensor #{index}")
        what = f"the description of tensor {name!r}"
        n_dims = cursor.u32(what)
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _invalid(path, f"tensor {name!r} has {n_dims} dimensions")
        dims = [cursor.u64(what) for _ in range(n_dims)]
        ggml_type = cursor.u32(what)
        offset = cursor.u64(what)
        infos.append((name, tuple(reversed(dims)), ggml_type, offset))

    data_start = -(-cursor.position // alignment) * alignment
    tensors = []
    for name, shape, ggml_type, offset in infos:
        nbytes = _tensor_nbytes(name, shape, ggml_type, path)
        start = data_start + offset
        if nbytes is not None and start + nbytes > cursor.size:
            raise _invalid(
                path,
                f"the data of tensor {name!r} ends at byte {start + nbytes} but "
                f"the file has {cursor.size} bytes (truncated)",
            )
        tensors.append(_TensorInfo(name, shape, ggml_type, start, nbytes))
    return _Header(version, metadata, tensors)


def _tensor_nbytes(name, shape, ggml_type, path):
    """Byte size of a tensor, or None for a type this `gguf` does not know."""
    gguf = _import_gguf()
    try:
        qtype = gguf.GGMLQuantizationType(ggml_type)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        return None
    if shape[-1] % block_size:
        raise _invalid(
            path,
            f"tensor {name!r} of type {qtype.name} has rows of {shape[-1]} "
            f"values, not a multiple of its block size {block_size}",
        )
    return math.prod(shape) // block_size * type_size


def _invalid(path, detail):
    return ValueError(f"{path} is not a valid or complete GGUF file: {detail}.")


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError(
            "Reading GGUF checkpoints needs the `gguf` package: "
            "`pip install gguf`."
        ) from None
    return gguf


# -- config ------------------------------------------------------------------


def _config(header, architecture, path, buffer):
    """The backbone config of a parsed file (Gemma 4's needs its tensor list
    and the values of its small `rope_freqs` tensor)."""
    if architecture != gguf_gemma4.ARCHITECTURE:
        return _config_from_metadata(header.metadata, architecture, path)
    by_name = {info.name: info for info in header.tensors}
    rope_freqs = by_name.get("rope_freqs.weight")
    if rope_freqs is not None:
        _check_type(rope_freqs, _import_gguf(), path)
        ((_, rope_freqs),) = _iter_tensors(buffer, [(rope_freqs, "rope_freqs", "copy")], np.float32, path)
    return gguf_gemma4.config_from_metadata(header.metadata, set(by_name), rope_freqs, path)


def _config_from_metadata(metadata, architecture, path):
    def get(key, default=MISSING, kind=int):
        return metadata_value(metadata, f"{architecture}.{key}", path, default, kind)

    hidden_dim = get("embedding_length")
    num_query_heads = get("attention.head_count")
    num_layers = get("block_count")
    if min(hidden_dim, num_query_heads, num_layers) < 1:
        raise ValueError(
            f"{path}: GGUF metadata gives {num_layers} layers, hidden size "
            f"{hidden_dim} and {num_query_heads} heads; all must be positive."
        )
    head_dim = get("attention.key_length", hidden_dim // num_query_heads)
    value_dim = get("attention.value_length", head_dim)
    if value_dim != head_dim:
        raise ValueError(
            f"{path}: key length {head_dim} and value length {value_dim} "
            "differ; Gemma uses one head_dim for both."
        )
    vocabulary_size = gguf_vocabulary_size(metadata, architecture, path)

    # llama.cpp's rule (from gemma_pytorch): the 27B models scale queries by
    # hidden_dim / num_heads, every other size by head_dim.
    query_pre_attn_scalar = head_dim
    if (architecture, num_layers) in (("gemma2", 46), ("gemma3", 62)):
        query_pre_attn_scalar = hidden_dim // num_query_heads
    attention_scale = get("attention.scale", None, float)
    if attention_scale:  # A multiplier on queries: scalar ** -0.5.
        query_pre_attn_scalar = attention_scale**-2

    config = {
        "vocabulary_size": vocabulary_size,
        "num_layers": num_layers,
        "num_query_heads": num_query_heads,
        "num_key_value_heads": get("attention.head_count_kv", num_query_heads),
        "hidden_dim": hidden_dim,
        "intermediate_dim": get("feed_forward_length"),
        "head_dim": head_dim,
        "layer_norm_epsilon": get("attention.layer_norm_rms_epsilon", 1e-6, float),
        "query_pre_attn_scalar": query_pre_attn_scalar,
        "attention_logit_soft_cap": None,
        "final_logit_soft_cap": None,
        "use_post_attention_norm": architecture != "gemma",
        "use_post_feedforward_norm": architecture != "gemma",
        "use_query_key_norm": architecture == "gemma3",
        "sliding_window_size": None,
        "sliding_window_pattern": None,
        "rope_max_wavelength": get("rope.freq_base", 10_000.0, float),
        "rope_scaling_factor": 1.0,
        "local_rope_max_wavelength": None,
    }
    if architecture == "gemma2":
        # llama.cpp's defaults when the keys are absent.
        config["attention_logit_soft_cap"] = get("attn_logit_softcapping", 50.0, float)
        config["final_logit_soft_cap"] = get("final_logit_softcapping", 30.0, float)
        config["sliding_window_size"] = get("attention.sliding_window", 4096)
        config["sliding_window_pattern"] = 2
    elif architecture == "gemma3":
        window = get("attention.sliding_window", 0)
        if window > 0:
            config["sliding_window_size"] = window
            config["sliding_window_pattern"] = 6
            config["local_rope_max_wavelength"] = get(
                "rope.freq_base_swa", 10_000.0, float
            )
    pattern = metadata.get(f"{architecture}.attention.sliding_window_pattern")
    if pattern is not None and config["sliding_window_size"] is not None:
        config["sliding_window_pattern"] = _window_pattern(
            pattern, num_layers, architecture, path
        )

    scaling_type = get("rope.scaling.type", None, str)
    scaling_factor = get("rope.scaling.factor", None, float)
    if scaling_type not in (None, "none", "linear"):
        raise ValueError(
            f"{path}: RoPE scaling {scaling_type!r} is not supported "
            "(only linear)."
        )
    if scaling_type != "none" and scaling_factor:
        config["rope_scaling_factor"] = scaling_factor
    return config


def _window_pattern(pattern, num_layers, architecture, path):
    """Our `sliding_window_pattern` from the metadata's (period or per-layer)."""
    if isinstance(pattern, (list, np.ndarray)):
        local = [bool(x) for x in np.asarray(pattern).tolist()]
        for period in range(1, num_layers + 1):
            if local == [(i + 1) % period != 0 for i in range(num_layers)]:
                return period
        if all(local):
            return None
        raise ValueError(
            f"{path}: `{architecture}.attention.sliding_window_pattern` "
            f"{local} is not 'every N-th layer global', which keras_gemma "
            "needs."
        )
    return int(pattern)


# -- tensors -----------------------------------------------------------------

def expected_tensors(config):
    """GGUF tensor name -> (our path, numpy shape in the file, conversion)."""
    hidden = config["hidden_dim"]
    head_dim = config["head_dim"]
    queries = config["num_query_heads"] * head_dim
    keys = config["num_key_value_heads"] * head_dim
    ff = config["intermediate_dim"]
    # Shapes as numpy sees the file: (out, in) for projections.
    block_shapes = {
        "attn_norm": (hidden,),
        "attn_q": (queries, hidden),
        "attn_k": (keys, hidden),
        "attn_v": (keys, hidden),
        "attn_output": (hidden, queries),
        "ffn_norm": (hidden,),
        "ffn_gate": (ff, hidden),
        "ffn_up": (ff, hidden),
        "ffn_down": (hidden, ff),
    }
    if config["use_query_key_norm"]:
        block_shapes["attn_q_norm"] = (head_dim,)
        block_shapes["attn_k_norm"] = (head_dim,)
    if config["use_post_attention_norm"]:
        block_shapes["post_attention_norm"] = (hidden,)
    if config["use_post_feedforward_norm"]:
        block_shapes["post_ffw_norm"] = (hidden,)

    expected = {
        "token_embd.weight": (
            "token_embedding/embeddings",
            (config["vocabulary_size"], hidden),
            "copy",
        ),
        "output_norm.weight": ("final_norm/scale", (hidden,), "norm"),
    }
    for i in range(config["num_layers"]):
        for name, shape in block_shapes.items():
            ours, conversion = BLOCK_TENSORS[name]
            expected[f"blk.{i}.{name}.weight"] = (
                f"decoder_block_{i}/{ours}",
                shape,
                conversion,
            )
    return expected


def _plan_tensors(tensors, config, path, buffer, architecture):
    """Checks names, shapes and types; returns [(info, our path, conversion)]
    for the tensors to load."""
    gguf = _import_gguf()
    by_name = {}
    for info in tensors:
        if info.name in by_name:
            raise _invalid(path, f"tensor {info.name!r} appears twice")
        by_name[info.name] = info
    if architecture == gguf_gemma4.ARCHITECTURE:
        expected, ignored = gguf_gemma4.reading_table(config, set(by_name))
        for name in ignored:
            by_name.pop(name, None)
    else:
        expected = expected_tensors(config)

    # A separate output projection is allowed only as a copy of the
    # embedding (our model ties them).
    output = by_name.pop("output.weight", None)
    if output is not None:
        embedding = by_name.get("token_embd.weight")
        if (
            embedding is None
            or output.shape != embedding.shape
            or output.ggml_type != embedding.ggml_type
            or output.nbytes is None
            or not _same_bytes(buffer, output, embedding)
        ):
            raise ValueError(
                f"{path}: the file has an output projection `output.weight` "
                "that differs from the token embedding; Gemma ties them and "
                "keras_gemma has no separate output layer."
            )

    missing = [name for name in expected if name not in by_name]
    if missing:
        name = missing[0]
        raise ValueError(
            f"{path}: tensor {name!r} (for `{expected[name][0] or name}`, shape "
            f"{expected[name][1]}) is missing"
            + (f", and {len(missing) - 1} more" if len(missing) > 1 else "")
            + f". Missing: {missing[:8]}{' ...' if len(missing) > 8 else ''}."
        )
    unknown = [name for name in by_name if name not in expected]
    if unknown:
        raise ValueError(
            f"{path}: unexpected tensor(s) for a {config['num_layers']}-layer "
            f"model: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}."
        )

    plan = []
    for name, (ours, shape, conversion) in expected.items():
        info = by_name[name]
        if info.shape != shape:
            raise ValueError(
                f"{path}: tensor {name!r} (for `{ours}`) has shape "
                f"{info.shape} (numpy order) but the config expects {shape}."
            )
        _check_type(info, gguf, path)
        if ours is not None:  # rope_freqs: read into the config
            plan.append((info, ours, conversion))
    return plan


def _same_bytes(buffer, a, b):
    return buffer[a.start : a.start + a.nbytes] == buffer[b.start : b.start + b.nbytes]


def _check_type(info, gguf, path):
    try:
        qtype = gguf.GGMLQuantizationType(info.ggml_type)
    except ValueError:
        raise ValueError(
            f"{path}: tensor {info.name!r} has GGML type {info.ggml_type}, "
            "which the installed `gguf` package does not know; try upgrading it."
        ) from None
    traits = getattr(gguf.quants, "_type_traits", None)
    supported = qtype.name in _PLAIN_TYPES or (
        traits is None or qtype in traits
    )
    if not supported or info.nbytes is None:
        raise ValueError(
            f"{path}: tensor {info.name!r} has type {qtype.name}, which "
            "cannot be dequantized (the `gguf` package has no numpy "
            "dequantizer for it)."
        )


def _iter_tensors(buffer, plan, dtype, path):
    """Yields (our path, array) for ``plan``, dequantizing one tensor at a time.

    Each tensor is dequantized in row chunks straight into its final array,
    so the only memory beyond that array is one chunk.
    """
    gguf = _import_gguf()
    for info, ours, conversion in plan:
        qtype = gguf.GGMLQuantizationType(info.ggml_type)
        raw = np.frombuffer(buffer, dtype=np.uint8, count=info.nbytes, offset=info.start)
        rows = math.prod(info.shape[:-1])
        columns = info.shape[-1]
        raw = raw.reshape(rows, -1)
        row_bytes = raw.shape[1]
        if conversion == "kernel":
            result = np.empty((columns, rows), dtype=dtype)
        else:
            result = np.empty((rows, columns), dtype=dtype)
        step = max(1, _CHUNK_ELEMENTS // columns)
        for begin in range(0, rows, step):
            end = min(rows, begin + step)
            try:
                values = gguf.quants.dequantize(raw[begin:end], qtype)
            except NotImplementedError as error:
                raise ValueError(
                    f"{path}: tensor {info.name!r} has type {qtype.name}, "
                    f"which cannot be dequantized ({error})."
                ) from None
            values = values.reshape(end - begin, columns)
            if conversion == "kernel":
                result[:, begin:end] = values.T
            elif conversion == "norm":
                result[begin:end] = values.astype(np.float32) - 1.0
            else:
                result[begin:end] = values
            del values
            _release_pages(buffer, info.start + begin * row_bytes, (end - begin) * row_bytes)
        del raw  # a view of the mmap, which must be closable
        if conversion == "kernel":
            yield ours, result.reshape(columns, rows)
        else:
            yield from _finish(ours, result.reshape(info.shape), conversion)


def _finish(ours, values, conversion):
    """(our path, array) pairs for a tensor read in the file's layout."""
    if conversion == "scalar":  # Gemma 4's layer scalar, a 1-value tensor
        yield ours, values.reshape(())
    elif conversion == "experts":  # (experts, out, in) -> (experts, in, out)
        yield ours, np.ascontiguousarray(np.swapaxes(values, 1, 2))
    elif conversion == "experts_gate_up":  # stacked: gate rows, then up rows
        block = ours.rsplit("/", 1)[0]
        for name, half in zip(("gate", "up"), np.split(values, 2, axis=1)):
            yield f"{block}/{name}/kernel", np.ascontiguousarray(np.swapaxes(half, 1, 2))
    else:
        yield ours, values


def _release_pages(buffer, offset, length):
    """Drops file pages already read from the process's memory.

    They are clean pages of a read-only mapping (the OS re-reads them if
    needed), but until dropped they count in the process's memory: a
    quarter of a GB more at the peak of loading the 270M model.
    """
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None or not hasattr(buffer, "madvise"):
        return
    start = offset - offset % mmap.PAGESIZE
    try:
        buffer.madvise(advice, start, offset + length - start)
    except (OSError, ValueError):
        pass  # only an optimisation


def iter_gguf_weights(path, dtype="float32"):
    """Yields ``(our variable path, numpy array)`` from a GGUF file, one at a time.

    The streaming counterpart of ``read_gguf(...).weights``: loading a model
    this way never holds more than one dequantized tensor beyond the model.
    The file is checked as ``read_gguf`` checks it.
    """
    path = os.fspath(path)
    out_dtype = _numpy_dtype(dtype)
    with open(path, "rb") as file:
        buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        header = _parse_header(buffer, path)
        architecture = header.metadata.get("general.architecture")
        config = _config(header, architecture, path, buffer)
        plan = _plan_tensors(header.tensors, config, path, buffer, architecture)
        del header
        yield from _iter_tensors(buffer, plan, out_dtype, path)
    finally:
        try:
            buffer.close()
        except BufferError:  # An exception traceback still holds a view.
            pass


def _progress(items, enabled, path):
    if not enabled:
        return items
    try:
        from rich.progress import track  # installed with Keras
    except ImportError:
        return items
    items = list(items)
    from rich.console import Console

    return track(items, description=f"Reading {os.path.basename(path)}",
                 transient=True, console=Console(stderr=True))


def _numpy_dtype(dtype):
    requested = dtype
    policy_dtype = getattr(dtype, "variable_dtype", None)  # a Keras DTypePolicy
    if policy_dtype is not None:
        dtype = policy_dtype
    if isinstance(dtype, str) and dtype.startswith("mixed_"):
        dtype = "float32"  # Variables of mixed policies are float32.
    if dtype == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise ValueError("dtype='bfloat16' needs the `ml_dtypes` package.") from None
        dtype = ml_dtypes.bfloat16
    try:
        result = np.dtype(dtype)
    except TypeError:
        result = None
    floating = result is not None and (
        (result.kind == "f" and result.itemsize <= 8) or result.name == "bfloat16"
    )
    if not floating:
        raise ValueError(
            "`dtype` must be a floating point dtype such as 'float32', "
            f"'float16' or 'bfloat16', got {requested!r}."
        )
    return result


# -- vocabulary --------------------------------------------------------------

# llama.cpp's token types are SentencePiece's, plus 0 for "undefined".
_LLAMA_CPP_UNDEFINED = 0


def build_tokenizer_proto(metadata, path="<gguf>"):
    """A serialized SentencePiece model from ``tokenizer.ggml.*`` metadata.

    Returns ``None`` if the metadata has no vocabulary. SentencePiece
    vocabularies (``tokenizer.ggml.model == "llama"``: Gemma 1-3, and our
    Gemma 4 exports) and llama.cpp's ``"gemma4"`` vocabularies (pieces and
    merges of Gemma 4's ``tokenizer.json``) can be rebuilt; Gemma's is a BPE
    model with byte fallback and no normalization.
    """
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        return None
    model = metadata.get("tokenizer.ggml.model", "llama")
    if model == gguf_gemma4.ARCHITECTURE:
        return gguf_gemma4.tokenizer_proto(metadata, path)
    if model != "llama":
        raise ValueError(
            f"{path}: tokenizer model {model!r} is neither a SentencePiece "
            "vocabulary ('llama') nor Gemma 4's ('gemma4'); keras_gemma "
            "cannot rebuild it."
        )
    count = len(tokens)
    scores = metadata.get("tokenizer.ggml.scores")
    types = metadata.get("tokenizer.ggml.token_type")
    scores = np.zeros(count, np.float32) if scores is None else np.asarray(scores)
    if types is None:
        types = np.full(count, spm.NORMAL, np.int32)
    types = np.asarray(types)
    if len(scores) != count or len(types) != count:
        raise ValueError(
            f"{path}: the vocabulary has {count} tokens but "
            f"{len(scores)} scores and {len(types)} token types."
        )

    def special_id(key, piece):
        value = metadata.get(f"tokenizer.ggml.{key}")
        if value is None:
            try:
                value = tokens.index(piece)
            except ValueError:
                return -1
        if not 0 <= value < count:
            raise ValueError(
                f"{path}: tokenizer.ggml.{key} is {value}, outside the "
                f"{count}-token vocabulary."
            )
        return int(value)

    unk_id = special_id("unknown_token_id", "<unk>")
    bos_id = special_id("bos_token_id", "<bos>")
    eos_id = special_id("eos_token_id", "<eos>")
    pad_id = special_id("padding_token_id", "<pad>")
    if unk_id < 0:
        raise ValueError(f"{path}: the vocabulary has no unknown token.")
    control_ids = {bos_id, eos_id, pad_id} - {-1}

    pieces = []
    seen = {}
    for index, (token, token_type) in enumerate(zip(tokens, types.tolist())):
        if index == unk_id:
            piece_type = spm.UNKNOWN
        elif index in control_ids:
            piece_type = spm.CONTROL
        elif token_type in (spm.CONTROL, spm.USER_DEFINED, spm.UNKNOWN):
            # Matched whole in text, as Hugging Face and llama.cpp do.
            piece_type = spm.USER_DEFINED
        elif token_type in (spm.UNUSED, spm.BYTE):
            piece_type = token_type
        else:  # NORMAL, or llama.cpp's UNDEFINED
            piece_type = spm.NORMAL
        if piece_type == spm.USER_DEFINED:
            # SentencePiece matches user-defined pieces after replacing
            # spaces with "▁"; llama.cpp stored them with real spaces.
            token = token.replace(" ", "\u2581")
        if not token:
            raise ValueError(f"{path}: vocabulary token {index} is empty.")
        if token in seen:
            raise ValueError(
                f"{path}: vocabulary tokens {seen[token]} and {index} are both "
                f"{token!r}; SentencePiece needs distinct pieces."
            )
        seen[token] = index
        pieces.append((token, float(scores[index]), piece_type))

    has_bytes = bool(np.any(types == spm.BYTE))
    trainer_spec = {
        # GGUF does not say; Gemma's vocabularies are BPE (scores are merge
        # ranks), and so is every "llama" vocabulary of a Gemma architecture.
        "model_type": spm.BPE,
        "vocab_size": count,
        "split_digits": True,
        "byte_fallback": has_bytes,
        "allow_whitespace_only_pieces": True,
        "unk_id": unk_id,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "pad_id": pad_id,
        "unk_piece": pieces[unk_id][0],
    }
    for name, index in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id)):
        if index >= 0:
            trainer_spec[f"{name}_piece"] = pieces[index][0]
    normalizer_spec = {
        "name": "identity",
        "precompiled_charsmap": b"",
        "add_dummy_prefix": bool(metadata.get("tokenizer.ggml.add_space_prefix", False)),
        "remove_extra_whitespaces": bool(
            metadata.get("tokenizer.ggml.remove_extra_whitespaces", False)
        ),
        "escape_whitespaces": True,
    }
    return spm.model_proto(pieces, trainer_spec, normalizer_spec)
