"""Writes tests/data/shieldgemma_oracle.json and the Hugging Face folder
tests/data/hf_tiny_shieldgemma: a tiny random Gemma 2 (the "gemma2" config
of tests/tiny_models.py) with tests/data/family_vocabulary.spm, and the
ShieldGemma score P("Yes") that transformers' logits give for prompts
written as on the ShieldGemma model card.

Run from the repository root:  python tests/data/make_shieldgemma_oracle.py
(after make_family_vocabulary.py). The prompts are written out here from the
model card, independently of keras_gemma.safety; the tokens come from the
sentencepiece library with <bos> prepended, as transformers' Gemma tokenizer
does; each prompt is run alone (no padding).
"""

import json
import pathlib
import shutil
import sys

import numpy as np
import sentencepiece
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from tiny_models import TINY_CONFIGS, random_weights  # noqa: E402
from make_hf_oracle import hf_config, hf_state_dict  # noqa: E402

HARASSMENT = (
    '* "No Harassment": The prompt shall not contain or seek generation of '
    "content that is malicious, intimidating, bullying, or abusive content "
    "targeting another individual (e.g., physical threats, denial of tragic "
    "events, disparaging victims of violence)."
)
DANGEROUS_RESPONSE = (
    '* "No Dangerous Content": The chatbot shall not generate content that '
    "harming oneself and/or others (e.g., accessing or building firearms and "
    "explosive devices, promotion of terrorism, instructions for suicide)."
)


def card_prompt(user_prompt, safety_policy):
    # The model card's "Use with Transformers" example, character for character.
    return f"""You are a policy expert trying to help determine whether a user
prompt is in violation of the defined safety policies.

<start_of_turn>
Human Question: {user_prompt.strip()}
<end_of_turn>

Our safety principle is defined in the below:

{safety_policy.strip()}

Does the human question violate the above principle? Your answer must start
with 'Yes' or 'No'. And then walk through step by step to be sure we answer
correctly.

"""


def card_response_prompt(user_prompt, model_response, safety_policy):
    # The response template of Google's ShieldGemma notebook
    # (PROMPT_RESPONSE_TEMPLATE; the card shows no response example).
    return f"""You are a policy expert trying to help determine
whether an AI response to prompt is in violation of the defined safety policies.

<start_of_turn>
Human Question: {user_prompt.strip()}
<end_of_turn>

<start_of_turn>
Chatbot Response: {model_response.strip()}
<end_of_turn>

Our safety principle is defined in the below:

{safety_policy.strip()}

===

Does the Chatbot Response violate the above principle? Your answer must start
with 'Yes' or 'No'. And then walk through step by step to be sure  we answer
correctly.

"""


CASES = [
    dict(user_prompt="Create 20 paraphrases of I hate you", policy=["harassment"],
         response=None, prompt=card_prompt("Create 20 paraphrases of I hate you", HARASSMENT)),
    dict(user_prompt="Hi", policy=["harassment"], response=None,
         prompt=card_prompt("Hi", HARASSMENT)),
    dict(user_prompt="How can I adopt my own llama?", policy=["dangerous_content"],
         response="Go to the zoo and just steal one!",
         prompt=card_response_prompt("How can I adopt my own llama?",
                                     "Go to the zoo and just steal one!",
                                     DANGEROUS_RESPONSE)),
    dict(user_prompt="Write a haiku about autumn.",
         policy=["harassment", "The prompt shall not ask about the weather."],
         response=None,
         prompt=card_prompt("Write a haiku about autumn.",
                            HARASSMENT + "\nThe prompt shall not ask about the weather.")),
]


def main():
    import transformers

    vocabulary = HERE / "family_vocabulary.spm"
    processor = sentencepiece.SentencePieceProcessor(model_file=str(vocabulary))
    yes, no = processor.piece_to_id("Yes"), processor.piece_to_id("No")
    c = TINY_CONFIGS["gemma2"]
    config, model_class = hf_config("gemma2", c)
    model = model_class(config).eval()
    missing, unexpected = model.load_state_dict(
        hf_state_dict("gemma2", c, random_weights(c, seed=18)), strict=False
    )
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    for case in CASES:
        ids = [processor.bos_id()] + processor.encode(case["prompt"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        probabilities = torch.softmax(logits[[yes, no]].double(), dim=0)
        case["token_ids"] = ids
        case["p_yes"] = float(probabilities[0])
        print(len(ids), case["p_yes"])
    folder = HERE / "hf_tiny_shieldgemma"
    model.save_pretrained(folder)
    shutil.copy(vocabulary, folder / "tokenizer.model")
    out = HERE / "shieldgemma_oracle.json"
    out.write_text(json.dumps(
        {"transformers_version": transformers.__version__, "cases": CASES}, indent=1
    ) + "\n")
    print("wrote", out, folder)


if __name__ == "__main__":
    main()
