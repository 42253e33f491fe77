"""peft LoRA adapters (`keras_gemma.checkpoints.peft`).

- Import: tests/data/peft_tiny_adapter/ was written by Hugging Face peft for
  the tiny "gemma_mqa" transformers model, and tests/data/peft_oracle.npz holds
  that peft model's logits (tests/data/make_peft_oracle.py).
- Export: our adapter files must carry peft's names, shapes and config, load
  back into our model, and (when peft is installed) load into real peft.
- Errors: every refusal names the file and the reason.
"""

import json
import pathlib
import shutil
import sys
import warnings

import numpy as np
import pytest
from conftest import TESTS_DIR, to_numpy
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights

import keras_gemma
from keras_gemma import lora
from keras_gemma.backbone import skip_weight_initialization
from keras_gemma.checkpoints import assign_weights
from keras_gemma.checkpoints import peft as peft_io
from keras_gemma.checkpoints.huggingface import _to_array, read_safetensors_header

DATA = TESTS_DIR / "data"
ADAPTER = DATA / "peft_tiny_adapter"
ORACLE = np.load(DATA / "peft_oracle.npz")
TOLERANCE = 1e-4
TARGET = ["query", "value", "down"]  # what make_peft_oracle.py adapts


def tiny_backbone(name="gemma_mqa", weights=True):
    config = TINY_CONFIGS[name]
    if not weights:  # zeros: drawing random ones is slow on JAX
        with skip_weight_initialization():
            return keras_gemma.GemmaBackbone(**config)
    backbone = keras_gemma.GemmaBackbone(**config)
    assign_weights(backbone, random_weights(config), "tiny_models")
    return backbone


