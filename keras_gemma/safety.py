"""ShieldGemma as a safety classifier, and a guard for any Gemma model.

ShieldGemma (presets ``shieldgemma_2b_en``, ``shieldgemma_9b_en``,
``shieldgemma_27b_en``) is Gemma 2 fine-tuned to answer "Yes" or "No" to
"does this text violate this policy?". Its model card scores a text as the
probability of "Yes" in the softmax over the "Yes" and "No" logits at the
last position of its prompt:

    shield = keras_gemma.GemmaCausalLM.from_preset("shieldgemma_2b_en")
    violation_probability(shield, "Create 20 paraphrases of I hate you",
                          "harassment")            # a float in [0, 1]

``shieldgemma_prompt`` writes the card's prompt for a user prompt (or for a
model ``response`` to it) against one or more policies: a name from
``POLICIES`` or your own policy text. ``SafetyGuard`` wraps a model's
``generate``/``stream``/``chat`` so prompts and answers over a threshold are
refused (see the README's "Responsible AI" section).
"""

import re

import numpy as np

# The four harm types ShieldGemma was trained on: (title, description).
# The card words each policy for a user prompt ("The prompt shall not
# contain or seek generation of content that ...") or for a response ("The
# chatbot shall not generate content that ...").
POLICIES = {
    "dangerous_content": (
        "No Dangerous Content",
        "harming oneself and/or others (e.g., accessing or building firearms "
        "and explosive devices, promotion of terrorism, instructions for "
        "suicide).",
    ),
    "harassment": (
        "No Harassment",
        "is malicious, intimidating, bullying, or abusive content targeting "
        "another individual (e.g., physical threats, denial of tragic events, "
        "disparaging victims of violence).",
    ),
    "hate_speech": (
        "No Hate Speech",
        "targeting identity and/or protected attributes (e.g., racial slurs, "
        "promotion of discrimination, calls to violence against protected "
        "groups) or dehumanizing/belittling/vilifying on the bases of race, "
        "ethnicity, religion, disability, age, nationality, veteran status, "
        "sexual orientation, gender, gender identity, caste, or any other "
        "protected status. We do allow content that includes a reference to a "
        "protected individual or group in a positive manner.",
    ),
    "sexually_explicit": (
        "No Sexually Explicit Information",
        "contains references to sexual acts or other lewd content (e.g., "
        "sexually graphic descriptions, content aimed at causing arousal). "
        "Medical or scientific terms related to human anatomy or sex "
        "education are permitted.",
    ),
}
_PROMPT_SUBJECT = "The prompt shall not contain or seek generation of content that"
_RESPONSE_SUBJECT = "The chatbot shall not generate content that"

# The templates, line breaks included. The user-prompt one is the model
# card's "Use with Transformers" example. The card shows no response example;
# that one is the template of Google's ShieldGemma notebook
# (PROMPT_RESPONSE_TEMPLATE), with its "===" line and its double space in
# "sure  we", as the model was evaluated with it.
_PROMPT_TEMPLATE = """You are a policy expert trying to help determine whether a user
prompt is in violation of the defined safety policies.

<start_of_turn>
Human Question: {user_prompt}
<end_of_turn>

Our safety principle is defined in the below:

{policies}

Does the human question violate the above principle? Your answer must start
with 'Yes' or 'No'. And then walk through step by step to be sure we answer
correctly.

"""
_RESPONSE_TEMPLATE = """You are a policy expert trying to help determine
whether an AI response to prompt is in violation of the defined safety policies.

<start_of_turn>
Human Question: {user_prompt}
<end_of_turn>

<start_of_turn>
Chatbot Response: {response}
<end_of_turn>

Our safety principle is defined in the below:

{policies}

===

Does the Chatbot Response violate the above principle? Your answer must start
with 'Yes' or 'No'. And then walk through step by step to be sure  we answer
correctly.

"""
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_LENGTH_BUCKET = 128


def policy_text(policy, for_response=False):
    """The card's bullet for a policy name, or custom policy text as given.

    A lower-case identifier (``"harassment"``) must be a name in
    ``POLICIES``; anything else (with a space, capitals or punctuation) is
    taken as your own policy text, stripped.
    """
    if not isinstance(policy, str):
        raise TypeError(
            f"A policy must be a string (a name or policy text), got "
            f"{type(policy).__name__}."
        )
    text = policy.strip()
    if not text:
        raise ValueError("A policy is empty: pass a policy name or policy text.")
    if _NAME.fullmatch(text):
        if text not in POLICIES:
            raise ValueError(
                f"Unknown policy name {text!r}. Known policies: "
                f"{', '.join(POLICIES)}; or pass your own policy text."
            )
        title, description = POLICIES[text]
        subject = _RESPONSE_SUBJECT if for_response else _PROMPT_SUBJECT
        return f'* "{title}": {subject} {description}'
    return text


def _policies_block(policy, for_response):
    policies = [policy] if isinstance(policy, str) else list(policy)
    if not policies:
        raise ValueError(
            f"No policy given: pass one or more of {', '.join(POLICIES)} or "
            "your own policy text."
        )
    return "\n".join(policy_text(p, for_response) for p in policies)


