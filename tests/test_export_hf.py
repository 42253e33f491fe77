"""Hugging Face export, checked by transformers itself.

One module fixture exports a tiny model of every family (Gemma 1, 2, 3; the
three Gemma 4 test checkpoints; a Gemma 4 model with Gemma 4's tokenizer; a
Gemma 3 model with a LoRA adapter) on the current backend, then runs
tests/hf_export_oracle.py ONCE in a subprocess (importing transformers
takes most of a minute): ``AutoModelForCausalLM`` and ``AutoTokenizer`` load
each folder and report logits, greedy tokens, token ids and chat-template
text, which the tests compare with ours.
"""

import importlib.machinery
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import TESTS_DIR, VOCABULARY_PATH, to_numpy
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights

import keras_gemma
from keras_gemma import chat
from keras_gemma.checkpoints import assign_weights
from keras_gemma.checkpoints import huggingface as hf_checkpoint
from keras_gemma.checkpoints.tokenizer_json import tokenizer_from_tokenizer_json
from keras_gemma.export import export
from keras_gemma.export import files
from keras_gemma.export import huggingface as hf_export

DATA = TESTS_DIR / "data"
TOLERANCE = 1e-4
PROMPT = [2, 17, 230, 45, 88]
NEW_TOKENS = 6
TEXTS = [
    "Hello world",
    "  leading,  double   and trailing spaces ",
    "\n\nnewlines\n\ttabs\tand\r\nCRLF",
    "café naïve Ünïcödé façade Ωμέγα",
    "日本語の文章と中文，한국어",
    "emoji 🎉👍🏽 ❤️ 🇫🇷",
    "def f(x):\n    return x ** 2  # square\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<|turn>user\nHi<turn|>\n<|turn>model\n",
    # Not "<bos>" written in text: transformers matches special tokens in
    # text (for Google's own Gemma folders too); ours keeps them text.
    "12345 67.89 1,000,000",
    "",
]
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hi there "}]},
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": " Bye\n"}]},
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "<|channel>thought\nhm<channel|>Yes"}],
     "add_generation_prompt": False},
    {"messages": [{"role": "user", "content": "Think"}], "enable_thinking": True},
]
# Gemma 4: per-layer embeddings + KV sharing (ple), experts + K = V (moe),
# and the dense model resized to Gemma 4's tokenizer.
NAMES = ("gemma", "gemma2", "gemma3", "gemma4_ple", "gemma4_moe", "gemma4_tokenizer",
         "gemma3_lora")
ARCHITECTURES = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                 "gemma3": "Gemma3ForCausalLM", "gemma4": "Gemma4ForCausalLM"}

have_transformers = importlib.util.find_spec("transformers") is not None


def tiny_causal_lm(name, seed=0):
    """A float32 tiny model of Gemma 1-3 (``tests/tiny_models.py``)."""
    config = TINY_CONFIGS[name]
    backbone = keras_gemma.GemmaBackbone(**config)
    assign_weights(backbone, random_weights(config, seed), "tiny")
    tokenizer = keras_gemma.GemmaTokenizer(str(VOCABULARY_PATH))
    return keras_gemma.GemmaCausalLM(
        backbone, keras_gemma.GemmaCausalLMPreprocessor(tokenizer, 32))


def gemma4_with_its_tokenizer():
    """The dense Gemma 4 test model, resized to Gemma 4's test tokenizer."""
    dense = keras_gemma.GemmaCausalLM.from_preset(str(DATA / "hf_tiny_gemma4_dense"))
    tokenizer = tokenizer_from_tokenizer_json(DATA / "gemma4_tokenizer")
    config = {k: v for k, v in dense.backbone.get_config().items() if k != "name"}
    config["vocabulary_size"] = tokenizer.vocabulary_size()
    backbone = keras_gemma.GemmaBackbone.from_config(config)
    weights = files.float_weights(dense.backbone)
    rng = np.random.default_rng(4)
    weights["token_embedding/embeddings"] = rng.standard_normal(
        (config["vocabulary_size"], config["hidden_dim"])).astype("float32")
    assign_weights(backbone, weights, "resized")
    return keras_gemma.GemmaCausalLM(
        backbone, keras_gemma.GemmaCausalLMPreprocessor(tokenizer, 32))