def logits(backbone):
    hidden = backbone({"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK})
    return to_numpy(backbone.compute_logits(hidden))


def read_tensors(path):
    header, offset = read_safetensors_header(path)
    data = np.fromfile(path, dtype="uint8")[offset:]
    return {name: np.array(_to_array(data, entry, name, path))
            for name, entry in header.items()}


def copy_adapter(tmp_path, config_edits=None, tensor_edit=None):
    """A copy of the peft-written adapter, with edits."""
    folder = tmp_path / "adapter"
    shutil.copytree(ADAPTER, folder)
    if config_edits:
        config = json.loads((folder / peft_io.CONFIG_FILE).read_text())
        config.update(config_edits)
        (folder / peft_io.CONFIG_FILE).write_text(json.dumps(config))
    if tensor_edit:
        path = folder / peft_io.WEIGHTS_FILE
        tensors = read_tensors(path)
        tensor_edit(tensors)
        peft_io._write_safetensors(path, tensors)
    return folder


def randomize_lora(backbone, seed=7):
    rng = np.random.default_rng(seed)
    for _, _, layer in lora.target_layers(backbone, backbone.lora_config["target"]):
        for variable in (layer.lora_kernel_a, layer.lora_kernel_b):
            variable.assign((rng.standard_normal(variable.shape) * 0.2).astype("float32"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(folder, our logits) of an adapter we export, with random A and B."""
    backbone = tiny_backbone()
    backbone.enable_lora(4, alpha=6, target=("query", "value", "down"))
    randomize_lora(backbone)
    folder = tmp_path_factory.mktemp("export") / "adapter"
    peft_io.save_peft_adapter(backbone, folder, base_model_name_or_path="tiny/gemma")
    return folder, logits(backbone)


# -- import --------------------------------------------------------------------


def test_peft_adapter_gives_peft_logits():
    backbone = tiny_backbone()
    base = logits(backbone)
    peft_io.load_peft_adapter(backbone, ADAPTER)
    assert backbone.lora_config == {"rank": 4, "alpha": 8.0, "target": TARGET}
    result = logits(backbone)
    expected = ORACLE["logits"]
    assert result.shape == expected.shape
    np.testing.assert_allclose(result[PADDING_MASK], expected[PADDING_MASK],
                               atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(result, expected, atol=TOLERANCE, rtol=0)
    # The adapter matters, so the comparison above can fail.
    assert np.abs(base - expected).max() > 0.1


def test_loading_again_with_the_same_settings_overwrites():
    backbone = tiny_backbone()
    backbone.enable_lora(4, alpha=8, target=TARGET)
    randomize_lora(backbone)
    peft_io.load_peft_adapter(backbone, ADAPTER)
    np.testing.assert_allclose(logits(backbone), ORACLE["logits"], atol=TOLERANCE, rtol=0)


def test_rslora_scales_by_square_root_of_rank(tmp_path):
    backbone = tiny_backbone()
    peft_io.load_peft_adapter(backbone, copy_adapter(tmp_path, {"use_rslora": True}))
    # peft's scaling lora_alpha / sqrt(r) = 8 / 2 is our alpha / rank.
    assert backbone.lora_config["alpha"] / backbone.lora_config["rank"] == pytest.approx(4.0)


def test_adapter_name_and_all_linear_are_read(tmp_path):
    """peft names tensors "...lora_A.<adapter>.weight" in memory; some tools
    save them so. "all-linear" is peft's every-projection shorthand."""
    def rename(tensors):
        for name in list(tensors):
            tensors[name.replace(".weight", ".default.weight")] = tensors.pop(name)

    folder = copy_adapter(tmp_path, tensor_edit=rename)
    backbone = tiny_backbone()
    peft_io.load_peft_adapter(backbone, folder)
    np.testing.assert_allclose(logits(backbone), ORACLE["logits"], atol=TOLERANCE, rtol=0)

    folder = copy_adapter(tmp_path / "all", {"target_modules": "all-linear"})
    with pytest.raises(ValueError, match="no lora_A for layers.0.self_attn.k_proj"):
        peft_io.load_peft_adapter(tiny_backbone(), folder)


# -- export ------------------------------------------------------------------------


def test_export_loads_back(exported):
    folder, expected = exported
    backbone = tiny_backbone()
    peft_io.load_peft_adapter(backbone, folder)
    assert backbone.lora_config == {"rank": 4, "alpha": 6.0, "target": TARGET}
    np.testing.assert_allclose(logits(backbone), expected, atol=1e-6, rtol=0)


def test_export_has_peft_names_shapes_and_config(exported):
    folder, _ = exported
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    ours, _ = read_safetensors_header(folder / peft_io.WEIGHTS_FILE)
    theirs, _ = read_safetensors_header(ADAPTER / peft_io.WEIGHTS_FILE)
    assert {k: (v["dtype"], v["shape"]) for k, v in ours.items()} == {
        k: (v["dtype"], v["shape"]) for k, v in theirs.items()}

    raw = (folder / peft_io.WEIGHTS_FILE).read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    assert header_length % 8 == 0
    header = json.loads(raw[8:8 + header_length])
    assert header["__metadata__"] == {"format": "pt"}
    assert len(raw) == 8 + header_length + max(
        v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")

    config = json.loads((folder / peft_io.CONFIG_FILE).read_text())
    peft_config = json.loads((ADAPTER / peft_io.CONFIG_FILE).read_text())
    assert set(config) - set(peft_config) == set()  # nothing peft lacks
    assert config["peft_type"] == "LORA" and config["bias"] == "none"
    assert config["r"] == 4 and config["lora_alpha"] == 6
    assert sorted(config["target_modules"]) == sorted(peft_config["target_modules"])
    assert config["base_model_name_or_path"] == "tiny/gemma"


def test_export_into_existing_folder_keeps_other_files(tmp_path):
    backbone = tiny_backbone()
    backbone.enable_lora(2, target=("key", "output", "gate", "up"))
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "README.md").write_text("notes")
    peft_io.save_peft_adapter(backbone, folder)
    peft_io.save_peft_adapter(backbone, folder)  # overwrites
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging left
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]
    header, _ = read_safetensors_header(folder / peft_io.WEIGHTS_FILE)
    assert header["base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight"][
        "shape"] == [2, 64]
    assert header["base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight"][
        "shape"] == [64, 2]
    fresh = tiny_backbone()
    peft_io.load_peft_adapter(fresh, folder)
    assert fresh.lora_config == backbone.lora_config


def test_export_loads_in_real_peft(exported):
    """The one test that imports torch, transformers and peft (~15 s)."""
    pytest.importorskip("peft")
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(DATA))
    try:
        import make_peft_oracle
    finally:
        sys.path.remove(str(DATA))
    import peft

    folder, expected = exported
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(make_peft_oracle.base_model(), str(folder))
    problems = [str(w.message) for w in caught
                if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert not problems, problems
    model.eval()
    with torch.no_grad():
        result = model(input_ids=torch.from_numpy(TOKEN_IDS).long(),
                       attention_mask=torch.from_numpy(PADDING_MASK).long()).logits.numpy()
    np.testing.assert_allclose(result, expected, atol=TOLERANCE, rtol=0)


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize("edits, message", [
    ({"target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]},
     "target module 'lm_head'"),
    ({"target_modules": r".*\.(q_proj|v_proj)"}, "regular expression"),
    ({"target_modules": ["q_proj", "down_proj"]}, "does not list in target_modules"),
    ({"bias": "lora_only"}, "bias is 'lora_only'"),
    ({"peft_type": "PREFIX_TUNING"}, "only LoRA adapters"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"layers_to_transform": [0]}, "layers_to_transform"),
    ({"use_dora": True}, "DoRA"),
    ({"r": 0}, "r must be an integer"),
])
def test_unsupported_configs_are_refused(tmp_path, edits, message):
    folder = copy_adapter(tmp_path, edits)
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match=message) as error:
        peft_io.load_peft_adapter(backbone, folder)
    assert "adapter_config.json" in str(error.value) or "adapter_model" in str(error.value)
    assert backbone.lora_config is None  # untouched


def _wrong_rank(tensors):
    name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors[name] = tensors[name][:, :3]


def _unknown_tensor(tensors):
    tensors["base_model.model.lm_head.lora_A.weight"] = np.zeros((4, 32), "float32")


def _missing_layer(tensors):
    del tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"]


@pytest.mark.parametrize("edit, message", [
    (_wrong_rank, r"layers.1.self_attn.v_proj.lora_B.weight' has shape \(16, 3\).*"
                  r"decoder_block_1/attention/value.* needs \(16, 4\)"),
    (_unknown_tensor, "lm_head.lora_A.weight' is not a LoRA factor"),
    (_missing_layer, "no lora_A for layers.1.mlp.down_proj"),
])
def test_tensors_that_do_not_fit_are_refused(tmp_path, edit, message):
    folder = copy_adapter(tmp_path, tensor_edit=edit)
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match=message) as error:
        peft_io.load_peft_adapter(backbone, folder)
    assert "adapter_model.safetensors" in str(error.value)
    assert backbone.lora_config is None


def test_adapter_for_another_architecture_is_refused():
    backbone = tiny_backbone("gemma_mha", weights=False)  # hidden 24, not 32
    with pytest.raises(ValueError, match=r"has shape \(4, 32\).*needs \(4, 24\)"):
        peft_io.load_peft_adapter(backbone, ADAPTER)
    assert backbone.lora_config is None


def test_missing_files_are_refused(tmp_path):
    folder = copy_adapter(tmp_path)
    (folder / peft_io.WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        peft_io.load_peft_adapter(tiny_backbone(), folder)
    (folder / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="adapter_model.bin"):
        peft_io.load_peft_adapter(tiny_backbone(), folder)
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        peft_io.load_peft_adapter(tiny_backbone(), tmp_path / "nowhere")


def test_model_with_other_lora_settings_is_refused():
    backbone = tiny_backbone()
    backbone.enable_lora(2, target=("query",))
    with pytest.raises(ValueError, match="already has LoRA") as error:
        peft_io.load_peft_adapter(backbone, ADAPTER)
    assert "peft_tiny_adapter" in str(error.value)
    backbone = tiny_backbone()
    backbone.enable_lora(4, alpha=16, target=TARGET)  # only alpha differs
    with pytest.raises(ValueError, match="already has LoRA"):
        peft_io.load_peft_adapter(backbone, ADAPTER)


def test_saving_without_lora_is_refused(tmp_path):
    with pytest.raises(ValueError, match="LoRA is not enabled"):
        peft_io.save_peft_adapter(tiny_backbone(), tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
