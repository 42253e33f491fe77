"""The ``keras-gemma`` console script, run for real in subprocesses.

Each subprocess that loads a model imports Keras (seconds), so those runs
are few and each checks several things; the help, usage and data errors
never import Keras and cost a fraction of a second each. Models come from a
tiny random preset written once per session, with the test's backend.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TESTS_DIR
from conftest import to_numpy
from tiny_models import TINY_CONFIGS
from tiny_models import random_weights

import keras_gemma
from keras_gemma import preset_io
from keras_gemma.chat import chat_template
from keras_gemma.chat import fit_conversation
from keras_gemma.checkpoints import assign_weights

CLI = Path(sys.executable).parent / "keras-gemma"
BACKEND = keras.config.backend()
DATA = TESTS_DIR / "data"
# For a command that loads a model: the longest it may take on a slow machine.
TIMEOUT = 600


def run_cli(*args, stdin=None, backend=None):
    """Runs keras-gemma; returns (exit status, stdout, stderr) as text."""
    environment = dict(os.environ, KERAS_BACKEND=backend or BACKEND,
                       PYTHONIOENCODING="utf-8", TF_CPP_MIN_LOG_LEVEL="3")
    environment.pop("KERAS_GEMMA_DEBUG", None)
    result = subprocess.run(
        [str(CLI), *args], input=stdin.encode() if stdin is not None else None,
        capture_output=True, env=environment, timeout=TIMEOUT,
    )
    # Bytes, decoded here: text mode would turn a generated "\r" into "\n".
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def assert_one_line_error(result, *fragments):
    status, _, stderr = result
    assert status != 0, result
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("keras-gemma"), lines[0]
    assert "error:" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory):
    """A tiny random Gemma saved as a preset directory, and its model."""
    config = TINY_CONFIGS["gemma_mqa"]
    backbone = keras_gemma.GemmaBackbone(**config)
    assign_weights(backbone, random_weights(config), "tiny_models")
    tokenizer = keras_gemma.GemmaTokenizer(str(DATA / "test_vocabulary.spm"))
    path = tmp_path_factory.mktemp("cli") / "tiny_preset"
    preset_io.save_preset(path, backbone=backbone, tokenizer=tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_preset):
    return keras_gemma.GemmaCausalLM.from_preset(str(tiny_preset))


def prompt_tokens(model, prompt):
    return len(model.preprocessor.tokenizer.tokenize(prompt)) + 1  # with <bos>


# -- help, usage errors and missing files: no Keras import ------------------------------


@pytest.mark.parametrize("command", [None, "generate", "chat", "convert", "finetune", "presets"])
def test_help_shows_an_example(command):
    status, stdout, stderr = run_cli(*([command] if command else []), "--help")
    assert status == 0, stderr
    assert "example" in stdout
    assert "usage: keras-gemma" in stdout
    if command:
        assert f"keras-gemma {command}" in stdout.split("example", 1)[1]


@pytest.mark.parametrize("args,fragments", [
    (["generate", "hi", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["generate"], ["required: prompt"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    ([], ["required: COMMAND"]),
    (["generate", "hi", "--max-new-tokens", "0"], ["--max-new-tokens", "at least 1"]),
    (["generate", "hi", "--backend", "numpy"], ["--backend", "invalid choice"]),
    (["generate", "hi", "--quantize", "int4"], ["--quantize", "invalid choice"]),
    (["chat", "--temperature", "hot"], ["--temperature", "expected a number"]),
    (["finetune", "--data", "x.txt"], ["required: --out"]),
    (["generate", "hi", "--preset", "/no/such/dir"], ["--preset /no/such/dir: no such file"]),
    (["chat", "--adapter", "/no/such/adapter.lora.h5"], ["--adapter", "no such file"]),
    (["convert", "/no/such/model.gguf", "out"], ["source /no/such/model.gguf", "no such file"]),
    (["finetune", "--data", "/no/such/data.txt", "--out", "x"], ["--data", "no such file"]),
])
def test_usage_and_missing_file_errors_are_one_line(args, fragments):
    assert_one_line_error(run_cli(*args), *fragments)


@pytest.mark.parametrize("name,content,fragments", [
    ("empty.txt", "\n  \n\n", ["no training examples"]),
    ("empty.jsonl", "\n", ["no training examples"]),
    ("bad.jsonl", '{"text": "fine"}\n\n{"text": "oops"\n', ["bad.jsonl line 3: not valid JSON"]),
    ("keys.jsonl", '{"text": "a"}\n{"prompt": "p", "answer": "r"}\n',
     ["keys.jsonl line 2: unknown key 'answer'"]),
    ("half.jsonl", '{"prompt": "p"}\n', ["line 1: has 'prompt'", '"prompt" and "response"']),
    ("type.jsonl", '{"text": 3}\n', ['line 1: "text" must be a string, got int']),
    ("list.jsonl", '["a"]\n', ["line 1: expected an object"]),
    ("data.csv", "a,b\n", [".txt", ".jsonl"]),
])
def test_bad_training_data_is_one_line(tmp_path, name, content, fragments):
    data = tmp_path / name
    data.write_text(content)
    result = run_cli("finetune", "--data", str(data), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_convert_refuses_to_replace_without_overwrite(tiny_preset, tmp_path):
    assert_one_line_error(run_cli("convert", str(tiny_preset), str(tiny_preset)),
                          "already holds a preset", "--overwrite")
    (tmp_path / "notes.txt").write_text("keep me")
    assert_one_line_error(run_cli("convert", str(tiny_preset), str(tmp_path)),
                          "not a preset")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_presets_table(tiny_preset, tmp_path, monkeypatch, capsys):
    # In-process: preset_io imports Keras, so a subprocess would cost seconds.
    from keras_gemma import cli

    home = tmp_path / "home"
    shutil.copytree(tiny_preset, home / "gemma_2b_en")
    (home / "gemma_7b_en").mkdir(parents=True)  # present but empty
    monkeypatch.setenv("KERAS_GEMMA_HOME", str(home))
    status = cli.main(["presets"])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].split() == ["name", "family", "parameters", "instruct", "files", "here"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(keras_gemma.list_presets())
    assert rows["gemma_2b_en"].split()[1:5] == ["gemma", "2.51B", "no", "yes"]
    assert str(home / "gemma_2b_en") in rows["gemma_2b_en"]
    assert "incomplete" in rows["gemma_7b_en"]
    assert rows["gemma2_instruct_9b_en"].split()[1:5] == ["gemma2", "9.24B", "yes", "no"]
    assert rows["gemma3_1b"].split()[2] == "1B"
    assert "gemma3_270m" in rows
    assert "Traceback" not in stderr


# -- commands that load a model ----------------------------------------------------------


def test_generate_streams_the_greedy_continuation(tiny_preset, tiny_model):
    prompt, new_tokens = "The quick brown fox", 12
    expected = tiny_model.generate(
        prompt, max_length=prompt_tokens(tiny_model, prompt) + new_tokens, strip_prompt=True
    )
    assert expected  # the comparison means something
    status, stdout, stderr = run_cli(
        "generate", prompt, "--preset", str(tiny_preset), "--backend", BACKEND,
        "--max-new-tokens", str(new_tokens),
    )
    assert status == 0, stderr
    assert stdout == expected + "\n"
    summary = [line for line in stderr.splitlines() if "tokens/s" in line]
    assert len(summary) == 1, stderr
    assert re.search(rf"\[\d+ tokens in [\d.]+ s: [\d.]+ tokens/s.*backend {BACKEND}\]",
                     summary[0]), summary[0]
    assert "Traceback" not in stderr


def expected_chat(model, messages, context, max_new_tokens, system=None):
    """Replies and drop counts under the chat command's context policy."""
    count = lambda text: prompt_tokens(model, text)  # noqa: E731
    head = [{"role": "system", "content": system}] if system else []
    history, replies, drops = [], [], []
    for message in messages:
        user = {"role": "user", "content": message}
        kept, dropped, tokens = fit_conversation(head + history + [user], count,
                                                 context - max_new_tokens)
        history = history[2 * dropped:]
        room = min(max_new_tokens, context - tokens)
        reply = model.generate(chat_template(kept), max_length=tokens + room,
                               strip_prompt=True)
        history += [user, {"role": "model", "content": reply}]
        replies.append(reply)
        drops.append(dropped)
    return replies, drops


