"""Loads exported Hugging Face folders with transformers; prints what it computed.

The oracle of tests/test_export_hf.py, run there in ONE subprocess for all
folders (importing transformers takes most of a minute):

    python tests/hf_export_oracle.py REQUEST.json RESULT.json

REQUEST.json: {"folders": [...], "token_ids": [[...]], "padding_mask": [[...]],
"prompt": [...], "max_new_tokens": n, "texts": [...], "conversations": [...]}.
RESULT.json: per folder, the logits, greedy continuation, token ids and
decoded text of each text, and each conversation's chat template text (or
the error transformers raised). Imports nothing of keras_gemma.
"""

import json
import sys
import warnings

import numpy as np
import torch
import transformers

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()


def run_folder(folder, request):
    result = {}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    result["class"] = type(model).__name__
    token_ids = torch.tensor(request["token_ids"])
    mask = torch.tensor(request["padding_mask"]).long()
    with torch.no_grad():
        result["logits"] = model(input_ids=token_ids, attention_mask=mask).logits.tolist()
        prompt = torch.tensor([request["prompt"]])
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                max_new_tokens=request["max_new_tokens"],
                                do_sample=False, eos_token_id=None)
    result["greedy"] = output[0, prompt.shape[1]:].tolist()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    # Which file it built itself from: ours has this many merges.
    result["merges"] = len(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"])
    result["ids"] = [tokenizer(text, add_special_tokens=False)["input_ids"]
                     for text in request["texts"]]
    result["ids_with_bos"] = tokenizer(request["texts"][0])["input_ids"]
    result["decoded"] = [tokenizer.decode(ids) for ids in result["ids"]]
    templates = []
    for conversation in request["conversations"]:
        try:
            templates.append(tokenizer.apply_chat_template(
                conversation["messages"], tokenize=False,
                add_generation_prompt=conversation.get("add_generation_prompt", True),
                enable_thinking=conversation.get("enable_thinking", False)))
        except Exception as error:  # reported, compared by the test
            templates.append({"error": f"{type(error).__name__}: {error}"})
    result["chat_templates"] = templates
    return result


def main(request_path, result_path):
    with open(request_path) as f:
        request = json.load(f)
    results = {}
    for folder in request["folders"]:
        try:
            results[folder] = run_folder(folder, request)
        except Exception as error:
            results[folder] = {"error": f"{type(error).__name__}: {error}"}
    with open(result_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
