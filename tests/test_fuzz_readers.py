"""Fuzzing every file reader with seeded mutations of small valid files.

Each reader (GGUF, safetensors, keras-hub HDF5, SentencePiece model, preset
JSON) gets a few hundred mutations of a small valid file: truncations,
flipped bytes, huge counts and lengths written over 4- or 8-byte fields,
inserted and deleted runs. Each must either load or raise a ``ValueError``
that names the file, quickly, without allocating more than a bound; no
other exception may escape. The counts (tried, loaded, rejected) appear in
the terminal summary (tests/conftest.py), also without ``-s`` and under
xdist.

The readers produce numpy arrays and run the same on every backend; the
suite is small (a few seconds) so it runs as part of each backend's run.
"""

import json
import random
import resource
import shutil
import signal
import struct
import time
from contextlib import contextmanager

import pytest
from conftest import TESTS_DIR, VOCABULARY_PATH
from tiny_models import TINY_CONFIGS

import keras_gemma
from keras_gemma import backend
from keras_gemma import preset_io
from keras_gemma.checkpoints import checkpoint_shapes
from keras_gemma.checkpoints import gguf as gguf_reader
from keras_gemma.checkpoints import huggingface
from keras_gemma.checkpoints import keras_hub

DATA = TESTS_DIR / "data"
# Flipped bytes in tensor data dequantize to NaN: data, not a format error.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
MUTATIONS = 300  # per reader
CASE_SECONDS = 5  # a case slower than this counts as a hang
MEMORY_BOUND = 256 * 2**20  # what the preflight may let one case allocate
HUGE = (2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1, 2**40, 10**12)

@pytest.fixture(autouse=True)
def _bounded_memory(monkeypatch):
    # A config that slips through must not allocate more than the bound:
    # the memory preflight sees only this much free.
    monkeypatch.setattr(
        backend, "device_memory_available", lambda: (MEMORY_BOUND, "the fuzz bound")
    )


# -- mutations -------------------------------------------------------------------


def mutate(data, rng):
    """One seeded mutation of ``data`` (bytes)."""
    data = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # truncation
        return bytes(data[: rng.randrange(len(data))])
    if kind == 1:  # flipped bytes
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind in (2, 3):  # a huge count or length over a field
        # Fields near the start (headers) are hit more often.
        limit = len(data) if rng.random() < 0.3 else min(len(data), 512)
        offset = rng.randrange(max(1, limit - 8))
        value = rng.choice(HUGE)
        size, fmt = (8, "<Q") if kind == 2 else (4, "<I")
        data[offset : offset + size] = struct.pack(fmt, value % 2 ** (8 * size))
        return bytes(data)
    if kind == 4:  # inserted run
        offset = rng.randrange(len(data))
        run = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        return bytes(data[:offset] + run + data[offset:])
    offset = rng.randrange(len(data))  # deleted run
    return bytes(data[:offset] + data[offset + rng.randint(1, 64) :])


class _Hang(Exception):
    pass


@contextmanager
def _deadline(seconds):
    def expire(signum, frame):
        raise _Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fuzz(reader_name, original, target, load, seed, record_property, mutator=mutate):
    """Writes ``MUTATIONS`` mutations of ``original`` to ``target`` and loads each.

    ``load(target)`` reads the file (consuming every tensor). Records the
    tally as the test's ``fuzz_tally`` property, which conftest.py's
    terminal summary prints (also from xdist workers). Fails listing the
    cases where another exception escaped, a ValueError did not name the
    file, or a case hung.
    """
    rng = random.Random(seed)
    tally = {"tried": 0, "loaded": 0, "rejected": 0}
    failures = []
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    for case in range(MUTATIONS):
        data = mutator(original, rng)
        target.write_bytes(data)
        tally["tried"] += 1
        try:
            with _deadline(CASE_SECONDS):
                load(target)
        except ValueError as error:
            if target.name not in str(error):
                failures.append((case, f"ValueError without the file name: {error}"))
            else:
                tally["rejected"] += 1
        except _Hang as error:
            failures.append((case, f"hang: {error}"))
        except Exception as error:  # noqa: BLE001 - the point of the test
            failures.append((case, f"{type(error).__name__}: {error}"))
        else:
            tally["loaded"] += 1
    elapsed = time.perf_counter() - start
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record_property("fuzz_tally", (
        f"{reader_name}: {tally['tried']} files tried, {tally['loaded']} loaded, "
        f"{tally['rejected']} rejected with our ValueError ({elapsed:.1f} s)"
    ))
    print(f"\n{reader_name}: {tally} in {elapsed:.1f} s")
    assert not failures, f"{len(failures)} bad cases, e.g. " + "\n".join(
        f"case {c}: {m[:300]}" for c, m in failures[:10]
    )
    assert tally["rejected"] > 0
    assert peak_after - peak_before < 2 * MEMORY_BOUND
    assert elapsed < 30
    return tally


# -- the readers -------------------------------------------------------------------


def test_fuzz_gguf(tmp_path, record_property):
    from test_gguf import write_tiny_gguf

    original_path = tmp_path / "original.gguf"
    write_tiny_gguf(original_path)
    target = tmp_path / "mutated.gguf"

    def load(path):
        gguf_reader.read_gguf(path, progress=False)
        preset_io._Checkpoint(str(path)).tokenizer()

    fuzz("GGUF", original_path.read_bytes(), target, load, seed=1,
         record_property=record_property)


