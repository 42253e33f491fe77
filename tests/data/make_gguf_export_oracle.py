"""Writes tests/data/gguf_export_oracle.npz: transformers' reading of our GGUF
exports of the tiny models in tests/gguf_export_models.py (ORACLE_CONFIGS).

For each architecture (transformers reads gemma2 and gemma3 GGUF files, not
Gemma 1) and quantization (f32, q8_0) the model is exported with
keras_gemma.export.gguf, loaded with
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`` and run on
tests/tiny_models.TOKEN_IDS; its float32 logits are stored as
``{arch}_{quantization}``. ``AutoTokenizer.from_pretrained(folder,
gguf_file=name)`` encodes TEXTS (ids stored as ``tokens_{i}``).

Run from the repository root (about two minutes; importing transformers
takes most of it):

    KERAS_BACKEND=jax python tests/data/make_gguf_export_oracle.py
"""

import pathlib
import sys
import tempfile

import numpy as np

TESTS = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from gguf_export_models import ORACLE_CONFIGS, TEXTS, tiny_causal_lm  # noqa: E402
from tiny_models import PADDING_MASK, TOKEN_IDS  # noqa: E402

from keras_gemma.export.gguf import export_gguf  # noqa: E402

QUANTIZATIONS = ("f32", "q8_0")


def main():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = {"token_ids": TOKEN_IDS, "padding_mask": PADDING_MASK}
    with tempfile.TemporaryDirectory() as folder:
        for architecture, config in ORACLE_CONFIGS.items():
            model = tiny_causal_lm(config)
            for quantization in QUANTIZATIONS:
                name = f"{architecture}_{quantization}.gguf"
                export_gguf(model, f"{folder}/{name}", quantization=quantization)
                hf = AutoModelForCausalLM.from_pretrained(
                    folder, gguf_file=name, dtype=torch.float32
                ).eval()
                with torch.no_grad():
                    logits = hf(
                        input_ids=torch.tensor(TOKEN_IDS, dtype=torch.long),
                        attention_mask=torch.tensor(PADDING_MASK, dtype=torch.long),
                    ).logits
                results[f"{architecture}_{quantization}"] = logits.float().numpy()
                print(name, hf.config.model_type, logits.shape)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="gemma3_f32.gguf")
        for index, text in enumerate(TEXTS):
            results[f"tokens_{index}"] = np.asarray(
                tokenizer.encode(text, add_special_tokens=False), np.int32
            )
    output = TESTS / "data" / "gguf_export_oracle.npz"
    np.savez_compressed(output, **results)
    print("wrote", output)


if __name__ == "__main__":
    main()