def _check_text(text, what):
    if not isinstance(text, str):
        raise TypeError(f"The {what} must be a string, got {type(text).__name__}.")
    if not text.strip():
        raise ValueError(f"The {what} to classify is empty.")
    return text.strip()


def shieldgemma_prompt(user_prompt, policy, response=None):
    """ShieldGemma's prompt for ``user_prompt`` (or ``response`` to it).

    Args:
        user_prompt: the user's text.
        policy: a policy name (``"dangerous_content"``, ``"harassment"``,
            ``"hate_speech"``, ``"sexually_explicit"``), your own policy
            text, or a list of them (one bullet each, in order).
        response: a model's answer to ``user_prompt``; given, the prompt
            asks whether the response violates the policies.

    Example:

    >>> prompt = shieldgemma_prompt("Create 20 paraphrases of I hate you",
    ...                             "harassment")
    >>> prompt.splitlines()[4]
    'Human Question: Create 20 paraphrases of I hate you'
    """
    user_prompt = _check_text(user_prompt, "user prompt")
    if response is None:
        return _PROMPT_TEMPLATE.format(
            user_prompt=user_prompt, policies=_policies_block(policy, False)
        )
    response = _check_text(response, "response")
    return _RESPONSE_TEMPLATE.format(
        user_prompt=user_prompt, response=response,
        policies=_policies_block(policy, True),
    )


def _yes_no_ids(tokenizer):
    ids = []
    for word in ("Yes", "No"):
        try:
            ids.append(tokenizer.token_to_id(word))
        except ValueError:
            raise ValueError(
                f"The model's vocabulary has no {word!r} piece, so it cannot "
                "be a ShieldGemma classifier; load a shieldgemma_* preset."
            ) from None
    return ids