def test_chat_replies_to_piped_turns_and_drops_old_turns(tiny_preset, tiny_model):
    messages = ["hello there", "how are you?",
                "please tell me a rather long story about a quick brown fox"]
    context, new_tokens, system = 48, 4, "Be brief."
    replies, drops = expected_chat(tiny_model, messages, context, new_tokens, system)
    assert drops[:2] == [0, 0] and drops[2] >= 1  # the third turn must drop history
    stdin = "\n".join([messages[0], "", messages[1], messages[2]]) + "\n"  # blank: skipped
    status, stdout, stderr = run_cli(
        "chat", "--preset", str(tiny_preset), "--backend", BACKEND, "--system", system,
        "--max-new-tokens", str(new_tokens), "--context-length", str(context),
        stdin=stdin,
    )
    assert status == 0, stderr
    assert "Traceback" not in stderr
    # Non-interactive: no prompt decoration, just each reply on its line(s).
    assert stdout == "".join(reply + "\n" for reply in replies)
    notices = [line for line in stderr.splitlines() if "dropped the oldest" in line]
    assert len(notices) == 1, stderr
    assert f"{context}-token context" in notices[0]


def test_chat_ctrl_c_at_the_prompt_exits_cleanly(tiny_preset):
    process = subprocess.Popen(
        [str(CLI), "chat", "--preset", str(tiny_preset), "--backend", BACKEND],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, KERAS_BACKEND=BACKEND, PYTHONIOENCODING="utf-8"),
    )
    watchdog = threading.Timer(TIMEOUT, process.kill)
    watchdog.start()
    try:
        seen = []
        for line in iter(process.stderr.readline, b""):  # until the chat is ready
            seen.append(line.decode())
            if "Ctrl-D" in seen[-1]:
                break
        else:
            pytest.fail("chat exited early: " + "".join(seen))
        # Let it reach the read of the first message; stdin stays open, so
        # only the interrupt can end it (closing stdin would race Ctrl-D).
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        stdout, stderr = process.stdout.read(), process.stderr.read()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, "".join(seen) + stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert stdout == b""


