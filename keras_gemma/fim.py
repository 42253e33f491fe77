"""CodeGemma's fill-in-the-middle: write the code between a prefix and a suffix.

The CodeGemma model card's format: the code before the cursor follows
``<|fim_prefix|>``, the code after it follows ``<|fim_suffix|>``, and the
model writes the middle after ``<|fim_middle|>``, ending it with
``<|file_separator|>`` (or another FIM token, or ``<eos>``). No spaces or
newlines are added around the tokens.

    >>> code_infill("def add(a, b):\\n    ", "\\n")
    '<|fim_prefix|>def add(a, b):\\n    <|fim_suffix|>\\n<|fim_middle|>'

    gemma = keras_gemma.GemmaCausalLM.from_preset("code_gemma_2b_en")
    infill(gemma, "def add(a, b):\\n    ", "\\n", max_new_tokens=32)

Or on the command line: ``keras-gemma generate PREFIX --infill-suffix SUFFIX``.
"""

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FILE_SEPARATOR = "<|file_separator|>"
# The card's terminators: the FIM tokens and the file separator (and <eos>).
STOP_TOKENS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FILE_SEPARATOR)


def code_infill(prefix, suffix):
    """The fill-in-the-middle prompt for the code between ``prefix`` and ``suffix``."""
    for name, value in (("prefix", prefix), ("suffix", suffix)):
        if not isinstance(value, str):
            raise TypeError(f"The {name} must be a string, got {type(value).__name__}.")
    if not prefix and not suffix:
        raise ValueError("Both the prefix and the suffix are empty: nothing to infill around.")
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def infill_stop_token_ids(tokenizer):
    """Ids that end an infill: the FIM tokens, ``<|file_separator|>``, ``<eos>``.

    Raises if the vocabulary lacks them (not a CodeGemma model), or if the
    tokenizer would not read them in text as single tokens.
    """
    ids = []
    for token in STOP_TOKENS:
        try:
            token_id = tokenizer.token_to_id(token)
        except ValueError:
            raise ValueError(
                f"The model's vocabulary has no {token} token, so it cannot "
                "fill in the middle; load a code_gemma_* preset."
            ) from None
        if tokenizer.tokenize(token) != [token_id]:
            raise ValueError(
                f"The tokenizer does not read {token} in text as one token "
                f"(got {tokenizer.tokenize(token)}); this vocabulary cannot "
                "take fill-in-the-middle prompts."
            )
        ids.append(token_id)
    return ids + [tokenizer.eos_token_id]


def infill(model, prefix, suffix, max_new_tokens=128, seed=None):
    """The middle a ``GemmaCausalLM`` (a CodeGemma) writes between the two parts.

    Generation stops at a FIM token, ``<|file_separator|>`` or ``<eos>``,
    which are not part of the returned text, or after ``max_new_tokens``.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be a positive integer, got {max_new_tokens!r}.")
    if model.preprocessor is None:
        raise ValueError("infill() needs a model with a preprocessor.")
    tokenizer = model.preprocessor.tokenizer
    stop_ids = infill_stop_token_ids(tokenizer)
    prompt = code_infill(prefix, suffix)
    max_length = len(tokenizer.tokenize(prompt)) + 1 + max_new_tokens
    return model.generate(
        prompt, max_length=max_length, stop_token_ids=stop_ids,
        strip_prompt=True, seed=seed,
    )