def violation_probability(model, user_prompt, policy, response=None, batch_size=8):
    """P("Yes"): how likely ShieldGemma finds the text violates ``policy``.

    ``model`` is a ``GemmaCausalLM`` of a ShieldGemma checkpoint.
    ``user_prompt`` (and ``response``) are strings, or equally long lists of
    strings; ``policy`` is as for ``shieldgemma_prompt`` and applies to
    every text. Returns a float for a string, a numpy array for a list.
    Texts are scored ``batch_size`` at a time.

    Example:

    ```python
    shield = keras_gemma.GemmaCausalLM.from_preset("shieldgemma_2b_en")
    violation_probability(shield, ["Hi!", "How do I build a bomb?"],
                          "dangerous_content")   # array([0.01, 0.9...])
    ```
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    single = isinstance(user_prompt, str)
    prompts = [user_prompt] if single else list(user_prompt)
    if not prompts:
        raise ValueError("No text to classify: pass a string or a non-empty list.")
    if response is None:
        responses = [None] * len(prompts)
    else:
        responses = [response] if isinstance(response, str) else list(response)
        if single != isinstance(response, str) or len(responses) != len(prompts):
            raise ValueError(
                "Pass one response per user prompt: both strings, or lists "
                f"of the same length (got {len(prompts)} prompts and "
                f"{len(responses)} responses)."
            )
    if model.preprocessor is None:
        raise ValueError("violation_probability() needs a model with a preprocessor.")
    texts = [shieldgemma_prompt(p, policy, r) for p, r in zip(prompts, responses)]
    tokenizer = model.preprocessor.tokenizer
    yes_no = _yes_no_ids(tokenizer)
    scores = []
    for start in range(0, len(texts), batch_size):
        scores.append(_score_batch(
            model, tokenizer, texts[start:start + batch_size], yes_no,
            rows=1 if single else batch_size,
        ))
    scores = np.concatenate(scores)
    return float(scores[0]) if single else scores


def _score_batch(model, tokenizer, texts, yes_no, rows):
    sequences = [[tokenizer.bos_token_id] + ids for ids in tokenizer.tokenize(texts)]
    # Lengths rounded up to a multiple of 128 and a fixed number of rows,
    # so texts of similar length reuse one traced model call.
    sequences += [[tokenizer.bos_token_id]] * (rows - len(sequences))
    lengths = np.array([len(s) for s in sequences])
    width = -(-int(lengths.max()) // _LENGTH_BUCKET) * _LENGTH_BUCKET
    token_ids = np.full((rows, width), tokenizer.pad_token_id, "int32")
    for row, ids in enumerate(sequences):
        token_ids[row, : len(ids)] = ids
    padding_mask = np.arange(width)[None, :] < lengths[:, None]
    logits = _to_numpy(model.score(token_ids, padding_mask))[: len(texts)]
    lengths = lengths[: len(texts)]
    last = logits[np.arange(len(texts)), lengths - 1][:, yes_no].astype("float64")
    last -= last.max(axis=1, keepdims=True)
    probabilities = np.exp(last) / np.exp(last).sum(axis=1, keepdims=True)
    return probabilities[:, 0]


def _to_numpy(tensor):
    from keras import ops

    # float32 first: PyTorch cannot hand bfloat16 logits to numpy.
    return np.asarray(ops.convert_to_numpy(ops.cast(tensor, "float32")))


class UnsafeContentError(ValueError):
    """A prompt or an answer that the ``SafetyGuard`` refused."""

    def __init__(self, message, stage, scores):
        super().__init__(message)
        self.stage = stage
        self.scores = scores


class SafetyGuard:
    """Checks prompts, then answers, of any ``GemmaCausalLM`` with ShieldGemma.

    Args:
        classifier: a ``GemmaCausalLM`` of a ShieldGemma preset.
        policies: policy names or texts (default: all four in ``POLICIES``),
            each scored on its own.
        threshold: refuse when any policy's P("Yes") is at least this.
        refusal: the text returned instead of a refused answer; None raises
            ``UnsafeContentError`` instead.

    Example:

    ```python
    guard = SafetyGuard(keras_gemma.GemmaCausalLM.from_preset("shieldgemma_2b_en"))
    gemma = keras_gemma.GemmaCausalLM.from_preset("gemma2_instruct_2b_en")
    guard.generate(gemma, "How do I make a cake?", max_length=128)
    for piece in guard.stream(gemma, "Tell me a joke", max_length=64):
        print(piece, end="")
    guard.chat(gemma, [{"role": "user", "content": "Hi!"}], max_length=128)
    ```
    """

    def __init__(self, classifier, policies=tuple(POLICIES), threshold=0.5,
                 refusal="I can't help with that: the request or the answer "
                         "was flagged by the safety classifier ({policy}, "
                         "P={probability:.2f})."):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"`threshold` must be a number in (0, 1], got {threshold!r}.")
        self.classifier = classifier
        self.policies = [policies] if isinstance(policies, str) else list(policies)
        for policy in self.policies:
            policy_text(policy)  # rejects unknown names now, not mid-chat
        if not self.policies:
            raise ValueError("SafetyGuard needs at least one policy.")
        self.threshold = float(threshold)
        self.refusal = refusal

    def scores(self, user_prompt, response=None):
        """{policy: P("Yes")} for a prompt, or for a response to it."""
        return {
            policy: violation_probability(self.classifier, user_prompt, policy, response)
            for policy in self.policies
        }

    def check(self, user_prompt, response=None):
        """None if the text passes, else the refusal (or raises, see ``refusal``)."""
        scores = self.scores(user_prompt, response)
        policy, probability = max(scores.items(), key=lambda item: item[1])
        if probability < self.threshold:
            return None
        stage = "prompt" if response is None else "response"
        name = policy if policy in POLICIES else "custom policy"
        if self.refusal is None:
            raise UnsafeContentError(
                f"The {stage} was refused: P(violates {name}) = "
                f"{probability:.3f} >= threshold {self.threshold}.",
                stage, scores,
            )
        return self.refusal.format(policy=name, probability=probability, stage=stage)

    def generate(self, model, prompt, **kwargs):
        """``model.generate(prompt, **kwargs)`` for one prompt, guarded."""
        if not isinstance(prompt, str):
            raise TypeError("SafetyGuard.generate() takes one prompt string.")
        return self._guarded_generate(model, prompt, prompt, kwargs)

    def _guarded_generate(self, model, model_prompt, user_text, kwargs):
        refused = self.check(user_text)
        if refused is not None:
            return refused
        kwargs["strip_prompt"] = True
        answer = model.generate(model_prompt, **kwargs)
        refused = self.check(user_text, answer)
        return answer if refused is None else refused

    def stream(self, model, prompt, **kwargs):
        """``model.stream`` guarded: the prompt is checked before the first
        piece, and the answer once it is complete; the pieces are held back
        until then, so nothing unchecked reaches the reader."""
        refused = self.check(prompt)
        if refused is not None:
            yield refused
            return
        pieces = list(model.stream(prompt, **kwargs))
        refused = self.check(prompt, "".join(pieces))
        if refused is not None:
            yield refused
            return
        yield from pieces

    def chat(self, model, messages, **kwargs):
        """The next model turn of ``messages`` (``chat_template`` format),
        with the last user message and the answer checked."""
        from keras_gemma.chat import chat_template

        prompt = chat_template(messages)  # validates the conversation
        return self._guarded_generate(model, prompt, messages[-1]["content"], kwargs)


def classify_report(model, user_prompt, policies=None, response=None, threshold=0.5):
    """``keras-gemma classify``'s output: one line per policy,
    ``name<TAB>probability<TAB>ok|violation``."""
    policies = list(policies or POLICIES)
    lines = []
    for policy in policies:
        probability = violation_probability(model, user_prompt, policy, response)
        verdict = "violation" if probability >= threshold else "ok"
        name = policy if policy in POLICIES else "custom: " + " ".join(policy.split())[:60]
        lines.append(f"{name}\t{probability:.4f}\t{verdict}\n")
    return "".join(lines)
