"""Writes two tiny full Gemma 3 (Gemma3ForConditionalGeneration) folders,
text model plus a tiny SigLIP vision tower, and the logits transformers'
multimodal model gives for text-only input:

- tests/data/hf_tiny_gemma3_multimodal: the tensor names of the published
  checkpoints (google/gemma-3-4b-it etc.): ``language_model.model.*``,
  ``vision_tower.vision_model.*``, ``multi_modal_projector.*``;
- tests/data/hf_tiny_gemma3_multimodal_v5: what transformers 5's
  save_pretrained writes (``model.language_model.*``, ``model.vision_tower.*``).
- tests/data/multimodal_oracle.npz: the logits.

The text weights are those of the "gemma3" tiny config (tests/tiny_models.py),
so both folders hold the model of tests/data/hf_tiny_gemma3.

Run from the repository root:  python tests/data/make_hf_multimodal.py
"""

import json
import pathlib
import shutil
import sys

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights  # noqa: E402
from make_hf_oracle import hf_config, hf_state_dict  # noqa: E402


def main():
    import safetensors.torch
    import transformers

    c = TINY_CONFIGS["gemma3"]
    text_config, _ = hf_config("gemma3", c)
    vision_config = transformers.SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, image_size=28, patch_size=14,
    )
    config = transformers.Gemma3Config(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
        mm_tokens_per_image=1, image_token_index=c["vocabulary_size"] - 1,
    )
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    text_state = hf_state_dict("gemma3", c, random_weights(c))
    language_model = model.model.language_model
    missing, unexpected = language_model.load_state_dict(
        {k.removeprefix("model."): v for k, v in text_state.items()}, strict=False
    )
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        logits = model(
            input_ids=torch.from_numpy(TOKEN_IDS).long(),
            attention_mask=torch.from_numpy(PADDING_MASK).long(),
        ).logits.numpy()
    np.savez_compressed(HERE / "multimodal_oracle.npz", logits=logits,
                        transformers_version=transformers.__version__)

    v5 = HERE / "hf_tiny_gemma3_multimodal_v5"
    model.save_pretrained(v5)
    shutil.copy(HERE / "test_vocabulary.spm", v5 / "tokenizer.model")

    # The published checkpoints' names.
    published = HERE / "hf_tiny_gemma3_multimodal"
    published.mkdir(exist_ok=True)
    state = safetensors.torch.load_file(str(v5 / "model.safetensors"))
    renamed = {}
    for name, tensor in state.items():
        for new, old in [("model.language_model.", "language_model.model."),
                         ("model.vision_tower.", "vision_tower."),
                         ("model.multi_modal_projector.", "multi_modal_projector.")]:
            if name.startswith(new):
                name = old + name[len(new):]
        if name != "lm_head.weight":  # tied to the embedding
            renamed[name] = tensor.contiguous()
    safetensors.torch.save_file(renamed, str(published / "model.safetensors"),
                                metadata={"format": "pt"})
    (published / "config.json").write_text((v5 / "config.json").read_text())
    shutil.copy(HERE / "test_vocabulary.spm", published / "tokenizer.model")
    print(sorted(renamed)[:3], sorted(state)[:3])
    print("max |logits|", float(np.abs(logits).max()))
    hf = np.load(HERE / "hf_oracle.npz")["gemma3"]
    print("max diff to the text-only oracle", float(np.abs(hf - logits).max()))


if __name__ == "__main__":
    main()