class ScriptedStdin:
    """Piped stdin whose lines may be KeyboardInterrupt (Ctrl-C) instead."""

    def __init__(self, *lines):
        self.lines = list(lines)

    def isatty(self):
        return False

    def readline(self):
        if not self.lines:
            return ""
        line = self.lines.pop(0)
        if line is KeyboardInterrupt:
            raise KeyboardInterrupt
        return line + "\n"


def test_chat_ctrl_c_during_a_reply_discards_it(tiny_preset, monkeypatch, capsys):
    """In-process, with a scripted stream: Ctrl-C in the middle of a reply
    drops that exchange and the prompt comes back; Ctrl-C at the prompt
    ends the chat with status 130."""
    from keras_gemma import cli

    prompts, quantized = [], []

    def stream(self, prompt, max_length=None, stop_token_ids="auto", seed=None):
        prompts.append(prompt)
        quantized.append(getattr(self.backbone, "is_quantized", None))
        yield f"reply{len(prompts)}"
        if len(prompts) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the first reply streams

    monkeypatch.setattr(keras_gemma.GemmaCausalLM, "stream", stream)
    monkeypatch.setattr(sys, "stdin", ScriptedStdin("first", "second", "third",
                                                    KeyboardInterrupt, "never read"))
    status = cli.main(["chat", "--preset", str(tiny_preset), "--backend", BACKEND,
                       "--quantize", "int8"])
    stdout, stderr = capsys.readouterr()
    assert status == 130
    assert quantized == [True] * 3  # --quantize int8 reached from_preset
    assert stdout == "reply1\nreply2\nreply3\n"
    assert "reply interrupted" in stderr
    assert "first" not in prompts[1] and "first" not in prompts[2]
    assert prompts[2] == chat_template([
        {"role": "user", "content": "second"}, {"role": "model", "content": "reply2"},
        {"role": "user", "content": "third"},
    ])