def lora_causal_lm():
    model = tiny_causal_lm("gemma3", seed=1)
    model.backbone.enable_lora(2, target=("query", "value", "gate", "down"))
    rng = np.random.default_rng(7)
    for variable in model.backbone.weights:
        if variable.path.endswith("lora_kernel_b"):
            variable.assign(rng.standard_normal(variable.shape).astype("float32"))
    return model


def build(name):
    if name in ("gemma", "gemma2", "gemma3"):
        return tiny_causal_lm({"gemma": "gemma_mqa"}.get(name, name))
    if name == "gemma4_tokenizer":
        return gemma4_with_its_tokenizer()
    if name == "gemma3_lora":
        return lora_causal_lm()
    return keras_gemma.GemmaCausalLM.from_preset(
        str(DATA / f"hf_tiny_gemma4_{name.split('_')[1]}"))


def our_logits(model, token_ids=TOKEN_IDS, padding_mask=PADDING_MASK):
    backbone = model.backbone
    hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    return to_numpy(backbone.compute_logits(hidden))


def our_greedy(model):
    """``generate``'s greedy continuation of PROMPT (compiles the sampler
    loop: one model only, for time)."""
    length = len(PROMPT) + NEW_TOKENS
    token_ids = np.zeros((1, length), "int32")
    token_ids[0, :len(PROMPT)] = PROMPT
    model.compile(sampler="greedy")
    output = model.generate({"token_ids": token_ids, "padding_mask": token_ids != 0},
                            stop_token_ids=None)
    return np.asarray(output["token_ids"])[0, len(PROMPT):].tolist()


