"""Runs each notebook in notebooks/ top to bottom; fails if any cell raises.

Skipped unless KERAS_GEMMA_RUN_NOTEBOOKS=1 (they load the real Gemma 3
270M, take minutes, and choose their backends themselves, so the
per-backend runs of the suite skip them). run_tests.sh runs them once:

    KERAS_GEMMA_RUN_NOTEBOOKS=1 .venv/bin/python -m pytest -q -n 2 tests/test_notebooks.py

Each notebook runs from a temporary copy; the committed files are not
touched (``notebooks/execute.py`` refreshes their outputs).
"""

import importlib.util
import os
import pathlib
import shutil

import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"

pytestmark = pytest.mark.skipif(
    os.environ.get("KERAS_GEMMA_RUN_NOTEBOOKS") != "1",
    reason="set KERAS_GEMMA_RUN_NOTEBOOKS=1 to execute the notebooks",
)


def _load_execute_module():
    spec = importlib.util.spec_from_file_location(
        "keras_gemma_notebooks_execute", NOTEBOOK_DIR / "execute.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_execute = _load_execute_module()


@pytest.mark.parametrize("name", _execute.all_notebooks())
def test_notebook_runs(name, tmp_path):
    copy = tmp_path / name
    shutil.copyfile(NOTEBOOK_DIR / name, copy)
    notebook = _execute.execute(copy, cwd=tmp_path)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert code_cells and all(c.get("execution_count") for c in code_cells)
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors
