"""Writes the EmbeddingGemma test data, with transformers and sentence-transformers:

- tests/data/st_tiny_embedding_gemma/: a tiny random EmbeddingGemma-style
  model (transformers ``Gemma3TextModel`` with bidirectional attention, then
  sentence-transformers' mean Pooling, two bias-free Dense layers and
  Normalize) saved by ``SentenceTransformer.save`` in its folder layout;
- tests/data/embedding_oracle.npz: ``SentenceTransformer(folder).encode``
  outputs for a padded batch (plain, with a task prompt, Matryoshka
  truncated), the token ids it fed the model, and transformers' parameter
  count of the published google/embeddinggemma-300m config (meta device).

Run from the repository root:  python tests/data/make_embedding_oracle.py
"""

import json
import pathlib
import shutil

import numpy as np
import torch

import transformers
import sentence_transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import modules

DATA = pathlib.Path(__file__).resolve().parent
FOLDER = DATA / "st_tiny_embedding_gemma"

# The model card's task prompts (huggingface.co/google/embeddinggemma-300m).
PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Clustering": "task: clustering | query: ",
}

# Texts of different lengths; the longest is much longer than the sliding
# window (4) so local layers matter, the shortest leaves long padding.
TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "a",
    "Gemma embeddings for search",
]

# Published config.json of google/embeddinggemma-300m (architecture keys).
PUBLISHED = dict(
    vocab_size=262144, hidden_size=768, intermediate_size=1152,
    num_hidden_layers=24, num_attention_heads=3, num_key_value_heads=1,
    head_dim=256, max_position_embeddings=2048, query_pre_attn_scalar=256,
    sliding_window=512, rms_norm_eps=1e-6, use_bidirectional_attention=True,
    rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
    hidden_activation="gelu_pytorch_tanh", sliding_window_pattern=6,
)
PUBLISHED_DENSE = [(768, 3072), (3072, 768)]


def published_parameter_count():
    config = transformers.Gemma3TextConfig(**PUBLISHED)
    with torch.device("meta"):
        model = transformers.Gemma3TextModel(config)
        dense = [modules.Dense(i, o, bias=False, activation_function=None)
                 for i, o in PUBLISHED_DENSE]
    text = sum(p.numel() for p in model.parameters())
    projections = sum(p.numel() for d in dense for p in d.parameters())
    return text, projections


def tiny_model():
    config = transformers.Gemma3TextConfig(
        vocab_size=640, hidden_size=32, intermediate_size=64,
        num_hidden_layers=7, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
        max_position_embeddings=64, rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh", use_bidirectional_attention=True,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        },
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    model = transformers.Gemma3TextModel(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            scale = 0.3 if parameter.ndim == 1 else (
                1.0 if "embed" in name else parameter.shape[1] ** -0.5)
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def main():
    if FOLDER.exists():
        shutil.rmtree(FOLDER)
    staging = DATA / "_embedding_staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    tiny_model().save_pretrained(staging)
    shutil.copy(DATA / "test_vocabulary.spm", staging / "tokenizer.model")
    # As the published tokenizer: <bos> text <eos>, padded on the right.
    (staging / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True,
        "add_eos_token": True, "padding_side": "right",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>",
    }))
    tokenizer = transformers.AutoTokenizer.from_pretrained(staging)
    tokenizer.save_pretrained(staging)

    transformer = modules.Transformer(str(staging), max_seq_length=48)
    generator = torch.Generator().manual_seed(1)
    dense = []
    for i, o in [(32, 128), (128, 32)]:
        layer = modules.Dense(i, o, bias=False, activation_function=None)
        with torch.no_grad():
            layer.linear.weight.copy_(torch.randn(o, i, generator=generator) * i ** -0.5)
        dense.append(layer)
    model = SentenceTransformer(
        modules=[transformer, modules.Pooling(32, pooling_mode="mean"), *dense,
                 modules.Normalize()],
        prompts=PROMPTS,
    )
    model.save(str(FOLDER))
    shutil.rmtree(staging)
    # The published folder carries the SentencePiece model too; keras_gemma
    # reads that one (sentence-transformers reads tokenizer.json).
    shutil.copy(DATA / "test_vocabulary.spm", FOLDER / "tokenizer.model")
    (FOLDER / "README.md").unlink(missing_ok=True)  # the hub's model card
    # Machine-specific entries transformers writes; not part of the format.
    path = FOLDER / "tokenizer_config.json"
    tokenizer_config = json.loads(path.read_text())
    for key in ("vocab_file", "is_local", "local_files_only"):
        tokenizer_config.pop(key, None)
    path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")

    model = SentenceTransformer(str(FOLDER), device="cpu")
    features = model.tokenize(TEXTS)
    outputs = {
        "texts": np.array(TEXTS),
        "token_ids": features["input_ids"].numpy().astype("int32"),
        "padding_mask": features["attention_mask"].numpy().astype("int32"),
        "plain": model.encode(TEXTS, batch_size=8),
        "query": model.encode(TEXTS, prompt_name="query", batch_size=8),
        "document": model.encode(TEXTS, prompt_name="document", batch_size=8),
        "truncated_16": model.encode(TEXTS, truncate_dim=16,
                                     normalize_embeddings=True, batch_size=8),
    }
    text, projections = published_parameter_count()
    outputs["published_config"] = np.array(json.dumps(PUBLISHED))
    outputs["published_text_parameters"] = np.array(text)
    outputs["published_projection_parameters"] = np.array(projections)
    out = DATA / "embedding_oracle.npz"
    np.savez_compressed(
        out, transformers_version=transformers.__version__,
        sentence_transformers_version=sentence_transformers.__version__,
        **outputs,
    )
    for key, value in outputs.items():
        print(key, getattr(value, "shape", value))
    print("published parameters", text, projections, text + projections)
    print("wrote", out, "and", FOLDER)


if __name__ == "__main__":
    main()
