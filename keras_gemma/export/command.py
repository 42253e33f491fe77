"""``keras-gemma export``: a preset out to a deployment format.

``keras_gemma/cli.py`` declares the arguments and calls ``run``. Everything
that can be refused without the model is refused before it loads (seconds
to minutes): the format, its quantization names, the destination, the
format module and its packages.

Contract with the format modules (``FORMATS`` in ``export/__init__.py``):
each exports ``function(model, destination, quantization=None,
overwrite=False)``; optionally

- ``QUANTIZATIONS``: the names its ``quantization`` takes (others are
  refused before loading),
- ``DESTINATION = "file"``: the destination is a file path, not a folder,
- ``REQUIRED_BACKEND``: a Keras backend it needs (e.g. ``"tensorflow"``);
  under another backend the command re-runs itself in a subprocess with
  ``KERAS_BACKEND`` set to it,
- a ``progress`` parameter, given a progress-bar wrapper
  ``progress(iterable, total, description)``,
- an ``adapter_only`` parameter (only ``hf`` has one).
"""

import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

from keras_gemma.export import FORMATS

EXAMPLES = (
    "examples:\n"
    "  keras-gemma export --format hf gemma3_instruct_270m ~/exports/gemma3_270m_hf\n"
    "  keras-gemma export --format hf gemma3_270m my_model_hf --adapter "
    "my_adapter/adapter.lora.h5\n"
    "  keras-gemma export --format hf gemma3_270m my_adapter_peft --adapter "
    "my_adapter/adapter.lora.h5 --adapter-only\n"
    "  keras-gemma export --format gguf ~/models/gemma-3-270m gemma3_270m.q8_0.gguf "
    "--quantization q8_0\n"
    "  keras-gemma export --format saved_model gemma3_270m ~/exports/gemma3_270m_tf\n"
    "  keras-gemma export --format torch_export gemma3_270m gemma3_270m.pt2 "
    "--backend torch"
)


class ExportError(Exception):
    """A refusal explained in one line (the CLI prints it without a traceback)."""


def format_module(format_name):
    """The module of ``format_name``, imported, or an ``ExportError`` saying
    why it cannot be (unknown format, module missing, a package missing)."""
    if format_name not in FORMATS:
        raise ExportError(
            f"--format {format_name}: unknown export format; choose one of "
            f"{', '.join(FORMATS)}."
        )
    module_name, function_name = FORMATS[format_name]
    if importlib.util.find_spec(module_name) is None:
        raise ExportError(
            f"--format {format_name} is not available in this keras_gemma "
            f"installation ({module_name} is missing); update keras_gemma."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ExportError(
            f"--format {format_name} needs a package that is not installed "
            f"({error}); pip install 'keras-gemma[export]'."
        ) from None
    if not hasattr(module, function_name):
        raise ExportError(f"{module_name} has no {function_name}(); update keras_gemma.")
    return module


def check_request(args, module):
    """Refusals that need neither Keras nor the model."""
    quantizations = getattr(module, "QUANTIZATIONS", None)
    if args.quantization is not None and quantizations is not None and (
            args.quantization not in quantizations):
        raise ExportError(
            f"--quantization {args.quantization}: --format {args.format} takes "
            f"{', '.join(quantizations)}."
        )
    function = getattr(module, FORMATS[args.format][1])
    if args.adapter_only:
        if "adapter_only" not in inspect.signature(function).parameters:
            raise ExportError(
                f"--adapter-only writes a peft adapter, which only --format hf "
                f"does; --format {args.format} writes the whole (merged) model."
            )
        if not args.adapter:
            raise ExportError("--adapter-only needs --adapter FILE (the LoRA adapter to write).")
    destination = Path(os.path.expanduser(args.destination))
    if getattr(module, "DESTINATION", "directory") == "file" and destination.is_dir():
        raise ExportError(
            f"{destination} is a directory; --format {args.format} writes one "
            "file: give its path (e.g. model.gguf)."
        )
    return _check_destination(args)


def _check_destination(args):
    from keras_gemma.export import files

    destination = Path(os.path.expanduser(args.destination))
    try:
        files.check_destination(destination, args.overwrite)
    except FileExistsError as error:
        raise ExportError(str(error)) from None
    return destination


def run(args, load_model, notice=print):
    """Exports ``args.source`` (anything ``from_preset`` reads) to
    ``args.destination``; ``load_model(args)`` builds the model from
    ``args.preset``."""
    if args.format not in FORMATS:
        format_module(args.format)  # raises, naming the formats
    _check_destination(args)  # before the format module imports Keras
    module = format_module(args.format)
    destination = check_request(args, module)
    required = getattr(module, "REQUIRED_BACKEND", None)
    current = os.environ.get("KERAS_BACKEND")
    if required and required != current:
        notice(f"--format {args.format} needs the {required} backend; running "
               f"the export with KERAS_BACKEND={required}")
        return _rerun_with_backend(args, required)

    start = time.perf_counter()
    model = load_model(args)
    function = getattr(module, FORMATS[args.format][1])
    parameters = inspect.signature(function).parameters
    kwargs = {"quantization": args.quantization, "overwrite": args.overwrite}
    if "progress" in parameters:
        from keras_gemma.preset_io import _progress

        kwargs["progress"] = _progress
    if args.adapter_only:
        kwargs["adapter_only"] = True
    written = function(model, str(destination), **kwargs)
    notice(f"wrote {written} ({args.format}, {_size(Path(written))}) in "
           f"{time.perf_counter() - start:.1f} s")
    return 0


def command_line(args, backend):
    """The ``keras-gemma export`` arguments that repeat ``args`` under ``backend``."""
    argv = ["export", "--format", args.format, args.source, args.destination,
            "--backend", backend]
    for option in ("quantization", "adapter", "dtype"):
        value = getattr(args, option, None)
        if value is not None:
            argv += [f"--{option}", value]
    for flag in ("overwrite", "adapter_only"):
        if getattr(args, flag, False):
            argv.append("--" + flag.replace("_", "-"))
    return argv


def _rerun_with_backend(args, backend):
    environment = {**os.environ, "KERAS_BACKEND": backend}
    child = subprocess.run(
        [sys.executable, "-m", "keras_gemma", *command_line(args, backend)],
        env=environment, check=False)
    return child.returncode


def _size(path):
    if path.is_dir():
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    else:
        total = path.stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if total < 1000 or unit == "GB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1000