def logits_and_argmax_after(model, continuation):
    """Our logits for TOKEN_IDS, and our most likely token after each prefix
    of PROMPT + ``continuation`` (equal to ``continuation`` iff our greedy
    decoding writes it too), in one forward pass (eager Gemma 4 is slow)."""
    sequence = list(PROMPT) + list(continuation)
    rows = np.zeros((TOKEN_IDS.shape[0] + 1, max(TOKEN_IDS.shape[1], len(sequence))), "int32")
    rows[:TOKEN_IDS.shape[0], :TOKEN_IDS.shape[1]] = TOKEN_IDS
    rows[-1, :len(sequence)] = sequence
    mask = np.zeros(rows.shape, bool)
    mask[:TOKEN_IDS.shape[0], :TOKEN_IDS.shape[1]] = PADDING_MASK
    mask[-1, :len(sequence)] = True
    logits = our_logits(model, rows, mask)
    argmax = logits[-1, len(PROMPT) - 1:len(sequence) - 1].argmax(-1).tolist()
    return logits[:TOKEN_IDS.shape[0], :TOKEN_IDS.shape[1]], argmax


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (model, folder, transformers' results)}."""
    if not have_transformers:
        pytest.skip("transformers is not installed")
    root = tmp_path_factory.mktemp("hf_export")
    models, folders = {}, {}
    for name in NAMES:
        models[name] = build(name)
        # Gemma 3: small shards, so the index file is exercised too.
        shard = 20_000 if name == "gemma3" else hf_export.DEFAULT_MAX_SHARD_SIZE
        folders[name] = hf_export.export_huggingface(
            models[name], root / name, max_shard_size=shard)
    request = {"folders": [folders[n] for n in NAMES], "token_ids": TOKEN_IDS.tolist(),
               "padding_mask": PADDING_MASK.tolist(), "prompt": PROMPT,
               "max_new_tokens": NEW_TOKENS, "texts": TEXTS,
               "conversations": CONVERSATIONS}
    (root / "request.json").write_text(json.dumps(request))
    environment = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    subprocess.run(
        [sys.executable, str(TESTS_DIR / "hf_export_oracle.py"),
         str(root / "request.json"), str(root / "result.json")],
        check=True, env={**environment, "HF_HUB_OFFLINE": "1",
                         "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        timeout=600)
    results = json.loads((root / "result.json").read_text())
    return {n: (models[n], folders[n], results[folders[n]]) for n in NAMES}


def result_of(exported, name):
    model, folder, result = exported[name]
    assert "error" not in result, result["error"]
    return model, folder, result


@pytest.mark.parametrize("name", NAMES)
def test_transformers_logits_and_greedy_tokens_equal_ours(exported, name):
    model, _, result = result_of(exported, name)
    family = hf_export.family_of(model.backbone.get_config())
    assert result["class"] == ARCHITECTURES[family]
    theirs = np.asarray(result["logits"], dtype="float32")
    assert len(result["greedy"]) == NEW_TOKENS
    ours, argmax = logits_and_argmax_after(model, result["greedy"])
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs[PADDING_MASK], ours[PADDING_MASK],
                               atol=TOLERANCE, rtol=0)
    assert argmax == result["greedy"]
    if name == "gemma3":
        assert our_greedy(model) == result["greedy"]


def test_lora_model_is_exported_merged(exported):
    model, folder, _ = result_of(exported, "gemma3_lora")
    plain = tiny_causal_lm("gemma3", seed=1)
    # The adapter changes the logits, so matching them means it was merged.
    assert np.abs(our_logits(model) - our_logits(plain)).max() > 1e-2
    names = set(json.loads((folder_path(folder) / "config.json").read_text()))
    assert "lora" not in " ".join(names)
    assert model.backbone.lora_config is not None  # the model itself is untouched


def folder_path(folder):
    import pathlib

    return pathlib.Path(folder)


@pytest.mark.parametrize("name", ("gemma", "gemma4_tokenizer"))
def test_transformers_tokenizer_gives_our_ids(exported, name):
    model, folder, result = result_of(exported, name)
    tokenizer = model.preprocessor.tokenizer
    for text, ids, decoded in zip(TEXTS, result["ids"], result["decoded"]):
        ours = [int(i) for i in tokenizer.tokenize(text)]
        assert ids == ours, text
        assert decoded == tokenizer.detokenize(ours), text
    assert result["ids_with_bos"][0] == tokenizer.bos_token_id
    written = json.loads((folder_path(folder) / "tokenizer.json").read_text())
    assert result["merges"] == len(written["model"]["merges"])  # it read our tokenizer.json


@pytest.mark.parametrize("kind", ("gemma", "gemma4"))
def test_tokenizer_json_reads_back_as_the_same_tokenizer(kind):
    from keras_gemma.checkpoints import tokenizer_json

    tokenizer = (tokenizer_from_tokenizer_json(DATA / "gemma4_tokenizer") if kind == "gemma4"
                 else keras_gemma.GemmaTokenizer(str(VOCABULARY_PATH)))
    written = tokenizer_json.tokenizer_json_from_proto(tokenizer.proto)
    back = keras_gemma.GemmaTokenizer(tokenizer_json.tokenizer_proto(written, {}))
    for text in TEXTS + ["hello the world of def    \n\n", "aaaa bbbb", "\u2581 x"]:
        assert list(back.tokenize(text)) == list(tokenizer.tokenize(text)), text


@pytest.mark.parametrize("name", ("gemma", "gemma4_tokenizer"))
def test_chat_template_equals_ours(exported, name):
    model, _, result = result_of(exported, name)
    family = chat.chat_family(model.preprocessor.tokenizer)
    for conversation, theirs in zip(CONVERSATIONS, result["chat_templates"]):
        if conversation.get("enable_thinking") and family != "gemma4":
            continue  # no thinking mode: ours refuses, theirs ignores it
        ours = "<bos>" + chat.chat_template(
            conversation["messages"],
            add_generation_prompt=conversation.get("add_generation_prompt", True),
            family=family, enable_thinking=conversation.get("enable_thinking", False))
        assert theirs == ours


def test_folder_files_and_our_reader_reads_it_back(exported):
    _, folder, _ = result_of(exported, "gemma3")
    folder = folder_path(folder)
    names = sorted(p.name for p in folder.iterdir())
    for expected in ("config.json", "model.safetensors.index.json", "tokenizer.model",
                     "tokenizer_config.json", "special_tokens_map.json",
                     "generation_config.json", "chat_template.jinja"):
        assert expected in names
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards == [n for n in names if n.startswith("model-")]
    assert not any(n.startswith(".") for n in os.listdir(folder.parent))  # no staging left
    back = keras_gemma.GemmaCausalLM.from_preset(str(folder))
    model = exported["gemma3"][0]
    np.testing.assert_array_equal(our_logits(back), our_logits(model))


# -- without transformers -------------------------------------------------------


@pytest.mark.parametrize("quantization, dtype, tolerance",
                         [("bf16", "BF16", 2e-2), ("f16", "F16", 2e-3)])
def test_half_precision_export(tmp_path, quantization, dtype, tolerance):
    model = tiny_causal_lm("gemma2")
    folder = hf_export.export_huggingface(model, tmp_path / "half", quantization=quantization)
    header, _ = hf_checkpoint.read_safetensors_header(os.path.join(folder, "model.safetensors"))
    assert {entry["dtype"] for entry in header.values()} == {dtype}
    assert json.loads(open(os.path.join(folder, "config.json")).read())["dtype"] == {
        "bf16": "bfloat16", "f16": "float16"}[quantization]
    config = hf_checkpoint.read_config(folder)
    back = dict(hf_checkpoint.read_weights(folder, config))
    original = files.float_weights(model.backbone)
    assert back.keys() == original.keys()
    for path, value in original.items():
        np.testing.assert_allclose(back[path], value, rtol=tolerance, atol=tolerance)


def test_adapter_only_writes_a_peft_adapter(tmp_path):
    from keras_gemma.checkpoints.peft import load_peft_adapter

    model = lora_causal_lm()
    folder = model.export_to_huggingface(tmp_path / "adapter", adapter_only=True)
    assert sorted(os.listdir(folder)) == ["adapter_config.json", "adapter_model.safetensors"]
    fresh = tiny_causal_lm("gemma3", seed=1)
    load_peft_adapter(fresh.backbone, folder)
    np.testing.assert_allclose(our_logits(fresh), our_logits(model), atol=1e-5)


def test_adapter_only_without_adapter(tmp_path):
    with pytest.raises(ValueError, match="adapter_only=True needs a model with a LoRA"):
        tiny_causal_lm("gemma3").export_to_transformers(tmp_path / "x", adapter_only=True)
    assert not (tmp_path / "x").exists()


def test_int8_model_is_refused(tmp_path):
    from tiny_preset import shared_tiny_preset

    # Built as int8 while loading (quantize() on a built model takes seconds).
    model = keras_gemma.GemmaCausalLM.from_preset(shared_tiny_preset(), quantize="int8")
    with pytest.raises(ValueError, match="quantized to int8, which a Hugging Face"):
        export(model, "hf", tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


def test_family_transformers_cannot_express(tmp_path):
    config = {**TINY_CONFIGS["gemma_mqa"], "attention_logit_soft_cap": 5.0}
    backbone = keras_gemma.GemmaBackbone(**config)
    tokenizer = keras_gemma.GemmaTokenizer(str(VOCABULARY_PATH))
    model = keras_gemma.GemmaCausalLM(backbone, keras_gemma.GemmaCausalLMPreprocessor(tokenizer))
    with pytest.raises(ValueError, match=r"GemmaForCausalLM cannot express .*attention_logit_soft_cap=5.0"):
        hf_export.export_huggingface(model, tmp_path / "capped")
    assert not (tmp_path / "capped").exists()


def test_bad_arguments(tmp_path):
    model = tiny_causal_lm("gemma_mqa")
    with pytest.raises(ValueError, match="Unknown export format 'onnx'"):
        export(model, "onnx", tmp_path / "x")
    with pytest.raises(ValueError, match="Unknown quantization 'q4_0'"):
        export(model, "hf", tmp_path / "x", quantization="q4_0")
    with pytest.raises(ValueError, match="max_shard_size"):
        hf_export.export_huggingface(model, tmp_path / "x", max_shard_size="lots")
    assert hf_export.parse_size("2GB") == 2 * 10**9
    assert hf_export.parse_size("500MiB") == 500 * 2**20
    assert not (tmp_path / "x").exists()


def test_non_empty_destination_needs_overwrite(tmp_path):
    model = tiny_causal_lm("gemma_mqa")
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        model.export_to_huggingface(target)
    assert os.listdir(target) == ["old.txt"]
    model.export_to_huggingface(target, overwrite=True)
    assert "old.txt" not in os.listdir(target) and (target / "config.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's 0o700
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    model = tiny_causal_lm("gemma3")
    real_write = hf_checkpoint.write_safetensors
    calls = []

    def write_then_fail(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("No space left on device")
        real_write(path, tensors, metadata)

    monkeypatch.setattr(hf_checkpoint, "write_safetensors", write_then_fail)
    with pytest.raises(OSError, match="No space left"):
        hf_export.export_huggingface(model, tmp_path / "new", max_shard_size=20_000)
    assert os.listdir(tmp_path) == []
    # An existing export survives a failed overwrite.
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    calls.clear()
    with pytest.raises(OSError, match="No space left"):
        hf_export.export_huggingface(model, existing, overwrite=True, max_shard_size=20_000)
    assert os.listdir(tmp_path) == ["existing"]
    assert os.listdir(existing) == ["config.json"]


def test_name_table_is_the_readers_reversed():
    for name in ("gemma_mqa", "gemma2", "gemma3"):
        config = TINY_CONFIGS[name]
        for path in random_weights(config):
            assert hf_checkpoint.our_name(hf_checkpoint.hf_name(path, config), config) == path
    for kind in ("ple", "moe", "dense"):
        backbone = keras_gemma.GemmaBackbone.from_preset(str(DATA / f"hf_tiny_gemma4_{kind}"))
        config = backbone.get_config()
        for path in files.float_weights(backbone):
            back = hf_checkpoint.gemma4_name(hf_checkpoint.hf_name(path, config), config)
            expected = path.replace("experts/gate/kernel", "experts/gate_up").replace(
                "experts/up/kernel", "experts/gate_up")
            assert back == expected


# -- the command line -------------------------------------------------------------


def test_cli_export(tmp_path, capsys):
    from keras_gemma import cli
    from tiny_preset import shared_tiny_preset

    preset = shared_tiny_preset()
    target = tmp_path / "hf"
    assert cli.main(["export", "--format", "hf", preset, str(target)]) == 0
    config = json.loads((target / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert "wrote" in capsys.readouterr().err
    assert cli.main(["export", "--format", "hf", preset, str(target)]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert cli.main(["export", "--format", "hf", preset, str(target), "--overwrite",
                     "--quantization", "bf16"]) == 0
    assert json.loads((target / "config.json").read_text())["dtype"] == "bfloat16"
    for argv, message in [
        (["--format", "onnx"], "unknown export format"),
        (["--format", "hf", "--quantization", "q8_0"], "--format hf takes f32, f16, bf16"),
        (["--format", "hf", "--adapter-only"], "--adapter-only needs --adapter"),
    ]:
        assert cli.main(["export", preset, str(tmp_path / "new"), *argv]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_cli_reruns_a_format_that_needs_another_backend(tmp_path, monkeypatch, capsys):
    from keras_gemma import cli
    from keras_gemma import export as export_package
    from keras_gemma.export import command

    other = "tensorflow" if os.environ.get("KERAS_BACKEND") != "tensorflow" else "torch"
    module = types.ModuleType("fake_export_format")
    module.__spec__ = importlib.machinery.ModuleSpec("fake_export_format", None)
    module.REQUIRED_BACKEND = other
    module.export_fake = lambda model, destination, quantization=None, overwrite=False: None
    monkeypatch.setitem(sys.modules, "fake_export_format", module)
    monkeypatch.setitem(export_package.FORMATS, "fake", ("fake_export_format", "export_fake"))
    runs = []

    def fake_run(argv, env, check):
        runs.append((argv, env["KERAS_BACKEND"]))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(command.subprocess, "run", fake_run)
    assert cli.main(["export", "--format", "fake", "some_preset", str(tmp_path / "d"),
                     "--overwrite", "--dtype", "bfloat16"]) == 0
    (argv, backend), = runs
    assert backend == other
    assert argv[1:] == ["-m", "keras_gemma", "export", "--format", "fake", "some_preset",
                        str(tmp_path / "d"), "--backend", other, "--dtype", "bfloat16",
                        "--overwrite"]
    assert f"KERAS_BACKEND={other}" in capsys.readouterr().err


def test_reader_takes_transformers_5_rope_parameters():
    # What transformers 5's save_pretrained writes for Gemma 1 and 2.
    for model_type in ("gemma", "gemma2"):
        hf = {"model_type": model_type, "vocab_size": 640, "num_hidden_layers": 2,
              "num_attention_heads": 4, "hidden_size": 32, "intermediate_size": 64,
              "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}}
        assert hf_checkpoint.config_from_hf(hf)["rope_max_wavelength"] == 5000.0


def test_bfloat16_model_is_written_as_bfloat16(tmp_path):
    from tiny_preset import shared_tiny_preset

    model = keras_gemma.GemmaCausalLM.from_preset(shared_tiny_preset("bfloat16"))
    folder = hf_export.export_huggingface(model, tmp_path / "bf16")
    header, _ = hf_checkpoint.read_safetensors_header(os.path.join(folder, "model.safetensors"))
    assert {entry["dtype"] for entry in header.values()} == {"BF16"}
    back = keras_gemma.GemmaBackbone.from_preset(folder, dtype="bfloat16")
    for ours, theirs in zip(model.backbone.weights, back.weights):
        np.testing.assert_array_equal(to_numpy(ours.value).astype("float32"),
                                      to_numpy(theirs.value).astype("float32"))


@pytest.mark.slow
def test_real_gemma3_270m_export(tmp_path):
    """The shipped gemma3_270m, exported and loaded by transformers (about a
    minute and 4 GB)."""
    if not have_transformers:
        pytest.skip("transformers is not installed")
    model = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m", dtype="float32")
    folder = model.export_to_huggingface(tmp_path / "gemma3_270m")
    request = {"folders": [folder], "token_ids": TOKEN_IDS.tolist(),
               "padding_mask": PADDING_MASK.tolist(), "prompt": PROMPT,
               "max_new_tokens": NEW_TOKENS, "texts": TEXTS,
               "conversations": CONVERSATIONS}
    (tmp_path / "request.json").write_text(json.dumps(request))
    subprocess.run([sys.executable, str(TESTS_DIR / "hf_export_oracle.py"),
                    str(tmp_path / "request.json"), str(tmp_path / "result.json")],
                   check=True, timeout=900,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    result = json.loads((tmp_path / "result.json").read_text())[folder]
    assert "error" not in result, result["error"]
    ours, argmax = logits_and_argmax_after(model, result["greedy"])
    theirs = np.asarray(result["logits"], dtype="float32")
    error = np.abs(theirs[PADDING_MASK] - ours[PADDING_MASK]).max()
    print(f"gemma3_270m: largest logit difference {error:.2e}")
    assert error < 1e-3
    assert argmax == result["greedy"]
    tokenizer = model.preprocessor.tokenizer
    for text, ids in zip(TEXTS, result["ids"]):
        assert ids == [int(i) for i in tokenizer.tokenize(text)], text