def test_convert_writes_a_loadable_preset(tmp_path):
    destination = tmp_path / "converted"
    source = DATA / "hf_tiny_gemma"
    status, stdout, stderr = run_cli(
        "convert", str(source), str(destination), "--dtype", "bfloat16", "--backend", BACKEND,
    )
    assert status == 0, stderr
    assert stdout == ""
    assert f"wrote {destination}" in stderr and "dtype bfloat16" in stderr
    assert "bfloat16" in json.dumps(json.loads((destination / "config.json").read_text()))
    converted = keras_gemma.GemmaCausalLM.from_preset(str(destination))
    original = keras_gemma.GemmaCausalLM.from_preset(str(source))
    for ours, theirs in zip(converted.backbone.weights, original.backbone.weights):
        assert ours.path == theirs.path
        np.testing.assert_array_equal(
            to_numpy(ours.value).astype("float32"),
            to_numpy(keras.ops.cast(theirs.value, "bfloat16")).astype("float32"),
        )
    assert (destination / "assets" / "tokenizer" / "vocabulary.spm").is_file()


def check_finetune_output(out, stdout, epochs, tiny_preset):
    losses = re.findall(r"^epoch (\d+)/(\d+): loss (\S+)", stdout, re.MULTILINE)
    assert [(int(i), int(n)) for i, n, _ in losses] == [(i, epochs) for i in range(1, epochs + 1)]
    assert all(math.isfinite(float(loss)) for _, _, loss in losses)
    record = json.loads((out / "finetune.json").read_text())
    assert [round(v, 4) for v in record["loss"]] == [float(loss) for _, _, loss in losses]
    assert json.loads((out / "peft" / "adapter_config.json").read_text())["r"] == 2
    assert (out / "peft" / "adapter_model.safetensors").is_file()
    # The adapter loads into a fresh model of the same preset.
    model = keras_gemma.GemmaCausalLM.from_preset(str(tiny_preset))
    model.backbone.load_lora_weights(str(out / "adapter.lora.h5"))
    assert model.backbone.lora_config["rank"] == 2
    return record


def test_finetune_on_text_lines(tiny_preset, tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("The quick brown fox.\n\nJumps over the lazy dog.\nA third line.\n")
    out = tmp_path / "adapter"
    status, stdout, stderr = run_cli(
        "finetune", "--preset", str(tiny_preset), "--data", str(data), "--out", str(out),
        "--lora-rank", "2", "--epochs", "2", "--batch-size", "2", "--seed", "1",
        "--backend", BACKEND,
    )
    assert status == 0, stderr
    assert "Traceback" not in stderr
    record = check_finetune_output(out, stdout, 2, tiny_preset)
    assert record["examples"] == 3  # the blank line is skipped


def test_finetune_on_jsonl_pairs_and_texts(tiny_preset, tmp_path, capsys):
    # In-process through cli.main (the .txt test above runs the real script):
    # one Keras import fewer for the time budget, the same code path.
    from keras_gemma import cli

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "What is two plus two?", "response": "Four."},
        {"text": "A plain text example is learned whole."},
        {"prompt": "Name a colour.", "response": "Blue."},
    ]) + "\n\n")
    out = tmp_path / "adapter"
    status = cli.main([
        "finetune", "--preset", str(tiny_preset), "--data", str(data), "--out", str(out),
        "--lora-rank", "2", "--epochs", "1", "--chat-template", "--sequence-length", "8",
        "--backend", BACKEND,
    ])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stderr
    assert "are cut short" in stderr  # --sequence-length 8 is shorter than the examples
    record = check_finetune_output(out, stdout, 1, tiny_preset)
    assert record["examples"] == 3 and record["chat_template"] is True


def test_unsupported_backend_in_the_environment_is_one_line():
    result = run_cli("generate", "hi", backend="numpy")
    assert_one_line_error(result, "KERAS_BACKEND='numpy'", "--backend")
