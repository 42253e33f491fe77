"""Runs Python code in a fresh process where keras_gemma, Keras and keras-hub
cannot be imported, as on a serving machine that has only TensorFlow or
PyTorch installed.

The test venv has them all installed, so an import hook makes them look
absent (``import keras`` raises ``ModuleNotFoundError``) and the checkout is
dropped from ``sys.path``; the code then prints whether any of them got
loaded anyway.
"""

import json
import os
import subprocess
import sys

from conftest import TESTS_DIR

HIDDEN = ("keras", "keras_gemma", "keras_hub", "tf_keras")

_PRELUDE = f"""
import importlib.abc, importlib.machinery, sys
HIDDEN = {HIDDEN!r}
class _Absent(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}}", name=spec.name)
    def exec_module(self, module):
        pass
class _Hide(importlib.abc.MetaPathFinder):
    # A spec without an origin: TensorFlow's own probing for Keras
    # (importlib.util.find_spec) reads that as not installed.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return importlib.machinery.ModuleSpec(name, _Absent())
sys.meta_path.insert(0, _Hide())
# The checkout and its tests folder only (a venv may live inside the checkout).
_CHECKOUT = {[str(TESTS_DIR.parent), str(TESTS_DIR)]!r}
sys.path[:] = [p for p in sys.path if p and p.rstrip("/") not in _CHECKOUT]
"""

_EPILOGUE = """
import json as _json
print("LOADED_HIDDEN=" + _json.dumps(sorted(
    m for m in sys.modules if m.split(".")[0] in HIDDEN)))
"""


def run_isolated(code, cwd, timeout=240):
    """Runs ``code`` in a fresh interpreter without the hidden packages.

    Returns its stdout; fails the calling test (AssertionError) if the
    process failed or loaded a hidden module after all.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [sys.executable, "-c", _PRELUDE + code + _EPILOGUE],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = [s for s in result.stdout.splitlines() if s.startswith("LOADED_HIDDEN=")][-1]
    assert json.loads(line.split("=", 1)[1]) == [], line
    return result.stdout
