"""Log-likelihoods of (context, continuation) pairs, and multiple choice.

Each distinct context is run once: its keys and values go into a cache, and
every continuation of that context (an item's choices) is scored against
that cache. Contexts are left-padded and continuations right-padded to
bucketed lengths, and batches have a fixed number of rows, so one compiled
program serves every batch of the same bucket. (Left-padding does not change
the result: RoPE attention depends only on distances between positions, and
padded keys are masked out.)

Example:

```python
import keras_gemma
from keras_gemma.evaluation import multiple_choice

gemma = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
multiple_choice.loglikelihoods(gemma, [("The capital of France is", " Paris")])
# [(-2.3..., True)]: sum of the continuation's token log-probabilities, and
# whether greedy decoding would have produced exactly those tokens
```
"""

import numpy as np
from keras import ops

from keras_gemma import backend
from keras_gemma.evaluation import progress as progress_lib

CONTEXT_BUCKET = 32
CONTINUATION_BUCKET = 16


def _round_up(value, multiple):
    return max(multiple, -(-value // multiple) * multiple)


def encode_pair(tokenizer, context, continuation):
    """Token ids of (<bos> context, continuation), as lm-eval splits them.

    Trailing spaces of the context move to the continuation, and the pair is
    tokenized as one text and split where the context's tokens end, so a
    word is tokenized as it would be in running text.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer.tokenize([context])[0] if context else []
    whole = tokenizer.tokenize([context + continuation])[0]
    if list(whole[: len(context_ids)]) != list(context_ids):
        # The join merged across the boundary; score the parts separately.
        continuation_ids = tokenizer.tokenize([continuation])[0]
    else:
        continuation_ids = whole[len(context_ids):]
    return [tokenizer.bos_token_id] + list(context_ids), list(continuation_ids)


class LoglikelihoodScorer:
    """Scores token-id (context, continuation) pairs with one model.

    Keeps its compiled programs (one per bucket of lengths), so reuse one
    scorer for a whole evaluation.

    Args:
        model: a ``keras_gemma.GemmaCausalLM``.
        batch_size: continuations scored per call (also the most contexts).
    """

    def __init__(self, model, batch_size=8):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        self.model = model
        self.batch_size = batch_size
        self._programs = {}

    def score_tokens(self, pairs, description="Scoring"):
        """``[(logprob_sum, is_greedy), ...]`` for ``[(context_ids, continuation_ids)]``.

        ``context_ids`` must hold at least one token (``<bos>``);
        ``continuation_ids`` at least one.
        """
        pairs = [(tuple(int(i) for i in c), tuple(int(i) for i in t)) for c, t in pairs]
        for context, continuation in pairs:
            if not context or not continuation:
                raise ValueError(
                    "Each pair needs a context of at least one token (<bos>) and a "
                    "non-empty continuation."
                )
        # Pairs sharing a context sit together, longest first, so that
        # batches are homogeneous in length and contexts are shared.
        order = sorted(range(len(pairs)), key=lambda i: (-len(pairs[i][0]), pairs[i][0],
                                                          -len(pairs[i][1])))
        results = [None] * len(pairs)
        with progress_lib.bar(len(pairs), description) as advance:
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                for row, result in zip(rows, self._score_batch([pairs[i] for i in rows])):
                    results[row] = result
                advance(len(rows))
        return results

    def _score_batch(self, pairs):
        contexts = list(dict.fromkeys(c for c, _ in pairs))
        context_index = {c: i for i, c in enumerate(contexts)}
        context_length = _round_up(max(len(c) for c in contexts), CONTEXT_BUCKET)
        continuation_length = _round_up(max(len(t) for _, t in pairs), CONTINUATION_BUCKET)
        rows = self.batch_size
        pad = self.model.backbone_pad_id()
        context_ids = np.full((rows, context_length), pad, "int32")
        context_mask = np.zeros((rows, context_length), bool)
        for i, context in enumerate(contexts):
            context_ids[i, context_length - len(context):] = context
            context_mask[i, context_length - len(context):] = True
        context_mask[len(contexts):, -1] = True  # unused rows: one dummy token
        continuation_ids = np.full((rows, continuation_length), pad, "int32")
        continuation_mask = np.zeros((rows, continuation_length), bool)
        which_context = np.zeros((rows,), "int32")
        for i, (context, continuation) in enumerate(pairs):
            continuation_ids[i, :len(continuation)] = continuation
            continuation_mask[i, :len(continuation)] = True
            which_context[i] = context_index[context]
        program = self._program(context_length, continuation_length)
        token_logprobs, greedy = program(
            ops.convert_to_tensor(context_ids), ops.convert_to_tensor(context_mask),
            ops.convert_to_tensor(which_context), ops.convert_to_tensor(continuation_ids),
            ops.convert_to_tensor(continuation_mask),
        )
        token_logprobs = np.asarray(ops.convert_to_numpy(token_logprobs), "float64")
        greedy = np.asarray(ops.convert_to_numpy(greedy), bool)
        results = []
        for i, (_, continuation) in enumerate(pairs):
            n = len(continuation)
            results.append((float(token_logprobs[i, :n].sum()), bool(greedy[i, :n].all())))
        return results

    def _program(self, context_length, continuation_length):
        key = (context_length, continuation_length)
        if key not in self._programs:
            self._programs[key] = backend.compile_inference(
                self.model, _make_scoring_function(self.model.backbone, context_length,
                                                   continuation_length)
            )
        return self._programs[key]


def _make_scoring_function(backbone, context_length, continuation_length):
    total = context_length + continuation_length

    def score(context_ids, context_mask, which_context, continuation_ids, continuation_mask):
        rows = ops.shape(context_ids)[0]
        key_mask = ops.concatenate(
            [context_mask, ops.ones((rows, continuation_length), "bool")], axis=1
        )
        cache = backbone.init_cache(rows, total)
        hidden, cache = backbone.compute_hidden_states(
            context_ids, padding_mask=key_mask, cache=cache, cache_update_index=0
        )
        # The last context position predicts the first continuation token.
        first_logits = backbone.compute_logits(hidden[:, -1:, :])
        cache = [(ops.take(k, which_context, axis=0), ops.take(v, which_context, axis=0))
                 for k, v in cache]
        row_key_mask = ops.take(key_mask, which_context, axis=0)
        row_key_mask = ops.concatenate(
            [row_key_mask[:, :context_length], ops.cast(continuation_mask, "bool")], axis=1
        )
        hidden, _ = backbone.compute_hidden_states(
            continuation_ids[:, :-1], padding_mask=row_key_mask, cache=cache,
            cache_update_index=context_length,
        )
        logits = ops.concatenate(
            [ops.take(first_logits, which_context, axis=0), backbone.compute_logits(hidden)],
            axis=1,
        )
        log_probabilities = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
        targets = ops.cast(continuation_ids, "int32")
        token_logprobs = ops.take_along_axis(log_probabilities, targets[:, :, None], axis=-1)[:, :, 0]
        mask = ops.cast(continuation_mask, "float32")
        greedy = ops.logical_or(
            ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), targets),
            ops.logical_not(ops.cast(continuation_mask, "bool")),
        )
        return token_logprobs * mask, greedy

    return score


def loglikelihoods(model, requests, batch_size=8, scorer=None, description="Scoring"):
    """``[(logprob_sum, is_greedy)]`` for text ``[(context, continuation)]`` pairs.

    ``<bos>`` precedes every context (an empty context is just ``<bos>``).
    """
    scorer = scorer or LoglikelihoodScorer(model, batch_size)
    tokenizer = model.preprocessor.tokenizer
    pairs = [encode_pair(tokenizer, context, continuation) for context, continuation in requests]
    empty = [i for i, (_, continuation) in enumerate(pairs) if not continuation]
    if empty:
        raise ValueError(f"Request {empty[0]} has an empty continuation: {requests[empty[0]]!r}.")
    return scorer.score_tokens(pairs, description)


def choose(logprob_sums, choices):
    """(argmax of log-likelihood, argmax of log-likelihood per character).

    As lm-eval's ``acc`` and ``acc_norm``: the normalization divides by the
    length in characters of each choice's text.
    """
    logprob_sums = np.asarray(logprob_sums, "float64")
    lengths = np.array([max(1, len(c)) for c in choices], "float64")
    return int(np.argmax(logprob_sums)), int(np.argmax(logprob_sums / lengths))
