"""Choosing the Keras backend: unsupported ones fail with our message."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("backend", ["numpy", "mxnet"])
def test_unsupported_backend_is_a_clear_error(backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", "import keras_gemma"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ValueError: KERAS_BACKEND=")
    assert "jax, tensorflow, torch" in last_line
