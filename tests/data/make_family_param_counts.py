"""Writes tests/data/family_param_counts.json: transformers' parameter count
of each Gemma-family checkpoint's published config, the model built on the
meta device (no memory, no download).

Run from the repository root:  python tests/data/make_family_param_counts.py

The architecture keys below are the published ``config.json`` values of each
Hugging Face repository (``text_config`` for the multimodal Gemma 3 ones),
written out here independently of presets/*.json. CodeGemma and ShieldGemma
repeat the Gemma 1 / Gemma 2 configs of their size; FunctionGemma repeats
gemma-3-270m's; MedGemma 27B text and TranslateGemma 4B repeat Gemma 3
27B's and 4B's.
"""

import json
import pathlib

import torch
import transformers

GEMMA_2B = dict(vocab_size=256000, num_hidden_layers=18, num_attention_heads=8,
                num_key_value_heads=1, hidden_size=2048, intermediate_size=16384,
                head_dim=256)
GEMMA_7B = dict(vocab_size=256000, num_hidden_layers=28, num_attention_heads=16,
                num_key_value_heads=16, hidden_size=3072, intermediate_size=24576,
                head_dim=256)
GEMMA2 = dict(vocab_size=256000, sliding_window=4096, attn_logit_softcapping=50.0,
              final_logit_softcapping=30.0)
GEMMA2_2B = dict(GEMMA2, num_hidden_layers=26, num_attention_heads=8,
                 num_key_value_heads=4, hidden_size=2304, intermediate_size=9216,
                 head_dim=256, query_pre_attn_scalar=256)
GEMMA2_9B = dict(GEMMA2, num_hidden_layers=42, num_attention_heads=16,
                 num_key_value_heads=8, hidden_size=3584, intermediate_size=14336,
                 head_dim=256, query_pre_attn_scalar=256)
GEMMA2_27B = dict(GEMMA2, num_hidden_layers=46, num_attention_heads=32,
                  num_key_value_heads=16, hidden_size=4608, intermediate_size=36864,
                  head_dim=128, query_pre_attn_scalar=144)
GEMMA3 = dict(sliding_window=1024, rope_scaling={"rope_type": "linear", "factor": 8.0},
              max_position_embeddings=131072)
# vocab_size 262208: the multimodal checkpoints' embedding includes image tokens.
GEMMA3_4B = dict(GEMMA3, vocab_size=262208, num_hidden_layers=34, num_attention_heads=8,
                 num_key_value_heads=4, hidden_size=2560, intermediate_size=10240,
                 head_dim=256, query_pre_attn_scalar=256)
GEMMA3_12B = dict(GEMMA3, vocab_size=262208, num_hidden_layers=48,
                  num_attention_heads=16, num_key_value_heads=8, hidden_size=3840,
                  intermediate_size=15360, head_dim=256, query_pre_attn_scalar=256)
GEMMA3_27B = dict(GEMMA3, vocab_size=262208, num_hidden_layers=62,
                  num_attention_heads=32, num_key_value_heads=16, hidden_size=5376,
                  intermediate_size=21504, head_dim=128, query_pre_attn_scalar=168)
GEMMA3_270M = dict(vocab_size=262144, num_hidden_layers=18, num_attention_heads=4,
                   num_key_value_heads=1, hidden_size=640, intermediate_size=2048,
                   head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                   max_position_embeddings=32768)

CONFIGS = {
    "google/codegemma-2b": ("gemma", GEMMA_2B),
    "google/codegemma-1.1-2b": ("gemma", GEMMA_2B),
    "google/codegemma-7b": ("gemma", GEMMA_7B),
    "google/codegemma-7b-it": ("gemma", GEMMA_7B),
    "google/codegemma-1.1-7b-it": ("gemma", GEMMA_7B),
    "google/shieldgemma-2b": ("gemma2", GEMMA2_2B),
    "google/shieldgemma-9b": ("gemma2", GEMMA2_9B),
    "google/shieldgemma-27b": ("gemma2", GEMMA2_27B),
    "google/gemma-3-4b-pt": ("gemma3", GEMMA3_4B),
    "google/gemma-3-4b-it": ("gemma3", GEMMA3_4B),
    "google/gemma-3-12b-pt": ("gemma3", GEMMA3_12B),
    "google/gemma-3-12b-it": ("gemma3", GEMMA3_12B),
    "google/gemma-3-27b-pt": ("gemma3", GEMMA3_27B),
    "google/gemma-3-27b-it": ("gemma3", GEMMA3_27B),
    # Gemma3ForCausalLM, text only: its vocabulary has no image tokens.
    "google/medgemma-27b-text-it": ("gemma3", dict(GEMMA3_27B, vocab_size=262144)),
    "google/translategemma-4b-it": ("gemma3", GEMMA3_4B),
    "google/functiongemma-270m-it": ("gemma3", GEMMA3_270M),
}
CLASSES = {
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
}


def count(family, hf):
    config_class, model_class = CLASSES[family]
    config = config_class(**hf)
    with torch.device("meta"):
        model = model_class(config)
    # parameters() yields the tied lm_head / embedding matrix once.
    return sum(p.numel() for p in model.parameters())


def main():
    out = {"transformers_version": transformers.__version__, "counts": {}}
    for repo, (family, hf) in CONFIGS.items():
        entry = {"family": family, "config": hf, "parameters": count(family, hf)}
        if hf["vocab_size"] != 262144 and family == "gemma3":
            entry["text_vocabulary_parameters"] = count(family, dict(hf, vocab_size=262144))
        out["counts"][repo] = entry
        print(repo, entry["parameters"], entry.get("text_vocabulary_parameters"))
    path = pathlib.Path(__file__).with_name("family_param_counts.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
