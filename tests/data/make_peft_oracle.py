"""Writes tests/data/peft_tiny_adapter/ and tests/data/peft_oracle.npz: a LoRA
adapter saved by Hugging Face peft for the tiny "gemma_mqa" transformers model
of tests/tiny_models.py, and that peft model's logits.

Run from the repository root:  python tests/data/make_peft_oracle.py
Needs torch, transformers and peft. The base weights are the seeded ones of
tests/tiny_models.py, mapped to transformers by tests/data/make_hf_oracle.py.
"""

import pathlib
import shutil
import sys

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tiny_models
sys.path.insert(0, str(HERE))  # make_hf_oracle
from make_hf_oracle import hf_config, hf_state_dict  # noqa: E402
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights  # noqa: E402

import peft  # noqa: E402
import transformers  # noqa: E402

NAME = "gemma_mqa"
RANK, ALPHA = 4, 8
TARGET_MODULES = ["q_proj", "v_proj", "down_proj"]
ADAPTER_FOLDER = HERE / "peft_tiny_adapter"
ORACLE_PATH = HERE / "peft_oracle.npz"


def base_model():
    """The transformers GemmaForCausalLM with the tiny seeded weights."""
    c = TINY_CONFIGS[NAME]
    config, model_class = hf_config(NAME, c)
    model = model_class(config).eval()
    missing, unexpected = model.load_state_dict(
        hf_state_dict(NAME, c, random_weights(c)), strict=False
    )
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model


def logits_of(model):
    with torch.no_grad():
        return model(
            input_ids=torch.from_numpy(TOKEN_IDS).long(),
            attention_mask=torch.from_numpy(PADDING_MASK).long(),
        ).logits.numpy().astype("float32")


def main():
    torch.manual_seed(0)
    model = base_model()
    base_logits = logits_of(model)
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA,
                             target_modules=TARGET_MODULES, lora_dropout=0.0)
    model = peft.get_peft_model(model, config).eval()
    # peft starts lora_B at zero (a no-op adapter); make both factors
    # seeded and non-zero so the test sees the adapter.
    rng = np.random.default_rng(2024)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if ".lora_A." in name or ".lora_B." in name:
                value = rng.standard_normal(tuple(parameter.shape)) * 0.2
                parameter.copy_(torch.from_numpy(value.astype("float32")))
    logits = logits_of(model)
    effect = float(np.abs(logits - base_logits).max())
    assert effect > 0.1, f"the adapter barely changes the logits ({effect})"

    if ADAPTER_FOLDER.exists():
        shutil.rmtree(ADAPTER_FOLDER)
    model.save_pretrained(ADAPTER_FOLDER)
    readme = ADAPTER_FOLDER / "README.md"  # a model card template; not needed
    if readme.exists():
        readme.unlink()
    np.savez_compressed(ORACLE_PATH, logits=logits,
                        transformers_version=transformers.__version__,
                        peft_version=peft.__version__)
    print("adapter effect on logits (max abs):", effect)
    print("wrote", ADAPTER_FOLDER, "and", ORACLE_PATH)


if __name__ == "__main__":
    main()