def test_fuzz_gguf_gemma4(tmp_path, record_property):
    pytest.importorskip("gguf")
    from keras_gemma.export.gguf import export_gguf

    model = keras_gemma.GemmaCausalLM.from_preset(str(DATA / "hf_tiny_gemma4_dense"))
    original_path = export_gguf(model, tmp_path / "original.gguf", "f32", progress=False)
    target = tmp_path / "mutated.gguf"

    def load(path):
        gguf_reader.read_gguf(path, progress=False)
        preset_io._Checkpoint(str(path)).tokenizer()

    fuzz("GGUF (gemma4)", open(original_path, "rb").read(), target, load, seed=4,
         record_property=record_property)


def test_fuzz_safetensors(tmp_path, record_property):
    folder = tmp_path / "hf"
    shutil.copytree(DATA / "hf_tiny_gemma", folder)
    config = huggingface.read_config(folder)
    shard = sorted(folder.glob("*.safetensors"))[0]
    original = shard.read_bytes()

    def load(path):
        for _ in huggingface.read_weights(folder, config):
            pass

    fuzz("safetensors", original, shard, load, seed=2, record_property=record_property)


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory, tokenizer):
    backbone = keras_gemma.GemmaBackbone(**TINY_CONFIGS["gemma_mqa"])
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, sequence_length=16)
    path = tmp_path_factory.mktemp("fuzz") / "preset"
    keras_gemma.GemmaCausalLM(backbone, preprocessor).save_to_preset(path)
    return path, checkpoint_shapes(backbone)


def test_fuzz_keras_hub_h5(tmp_path, tiny_preset, record_property):
    preset, shapes = tiny_preset
    folder = tmp_path / "preset"
    shutil.copytree(preset, folder)
    weights = folder / "model.weights.h5"
    original = weights.read_bytes()

    def load(path):
        for _ in keras_hub.read_weights(folder, shapes, "gemma"):
            pass

    fuzz("keras-hub .h5", original, weights, load, seed=3, record_property=record_property)


def test_fuzz_sentencepiece_model(tmp_path, record_property):
    target = tmp_path / "vocabulary.spm"

    def load(path):
        tokenizer = keras_gemma.GemmaTokenizer(path)
        tokenizer.detokenize(tokenizer.tokenize("The quick brown fox"))

    fuzz("SentencePiece model", VOCABULARY_PATH.read_bytes(), target, load, seed=4,
         record_property=record_property)


def _mutate_json_value(text, rng):
    """A valid JSON file with one value replaced by a hostile one."""
    document = json.loads(text)
    holders = []

    def walk(node):
        if isinstance(node, dict):
            holders.extend((node, key) for key in node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            holders.extend((node, index) for index in range(len(node)))
            for value in node:
                walk(value)

    walk(document)
    holder, key = rng.choice(holders)
    holder[key] = rng.choice(
        [10**9, 10**30, -1, 0, 2**63, 1.5, "a", "", None, True, [], {}, [1] * 3,
         float("nan"), "x" * 10_000]
    )
    return json.dumps(document).encode()


@pytest.mark.parametrize("kind", ["keras-hub", "huggingface", "preprocessor"])
def test_fuzz_preset_json(tmp_path, tiny_preset, kind, record_property):
    """config.json (preprocessor.json), through the preset path up to a
    built backbone (preprocessor)."""
    if kind == "huggingface":
        folder = tmp_path / "hf"
        shutil.copytree(DATA / "hf_tiny_gemma", folder)
    else:
        folder = tmp_path / "preset"
        shutil.copytree(tiny_preset[0], folder)
    name = "preprocessor.json" if kind == "preprocessor" else "config.json"
    config_path = folder / name
    original = config_path.read_text()

    def load(path):
        if kind == "preprocessor":
            preset_io.load_preprocessor(str(folder))
            return
        checkpoint = preset_io._Checkpoint(str(folder), need_weights=False)
        preset_io._build_backbone(checkpoint, load_weights=False, dtype=None)
        checkpoint.context_length()

    def json_or_bytes(data, rng):
        # Half byte-level mutations, half valid JSON with one hostile value.
        if rng.random() < 0.5:
            return _mutate_json_value(original, rng)
        return mutate(data, rng)

    fuzz(f"preset JSON ({kind} {name})", original.encode(), config_path, load,
         seed={"keras-hub": 6, "huggingface": 7, "preprocessor": 8}[kind],
         record_property=record_property, mutator=json_or_bytes)


@pytest.mark.parametrize("mutation", ["bytes", "values"])
def test_fuzz_tokenizer_json(tmp_path, mutation, record_property):
    """Gemma 4's tokenizer.json, rebuilt into a SentencePiece model."""
    from keras_gemma.checkpoints.tokenizer_json import tokenizer_from_tokenizer_json

    folder = tmp_path / "tokenizer"
    shutil.copytree(DATA / "gemma4_tokenizer", folder)
    target = folder / "tokenizer.json"

    def load(path):
        tokenizer = tokenizer_from_tokenizer_json(path)
        tokenizer.detokenize(tokenizer.tokenize("The quick brown fox"))

    mutator = mutate if mutation == "bytes" else (
        lambda data, rng: _mutate_json_value(data.decode(), rng)
    )
    fuzz(f"tokenizer.json ({mutation})", target.read_bytes(), target, load,
         seed=5 if mutation == "bytes" else 6, record_property=record_property,
         mutator=mutator)
