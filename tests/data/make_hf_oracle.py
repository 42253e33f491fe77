"""Writes tests/data/hf_oracle.npz: logits of Hugging Face transformers'
Gemma, Gemma 2 and Gemma 3 models for the tiny configs in tests/tiny_models.py.

Run from the repository root:  python tests/data/make_hf_oracle.py
The weight mapping below is written out here on purpose, independently of
keras_gemma's own checkpoint code.
"""

import pathlib
import shutil
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from tiny_models import PADDING_MASK, TINY_CONFIGS, TOKEN_IDS, random_weights  # noqa

import transformers

SAVED_FOLDERS = {"gemma_mqa": "hf_tiny_gemma", "gemma3": "hf_tiny_gemma3"}


def hf_config(name, c):
    common = dict(
        vocab_size=c["vocabulary_size"], hidden_size=c["hidden_dim"],
        intermediate_size=c["intermediate_dim"],
        num_hidden_layers=c["num_layers"],
        num_attention_heads=c["num_query_heads"],
        num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
        attn_implementation="eager",
    )
    if name.startswith("gemma_"):
        return transformers.GemmaConfig(**common), transformers.GemmaForCausalLM
    if name == "gemma2":
        return transformers.Gemma2Config(
            **common, query_pre_attn_scalar=c["query_pre_attn_scalar"],
            attn_logit_softcapping=c["attention_logit_soft_cap"],
            final_logit_softcapping=c["final_logit_soft_cap"],
            sliding_window=c["sliding_window_size"],
        ), transformers.Gemma2ForCausalLM
    return transformers.Gemma3TextConfig(
        **common, query_pre_attn_scalar=c["query_pre_attn_scalar"],
        sliding_window=c["sliding_window_size"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1_000_000.0,
                               "factor": c["rope_scaling_factor"]},
        },
    ), transformers.Gemma3ForCausalLM


def hf_state_dict(name, c, weights):
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    state = {"model.embed_tokens.weight": t(weights["token_embedding/embeddings"]),
             "model.norm.weight": t(weights["final_norm/scale"])}
    for i in range(c["num_layers"]):
        ours, hf = f"decoder_block_{i}/", f"model.layers.{i}."
        for a, b in [("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"),
                     ("output", "o_proj")]:
            state[hf + f"self_attn.{b}.weight"] = t(weights[ours + f"attention/{a}/kernel"].T)
        for a, b in [("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")]:
            state[hf + f"mlp.{b}.weight"] = t(weights[ours + f"feedforward_{a}/kernel"].T)
        state[hf + "input_layernorm.weight"] = t(weights[ours + "pre_attention_norm/scale"])
        if name.startswith("gemma_"):
            # Gemma 1 calls its pre-feed-forward norm "post_attention_layernorm".
            state[hf + "post_attention_layernorm.weight"] = t(weights[ours + "pre_feedforward_norm/scale"])
            continue
        state[hf + "post_attention_layernorm.weight"] = t(weights[ours + "post_attention_norm/scale"])
        state[hf + "pre_feedforward_layernorm.weight"] = t(weights[ours + "pre_feedforward_norm/scale"])
        state[hf + "post_feedforward_layernorm.weight"] = t(weights[ours + "post_feedforward_norm/scale"])
        if name == "gemma3":
            state[hf + "self_attn.q_norm.weight"] = t(weights[ours + "attention/query_norm/scale"])
            state[hf + "self_attn.k_norm.weight"] = t(weights[ours + "attention/key_norm/scale"])
    return state


def main():
    outputs = {}
    for name, c in TINY_CONFIGS.items():
        config, model_class = hf_config(name, c)
        model = model_class(config).eval()
        missing, unexpected = model.load_state_dict(
            hf_state_dict(name, c, random_weights(c)), strict=False
        )
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        with torch.no_grad():
            logits = model(
                input_ids=torch.from_numpy(TOKEN_IDS).long(),
                attention_mask=torch.from_numpy(PADDING_MASK).long(),
            ).logits
        outputs[name] = logits.numpy().astype("float32")
        if name in SAVED_FOLDERS:
            # Real transformers checkpoints for the from_preset tests; one
            # sharded, to exercise model.safetensors.index.json.
            folder = pathlib.Path(__file__).with_name(SAVED_FOLDERS[name])
            model.save_pretrained(folder, max_shard_size="100KB")
            shutil.copy(pathlib.Path(__file__).with_name("test_vocabulary.spm"),
                        folder / "tokenizer.model")
        print(name, outputs[name].shape, float(np.abs(outputs[name]).max()))
    out = pathlib.Path(__file__).with_name("hf_oracle.npz")
    np.savez_compressed(out, transformers_version=transformers.__version__, **outputs)
    print("wrote", out)


if __name__ == "__main__":
    main()
