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


def test_tensorflow_xla_flags_are_added_unless_set_or_switched_off(monkeypatch):
    from keras_gemma import backend

    flag = backend.TENSORFLOW_XLA_CPU_FLAGS[0]
    monkeypatch.delenv(backend.XLA_FLAGS_SETTING, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    backend._add_xla_cpu_flags()
    assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {flag}"
    backend._add_xla_cpu_flags()  # idempotent
    assert os.environ["XLA_FLAGS"].split().count(flag) == 1

    mine = flag.split("=")[0] + "=reduce"  # the user's own value wins
    monkeypatch.setenv("XLA_FLAGS", mine)
    backend._add_xla_cpu_flags()
    assert os.environ["XLA_FLAGS"] == mine

    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setenv(backend.XLA_FLAGS_SETTING, "off")
    backend._add_xla_cpu_flags()
    assert "XLA_FLAGS" not in os.environ
