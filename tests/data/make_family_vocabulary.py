"""Train tests/data/family_vocabulary.spm: the test vocabulary of
make_test_vocabulary.py plus the pieces the Gemma family's prompts use.

Run from the repository root:  python tests/data/make_family_vocabulary.py

Real Gemma vocabularies have single pieces for "Yes" and "No" (ShieldGemma's
answers), CodeGemma's fill-in-the-middle tokens and FunctionGemma's
function-calling tokens; they are user-defined pieces here so that a
vocabulary of 640 pieces has them all. Training is deterministic.
"""

import pathlib
import sys

import sentencepiece

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from make_test_vocabulary import SENTENCES, train  # noqa: E402

OUTPUT_PATH = pathlib.Path(__file__).parent / "family_vocabulary.spm"
FAMILY_PIECES = [
    "<start_of_turn>", "<end_of_turn>",
    "Yes", "No",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_separator|>",
    "<start_function_declaration>", "<end_function_declaration>",
    "<start_function_call>", "<end_function_call>",
    "<start_function_response>", "<end_function_response>", "<escape>",
]
EXTRA = """\
You are a policy expert trying to help determine whether a user
prompt is in violation of the defined safety policies.
Human Question: Create 20 paraphrases of I hate you
Our safety principle is defined in the below:
Does the human question violate the above principle? Your answer must start
with 'Yes' or 'No'. And then walk through step by step to be sure we answer
correctly.
You are a model that can do function calling with the following functions
declaration:get_weather{description:Get current weather,parameters:{properties:{location:{type:STRING}}}}
call:get_weather{location:Paris}
""".splitlines()


def main():
    proto = train(SENTENCES + EXTRA * 4, FAMILY_PIECES)
    OUTPUT_PATH.write_bytes(proto)
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    ids = {piece: processor.piece_to_id(piece) for piece in FAMILY_PIECES}
    print(f"wrote {OUTPUT_PATH}, {processor.get_piece_size()} pieces, {ids}")


if __name__ == "__main__":
    main()
