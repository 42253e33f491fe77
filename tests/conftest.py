import pathlib
import sys

import keras
import numpy as np
import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))
VOCABULARY_PATH = TESTS_DIR / "data" / "test_vocabulary.spm"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds real-size models (minutes, GBs)")


def pytest_report_header(config):
    return f"keras backend: {keras.config.backend()}, keras {keras.__version__}"


def pytest_terminal_summary(terminalreporter):
    """The fuzz suite's counts (tests/test_fuzz_readers.py), even under -n."""
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name == "fuzz_tally" and getattr(report, "when", "call") == "call"
    ]
    if lines:
        terminalreporter.section("fuzzed readers")
        for line in sorted(lines):
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)


@pytest.fixture(scope="session")
def vocabulary_path():
    return str(VOCABULARY_PATH)


@pytest.fixture(scope="session")
def tokenizer():
    import keras_gemma

    return keras_gemma.GemmaTokenizer(str(VOCABULARY_PATH))


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))
