"""Strings to model inputs, for training, scoring and generation."""

import keras
import numpy as np

from keras_gemma.validation import check_text


def _as_string_list(x, what):
    """(list of str, was_single) or a TypeError that says what was wrong."""
    if isinstance(x, str):
        return [x], True
    if isinstance(x, np.ndarray) and x.dtype.kind in "US":
        x = x.tolist()
    elif isinstance(x, np.ndarray) and x.dtype == object:
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        items = [
            check_text(i, f"{what}[{n}]") if isinstance(i, bytes) else i
            for n, i in enumerate(x)
        ]
        bad = [i for i in items if not isinstance(i, str)]
        if not bad:
            return items, False
        raise TypeError(
            f"{what} must be strings, but the batch holds a "
            f"{type(bad[0]).__name__}: {bad[0]!r}."
        )
    raise TypeError(
        f"{what} must be a string or a list of strings, got "
        f"{type(x).__name__}: {x!r:.80}."
    )


@keras.saving.register_keras_serializable(package="keras_gemma")
class GemmaCausalLMPreprocessor:
    """Turns text into ``{"token_ids", "padding_mask"}`` for a Gemma model.

    Called on strings it prepares training data: each sequence is
    ``<bos> text <eos>``, truncated or right-padded to ``sequence_length + 1``
    and split into inputs and next-token labels, so ``model.fit(strings)``
    trains a language model. It returns ``(x, y, sample_weight)`` with
    padding given zero weight. Called on ``{"prompts": [...], "responses":
    [...]}`` it packs ``<bos> prompt response <eos>`` and gives weight only to
    the response's tokens (and ``<eos>``): instruction tuning.

    Args:
        tokenizer: a ``keras_gemma.GemmaTokenizer``.
        sequence_length: length of the model inputs.
        add_start_token, add_end_token: whether to add ``<bos>`` / ``<eos>``.

    Example:

    ```python
    import keras_gemma

    tokenizer = keras_gemma.GemmaTokenizer("tests/data/test_vocabulary.spm")
    preprocessor = keras_gemma.GemmaCausalLMPreprocessor(tokenizer, 8)
    x, y, sample_weight = preprocessor(["The quick brown fox", "Hi"])
    x["token_ids"].shape  # (2, 8)
    ```
    """

    def __init__(
        self,
        tokenizer,
        sequence_length=1024,
        add_start_token=True,
        add_end_token=True,
    ):
        self._tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.add_start_token = add_start_token
        self.add_end_token = add_end_token

    @property
    def sequence_length(self):
        """Length of the model inputs; settable, as in keras-hub
        (``gemma_lm.preprocessor.sequence_length = 256``)."""
        return self._sequence_length

    @sequence_length.setter
    def sequence_length(self, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`sequence_length` must be a positive integer, got {value!r}."
            )
        self._sequence_length = value

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise ValueError(
                "This preprocessor has no tokenizer: it was rebuilt from a "
                "config alone, which holds no vocabulary. Load whole models "
                "with keras.models.load_model('model.keras') (the file holds "
                "the vocabulary), or set `preprocessor.tokenizer = "
                "GemmaTokenizer(...)`."
            )
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer):
        self._tokenizer = tokenizer

    @property
    def has_tokenizer(self):
        return self._tokenizer is not None

    def _pack(self, sequences, length, add_end_token, prefix_lengths=None):
        """Adds special tokens, truncates and right-pads to ``length``.

        Returns token ids, the padding mask, and a mask of the tokens that
        count as targets: all real tokens, except the first
        ``prefix_lengths[row]`` tokens of each text (a prompt's).
        """
        token_ids = np.full((len(sequences), length), self.tokenizer.pad_token_id, "int32")
        padding_mask = np.zeros((len(sequences), length), "bool")
        target_mask = np.zeros((len(sequences), length), "bool")
        start = int(self.add_start_token)
        for row, ids in enumerate(sequences):
            if self.add_start_token:
                ids = [self.tokenizer.bos_token_id] + list(ids)
            if add_end_token:
                ids = list(ids) + [self.tokenizer.eos_token_id]
            ids = ids[:length]
            token_ids[row, : len(ids)] = ids
            padding_mask[row, : len(ids)] = True
            prefix = start + (prefix_lengths[row] if prefix_lengths else 0)
            target_mask[row, prefix : len(ids)] = True
        return token_ids, padding_mask, target_mask

    def __call__(self, x, y=None, sample_weight=None, sequence_length=None):
        """Training/scoring inputs: ``(x, y, sample_weight)`` from strings."""
        if y is not None or sample_weight is not None:
            raise ValueError(
                "GemmaCausalLMPreprocessor computes labels itself (the next "
                "token of each input); pass only the text, without `y` or "
                "`sample_weight`."
            )
        length = (sequence_length or self.sequence_length) + 1
        if isinstance(x, dict):
            sequences, prompt_lengths = self._prompt_response_pairs(x)
        else:
            strings, _ = _as_string_list(x, "Training inputs")
            sequences, prompt_lengths = self.tokenizer.tokenize(strings), None
        token_ids, padding_mask, target_mask = self._pack(
            sequences, length, self.add_end_token, prompt_lengths
        )
        inputs = {"token_ids": token_ids[:, :-1], "padding_mask": padding_mask[:, :-1]}
        return inputs, token_ids[:, 1:], target_mask[:, 1:].astype("float32")

    def _prompt_response_pairs(self, x):
        """Token ids of prompt + response, and each prompt's length."""
        if set(x) != {"prompts", "responses"}:
            raise ValueError(
                "Dict inputs must have exactly the keys 'prompts' and "
                f"'responses' (instruction tuning); got {sorted(x)}."
            )
        prompts, _ = _as_string_list(x["prompts"], "prompts")
        responses, _ = _as_string_list(x["responses"], "responses")
        if len(prompts) != len(responses):
            raise ValueError(
                f"Got {len(prompts)} prompts but {len(responses)} responses; "
                "they must pair up one to one."
            )
        prompt_ids = self.tokenizer.tokenize(prompts)
        response_ids = self.tokenizer.tokenize(responses)
        sequences = [p + r for p, r in zip(prompt_ids, response_ids)]
        return sequences, [len(p) for p in prompt_ids]

    def generate_preprocess(self, x, sequence_length=None):
        """Prompts to ``{"token_ids", "padding_mask"}``, ``<bos>`` and no ``<eos>``.

        Raises if a prompt does not leave room for at least one new token.
        """
        strings, _ = _as_string_list(x, "Prompts")
        if not strings:
            raise ValueError("No prompts given: pass a string or a non-empty list of strings.")
        length = sequence_length or self.sequence_length
        sequences = self.tokenizer.tokenize(strings)
        longest = max(len(s) for s in sequences) + int(self.add_start_token)
        if longest >= length:
            raise ValueError(
                f"A prompt is {longest} tokens long, which leaves no room to "
                f"generate within max_length={length}. Pass a larger "
                "`max_length` to generate() or shorten the prompt."
            )
        token_ids, padding_mask, _ = self._pack(sequences, length, add_end_token=False)
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def generate_postprocess(self, x):
        """``{"token_ids", "padding_mask"}`` (numpy) to strings.

        Special tokens (``<bos>``, ``<eos>``, padding) are dropped.
        """
        token_ids = np.asarray(x["token_ids"])
        padding_mask = np.asarray(x["padding_mask"]).astype(bool)
        special = {
            self.tokenizer.pad_token_id,
            self.tokenizer.bos_token_id,
            self.tokenizer.eos_token_id,
        }
        texts = []
        for ids, mask in zip(token_ids, padding_mask):
            ids = [int(i) for i in ids[mask] if int(i) not in special]
            texts.append(self.tokenizer.detokenize(ids))
        return texts

    def get_config(self):
        # The tokenizer's vocabulary is not in the config: it is an asset
        # (see GemmaCausalLM.save_assets).
        tokenizer = None
        if self.has_tokenizer:
            tokenizer = keras.saving.serialize_keras_object(self.tokenizer)
        return {
            "tokenizer": tokenizer,
            "sequence_length": self.sequence_length,
            "add_start_token": self.add_start_token,
            "add_end_token": self.add_end_token,
        }

    @classmethod
    def from_config(cls, config):
        """A preprocessor from ``get_config``; its tokenizer comes later,
        from the saved assets, unless the config carries the vocabulary."""
        config = dict(config)
        tokenizer = config.pop("tokenizer", None)
        if isinstance(tokenizer, dict) and tokenizer.get("config", {}).get("proto"):
            tokenizer = keras.saving.deserialize_keras_object(tokenizer)
        elif not hasattr(tokenizer, "tokenize"):
            tokenizer = None
        return cls(tokenizer=tokenizer, **config)

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """The preprocessor of a preset name, directory or checkpoint file."""
        from keras_gemma import preset_io

        return preset_io.load_preprocessor(preset, **kwargs)
