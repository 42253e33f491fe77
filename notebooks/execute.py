"""Runs the notebooks top to bottom with nbclient and saves their outputs.

    .venv/bin/python notebooks/execute.py                 # all notebooks, in place
    .venv/bin/python notebooks/execute.py quickstart.ipynb

This refreshes the outputs committed with the notebooks. The kernel is the
ipykernel of the interpreter running this script (not whatever kernel named
"python3" the machine may have registered), started in the notebooks'
folder. ``tests/test_notebooks.py`` uses ``execute`` on temporary copies.
"""

import os
import pathlib
import sys
import time

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent
# The test runs them in this order. Under `pytest -n 2`, pytest-xdist deals
# three tests out round robin (first and third to one worker, second to the
# other): LoRA and the backends on one, the quickstart on the other, which
# keeps both workers busy for about as long.
NOTEBOOKS = ("lora_finetuning.ipynb", "quickstart.ipynb", "switching_backends.ipynb")
CELL_TIMEOUT = 600  # seconds, per cell


def all_notebooks():
    """``NOTEBOOKS``, then any other notebook in this folder, by name."""
    others = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb") if p.name not in NOTEBOOKS)
    return list(NOTEBOOKS) + others


def kernel_environment():
    """The kernel's environment: ours, minus noise from TensorFlow's C++ logs."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# Lines TensorFlow's C++ runtime prints to stderr when it is imported (as
# keras.utils.set_random_seed does) on a machine without a GPU, whatever
# TF_CPP_MIN_LOG_LEVEL says.
_STARTUP_NOISE = ("absl::InitializeLog()", "cudart_stub.cc", "cuda_dnn.cc", "cuda_fft.cc", "cuda_blas.cc")


def _tidy_output(output):
    """``output`` without machine-specific noise, or None if nothing is left.

    Noise: what rich's weight-loading progress bar leaves in a notebook
    without ``ipywidgets`` (empty displays and a warning asking for
    ipywidgets), and TensorFlow's start-up lines about missing GPUs.
    """
    kind = output.get("output_type")
    if kind == "display_data":
        text = output.get("data", {}).get("text/plain", "")
        if not text.strip() or 'install "ipywidgets" for Jupyter' in text:
            return None
    if kind == "stream" and output.get("name") == "stderr":
        lines = output.get("text", "").splitlines(keepends=True)
        kept = [line for line in lines if not any(n in line for n in _STARTUP_NOISE)]
        if not "".join(kept).strip():
            return None
        output["text"] = "".join(kept)
    return output


def tidy(notebook):
    """Drops machine-specific noise (see ``_tidy_output``) from the outputs."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            outputs = (_tidy_output(o) for o in cell.outputs)
            cell.outputs = [o for o in outputs if o is not None]
    return notebook


def execute(path, output_path=None, cwd=None, timeout=CELL_TIMEOUT):
    """Executes the notebook at ``path``; writes it with outputs to ``output_path``.

    ``output_path`` defaults to ``path`` (in place), ``cwd`` to the
    notebook's folder. Raises ``nbclient.exceptions.CellExecutionError`` if
    a cell raises. Returns the executed ``nbformat`` notebook.
    """
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    path = pathlib.Path(path)
    output_path = pathlib.Path(output_path or path)
    notebook = nbformat.read(path, as_version=4)
    # With no kernel folders to search, "python3" resolves to the native
    # kernel of the ipykernel installed beside this interpreter, whose
    # command line is this interpreter (sys.executable).
    kernel_manager = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[])
    )
    client = NotebookClient(
        notebook,
        km=kernel_manager,
        timeout=timeout,
        record_timing=False,  # no timestamps in the committed files
        resources={"metadata": {"path": str(cwd or path.parent)}},
    )
    try:
        client.execute(env=kernel_environment())
    finally:
        # Keep what ran, errors included, to look at.
        nbformat.write(tidy(notebook), output_path)
    return notebook


def main(argv):
    names = argv or all_notebooks()
    for name in names:
        path = pathlib.Path(name)
        if not path.is_file():
            path = NOTEBOOK_DIR / name
        start = time.time()
        print(f"executing {path.name} ...", flush=True)
        execute(path)
        print(f"  done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
