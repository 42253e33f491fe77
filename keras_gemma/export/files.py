"""Atomic writing and the weights every exporter starts from."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def check_destination(destination, overwrite):
    """Refuses an existing non-empty directory or an existing file unless
    ``overwrite``; called before any slow work."""
    target = Path(destination)
    if not target.exists() or overwrite:
        return target
    if target.is_dir() and not any(target.iterdir()):
        return target
    raise FileExistsError(
        f"{target} already exists and is not empty. Choose a new path or pass "
        "overwrite=True (--overwrite on the command line) to replace it."
    )


@contextlib.contextmanager
def staged_directory(destination, overwrite=False):
    """Yields a temporary directory beside ``destination`` that replaces it
    only when the block finishes without error; on error it is removed."""
    target = check_destination(destination, overwrite).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # mkdtemp makes it private; it becomes the user's folder.
        os.chmod(staging, 0o777 & ~_umask())
        yield staging
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
            os.replace(staging, target)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_file(destination, overwrite=False):
    """Yields a temporary file path beside ``destination``, renamed onto it
    only when the block finishes without error; on error it is removed."""
    target = check_destination(destination, overwrite).resolve()
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; give a file path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes it private
        yield Path(staging)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_int8(backbone, format_name, alternative):
    if getattr(backbone, "is_quantized", False):
        raise ValueError(
            f"This model is quantized to int8, which {format_name} cannot hold. "
            f"{alternative}"
        )


def float_weights(backbone):
    """{our variable path: numpy array} with any LoRA adapter merged into its
    kernel (the model is not changed) and the adapter variables left out.

    Paths are the backbone's own, e.g.
    ``decoder_block_0/attention/query/kernel`` (the backbone name prefix
    removed), the names every checkpoint mapping in ``checkpoints/`` uses.
    """
    from keras import ops  # here, so checking a destination needs no Keras

    from keras_gemma.lora import base_weights

    prefix = backbone.name + "/"
    weights = {}
    for path, value in base_weights(backbone).items():
        name = path[len(prefix):] if path.startswith(prefix) else path
        weights[name] = np.asarray(ops.convert_to_numpy(value))
    return weights


def write_json(path, data):
    """``data`` as indented UTF-8 JSON (non-ASCII kept), newline-terminated."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
