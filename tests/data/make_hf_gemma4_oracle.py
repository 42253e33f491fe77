"""Writes the Gemma 4 oracle data of tests/test_gemma4.py, from transformers.

- tests/data/hf_tiny_gemma4_<name>/: tiny random Gemma 4 models saved by
  transformers' ``save_pretrained`` (every weight random: norms, router
  scales and layer scalars too), plus the test SentencePiece vocabulary as
  tokenizer.model. Recent transformers writes the full layers' head size and
  key/value heads as ``per_layer_config``; Google's published config.json
  files say ``global_head_dim`` / ``num_global_key_value_heads`` (see
  gemma4_parameter_counts.json), and the reader takes both;
- tests/data/hf_gemma4_oracle.npz: their logits on a right-padded batch of
  2 prompts longer than the sliding window, and greedy continuations from
  ``generate``;
- tests/data/gemma4_parameter_counts.json: the published Gemma 4 text
  configs and the parameter count of ``Gemma4ForCausalLM`` built from each
  on the meta device.

Run from the repository root:  python tests/data/make_hf_gemma4_oracle.py
"""

import json
import pathlib
import shutil

import numpy as np
import torch
import transformers

DATA = pathlib.Path(__file__).resolve().parent
VOCABULARY_SIZE = 640  # tests/data/test_vocabulary.spm
TOKEN_IDS = np.array(
    [
        [2, 17, 230, 45, 88, 301, 9, 77, 412, 53, 600, 31],
        [2, 99, 5, 160, 271, 42, 0, 0, 0, 0, 0, 0],
    ],
    dtype="int64",
)
PADDING_MASK = (TOKEN_IDS != 0).astype("int64")
GREEDY_NEW_TOKENS = 8

S, F = "sliding_attention", "full_attention"
# RoPE of every published Gemma 4 model.
PUBLISHED_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                       "rope_theta": 1_000_000.0},
}
COMMON = dict(
    vocab_size=VOCABULARY_SIZE, hidden_size=32, num_attention_heads=4,
    head_dim=16, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
    sliding_window=4, final_logit_softcapping=30.0, pad_token_id=0,
    bos_token_id=2, eos_token_id=1, max_position_embeddings=64,
    attn_implementation="eager",
)
TINY = {
    # E2B-like: per-layer embeddings, KV sharing (4 shared layers, of both
    # types), double-wide MLP on the shared layers, 4 sliding : 1 full.
    "ple": dict(
        COMMON, num_hidden_layers=10, num_key_value_heads=2,
        intermediate_size=48, global_head_dim=32,
        layer_types=[S, S, S, S, F] * 2, num_kv_shared_layers=4,
        use_double_wide_mlp=True, hidden_size_per_layer_input=4,
        vocab_size_per_layer_input=VOCABULARY_SIZE,
        rope_parameters=PUBLISHED_ROPE,
    ),
    # 26B-A4B-like: expert mixture (top 2 of 8) beside the dense MLP, full
    # layers with K = V and their own (fewer) key/value heads.
    "moe": dict(
        COMMON, num_hidden_layers=4, num_key_value_heads=2,
        num_global_key_value_heads=1, intermediate_size=40, global_head_dim=32,
        layer_types=[S, S, S, F], attention_k_eq_v=True,
        hidden_size_per_layer_input=0, enable_moe_block=True, num_experts=8,
        top_k_experts=2, moe_intermediate_size=12,
        rope_parameters=PUBLISHED_ROPE,
    ),
    # 31B-like dense: proportional RoPE (half the head), global head size
    # and RoPE base different from the sliding layers', 5 : 1 pattern.
    "dense": dict(
        COMMON, num_hidden_layers=6, num_key_value_heads=1,
        intermediate_size=64, global_head_dim=24,
        layer_types=[S, S, S, S, S, F], hidden_size_per_layer_input=0,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 500.0},
            "full_attention": {"rope_type": "proportional",
                               "partial_rotary_factor": 0.5, "rope_theta": 20_000.0},
        },
    ),
}
# Saved as the multimodal class (text weights under model.language_model.).
AS_CONDITIONAL_GENERATION = {"moe"}
# Stored in bfloat16 (half the bytes); their weights are rounded to bfloat16
# values first, so the float32 oracle and the stored tensors agree exactly.
STORED_AS_BFLOAT16 = {"ple", "moe"}

# Published text configs (config.json "text_config" of google/gemma-4-*;
# the same in keras-hub's and other readers' copies; see presets/gemma4_*.json).
PUBLISHED = {
    "gemma-4-E2B": dict(
        vocab_size=262_144, hidden_size=1536, intermediate_size=6144,
        num_hidden_layers=35, num_attention_heads=8, num_key_value_heads=1,
        head_dim=256, global_head_dim=512, sliding_window=512,
        layer_types=[S, S, S, S, F] * 7, num_kv_shared_layers=20,
        use_double_wide_mlp=True, hidden_size_per_layer_input=256,
        vocab_size_per_layer_input=262_144, attention_k_eq_v=False,
        final_logit_softcapping=30.0, max_position_embeddings=131_072,
        rope_parameters=PUBLISHED_ROPE,
    ),
    "gemma-4-E4B": dict(
        vocab_size=262_144, hidden_size=2560, intermediate_size=10_240,
        num_hidden_layers=42, num_attention_heads=8, num_key_value_heads=2,
        head_dim=256, global_head_dim=512, sliding_window=512,
        layer_types=[S] * 5 + [F] + ([S] * 5 + [F]) * 6, num_kv_shared_layers=18,
        use_double_wide_mlp=False, hidden_size_per_layer_input=256,
        vocab_size_per_layer_input=262_144, attention_k_eq_v=False,
        final_logit_softcapping=30.0, max_position_embeddings=131_072,
        rope_parameters=PUBLISHED_ROPE,
    ),
    "gemma-4-26B-A4B": dict(
        vocab_size=262_144, hidden_size=2816, intermediate_size=2112,
        num_hidden_layers=30, num_attention_heads=16, num_key_value_heads=8,
        num_global_key_value_heads=2, head_dim=256, global_head_dim=512,
        sliding_window=1024, layer_types=([S] * 5 + [F]) * 5,
        num_kv_shared_layers=0, hidden_size_per_layer_input=0,
        attention_k_eq_v=True, enable_moe_block=True, num_experts=128,
        top_k_experts=8, moe_intermediate_size=704,
        final_logit_softcapping=30.0, max_position_embeddings=262_144,
        rope_parameters=PUBLISHED_ROPE,
    ),
    "gemma-4-31B": dict(
        vocab_size=262_144, hidden_size=5376, intermediate_size=21_504,
        num_hidden_layers=60, num_attention_heads=32, num_key_value_heads=16,
        num_global_key_value_heads=4, head_dim=256, global_head_dim=512,
        sliding_window=1024, layer_types=([S] * 5 + [F]) * 10,
        num_kv_shared_layers=0, hidden_size_per_layer_input=0,
        attention_k_eq_v=True, final_logit_softcapping=30.0,
        max_position_embeddings=262_144, rope_parameters=PUBLISHED_ROPE,
    ),
}


def randomize(model, seed):
    """Every weight random, including those initialized to 0 or 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("inv_freq") or "embed_scale" in name:
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if "norm" in name or name.endswith(("scale", "layer_scalar")):
                tensor.copy_(1.0 + 0.3 * noise)  # around Gemma 4's identity
            elif "embed_tokens" in name:
                tensor.copy_(0.1 * noise)
            else:
                fan_in = tensor.shape[-1]
                tensor.copy_(1.2 * noise / fan_in**0.5)


def text_config(c):
    c = dict(c)
    attn = c.pop("attn_implementation", "eager")
    config = transformers.Gemma4TextConfig(**c)
    config._attn_implementation = attn
    return config


def main():
    outputs = {}
    for index, (name, c) in enumerate(TINY.items()):
        config = text_config(c)
        if name in AS_CONDITIONAL_GENERATION:
            full = transformers.Gemma4Config(text_config=config, vision_config=None,
                                             audio_config=None)
            full._attn_implementation = "eager"
            model = transformers.Gemma4ForConditionalGeneration(full).eval()
        else:
            model = transformers.Gemma4ForCausalLM(config).eval()
        randomize(model, seed=index)
        if name in STORED_AS_BFLOAT16:
            with torch.no_grad():
                for tensor in [*model.parameters(), *(
                        b for n, b in model.named_buffers() if n.endswith("layer_scalar"))]:
                    tensor.copy_(tensor.to(torch.bfloat16).float())
        model.tie_weights()
        with torch.no_grad():
            logits = model(
                input_ids=torch.from_numpy(TOKEN_IDS),
                attention_mask=torch.from_numpy(PADDING_MASK),
            ).logits
            greedy = []
            for row, mask in zip(TOKEN_IDS, PADDING_MASK):
                prompt = torch.from_numpy(row[mask.astype(bool)][None])
                out = model.generate(
                    prompt, max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False,
                    eos_token_id=None, pad_token_id=0,
                )
                greedy.append(out[0, prompt.shape[1]:].numpy())
        outputs[f"{name}_logits"] = logits.numpy().astype("float32")
        outputs[f"{name}_greedy"] = np.stack(greedy).astype("int32")
        folder = DATA / f"hf_tiny_gemma4_{name}"
        shutil.rmtree(folder, ignore_errors=True)
        if name in STORED_AS_BFLOAT16:
            model = model.to(torch.bfloat16)
        model.save_pretrained(folder)
        shutil.copy(DATA / "test_vocabulary.spm", folder / "tokenizer.model")
        print(name, logits.shape, float(logits.abs().max()), outputs[f"{name}_greedy"].tolist())
    np.savez_compressed(DATA / "hf_gemma4_oracle.npz",
                        transformers_version=transformers.__version__,
                        token_ids=TOKEN_IDS, padding_mask=PADDING_MASK, **outputs)

    counts = {}
    for name, c in PUBLISHED.items():
        with torch.device("meta"):
            model = transformers.Gemma4ForCausalLM(transformers.Gemma4TextConfig(**c))
        counts[name] = {
            "text_config": c,
            "parameters": sum(p.numel() for p in model.parameters()),
            # transformers keeps each layer's output scalar as a buffer.
            "layer_scalars": sum(b.numel() for n, b in model.named_buffers()
                                 if n.endswith("layer_scalar")),
        }
        print(name, counts[name]["parameters"])
    (DATA / "gemma4_parameter_counts.json").write_text(json.dumps(
        {"transformers_version": transformers.__version__, "models": counts}, indent=1) + "\n")


if __name__ == "__main__":
    main()
