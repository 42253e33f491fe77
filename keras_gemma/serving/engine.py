"""The model side of the server: a key/value cache with one row per batch
slot, and the two compiled programs that work on it.

- ``prefill(slot, token_ids)`` writes a prompt's keys and values into its
  slot's row, 32 positions per call, so every prompt length runs the same
  compiled program.
- ``step(...)`` advances every slot by one token at once. Each slot brings
  its own position, sampler settings and random number, so any mix of
  requests (lengths, temperatures, top-k, top-p, seeds) runs the same
  compiled program; nothing recompiles while serving.

A slot's row holds only its own request's keys and values at the positions
it attends to: prefill writes positions ``0 .. prompt - 1`` before the first
step, each step writes the position it attends from, and the causal mask
hides whatever an earlier occupant left further on. Rows never mix (each
attends within itself), so no request sees another's tokens.

The arithmetic follows ``GemmaCausalLM.generate`` token for token (the last
prompt token is run again by the first step, as generate's decode loop
does), so a greedy request gives what ``generate`` gives for that prompt
alone.
"""

import numpy as np
from keras import ops

from keras_gemma import backend
from keras_gemma.causal_lm import PREFILL_BUCKET
from keras_gemma.samplers import Sampler

# top_k / top_p choose among this many most likely tokens at most (sorting
# the whole vocabulary each step would cost more than the model on a CPU).
MAX_CANDIDATES = 1024


class SlotSampler(Sampler):
    """Per-row sampling, with per-row settings as tensors.

    Each row brings ``temperature`` (0 = greedy), ``top_k`` (0 = no limit)
    and ``top_p`` (1 = no limit) and one uniform number, and the row's token
    is found as ``keras_gemma.samplers`` find it (inverting the CDF at that
    number), so a seeded request draws what ``generate`` with the matching
    sampler and seed would draw: a plain temperature row samples the whole
    vocabulary (``RandomSampler``), a row with ``top_k`` or ``top_p`` samples
    among its candidates (``TopKSampler``, ``TopPSampler``).
    """

    def __init__(self, vocabulary_size):
        super().__init__(1.0)
        self.candidates = min(vocabulary_size, MAX_CANDIDATES)

    def __call__(self, logits, uniform, temperature=None, top_k=None, top_p=None):
        greedy = ops.cast(ops.top_k(logits, 1)[1][:, 0], "int32")
        if temperature is None:
            return greedy
        sampling = temperature > 0
        return ops.cond(
            ops.any(sampling),
            lambda: ops.where(
                sampling,
                self._sample(logits, uniform, temperature, top_k, top_p),
                greedy,
            ),
            lambda: greedy,
        )

    def _sample(self, logits, uniform, temperature, top_k, top_p):
        scaled = logits / ops.where(temperature > 0, temperature, 1.0)[:, None]
        truncated = ops.logical_or(top_k > 0, top_p < 1)
        from_candidates = self._sample_candidates(scaled, uniform, top_k, top_p)
        return ops.cond(
            ops.any(ops.logical_and(temperature > 0, ops.logical_not(truncated))),
            lambda: ops.where(
                truncated,
                from_candidates,
                self._pick(ops.softmax(scaled, axis=-1), uniform),
            ),
            lambda: from_candidates,
        )

    def _sample_candidates(self, scaled, uniform, top_k, top_p):
        values, indices = ops.top_k(scaled, self.candidates)
        rank = ops.arange(self.candidates, dtype="int32")[None, :]
        limit = ops.where(top_k > 0, top_k, self.candidates)[:, None]
        values = ops.where(rank < limit, values, -np.inf)
        probabilities = ops.softmax(values, axis=-1)
        mass_before = ops.cumsum(probabilities, axis=-1) - probabilities
        # The most likely token is always kept, even when it alone exceeds p.
        keep = ops.logical_or(mass_before < top_p[:, None], rank == 0)
        probabilities = ops.where(keep, probabilities, 0.0)
        choice = self._pick(probabilities, uniform)
        return ops.cast(
            ops.take_along_axis(indices, choice[:, None], axis=-1)[:, 0], "int32"
        )


class SlotEngine:
    """A slot cache for ``model`` and the compiled prefill and decode step.

    Args:
        model: a ``keras_gemma.GemmaCausalLM``.
        num_slots: requests decoded together.
        context_length: most positions (prompt + output) of one request.

    Not thread-safe: one thread (the scheduler's) drives it.

    Example:

    ```python
    engine = SlotEngine(model, num_slots=4, context_length=256)
    engine.prefill(0, [2, 651, 6037, 576, 6081, 603])
    tokens = engine.step(tokens=[603, 0, 0, 0], positions=[5, 0, 0, 0])
    ```
    """

    def __init__(self, model, num_slots, context_length):
        self.model = model
        self.num_slots = num_slots
        self.context_length = context_length
        # Whole prefill chunks fit, so a chunk's write never runs off the end.
        self.cache_length = -(-context_length // PREFILL_BUCKET) * PREFILL_BUCKET
        self.pad_id = model.backbone_pad_id()
        self.sampler = SlotSampler(model.backbone.vocabulary_size)
        self.cache = model.backbone.init_cache(num_slots, self.cache_length)
        # How often each program's Python body ran: once per compilation on
        # JAX and TensorFlow (every call on eager PyTorch).
        self.traces = {"prefill": 0, "step": 0}
        self._prefill = backend.compile_inference(
            model, self._make_prefill(), donate_argnums=(0,)
        )
        self._step = backend.compile_inference(
            model, self._make_step(), donate_argnums=(0,)
        )

    def prefill(self, slot, token_ids):
        """Writes the keys and values of ``token_ids`` into ``slot``'s row."""
        token_ids = list(token_ids)
        if not 0 < len(token_ids) <= self.context_length:
            raise ValueError(
                f"A prompt takes 1 to {self.context_length} tokens here, got "
                f"{len(token_ids)}."
            )
        chunks = -(-len(token_ids) // PREFILL_BUCKET)
        padded = np.full((chunks * PREFILL_BUCKET,), self.pad_id, "int32")
        padded[: len(token_ids)] = token_ids
        slot_tensor = ops.convert_to_tensor(slot, "int32")
        for chunk in range(chunks):
            start = chunk * PREFILL_BUCKET
            self.cache = self._prefill(
                self.cache,
                slot_tensor,
                ops.convert_to_tensor(start, "int32"),
                ops.convert_to_tensor(padded[None, start : start + PREFILL_BUCKET]),
            )

    def step(self, tokens, positions, temperature=None, top_k=None, top_p=None,
             uniforms=None):
        """Runs every slot's token at its position; returns the next tokens.

        All arguments have one entry per slot (idle slots: any token at
        position 0). Defaults: greedy for every slot.
        """
        n = self.num_slots

        def column(values, default, dtype):
            values = np.full((n,), default, dtype) if values is None else values
            return ops.convert_to_tensor(np.asarray(values, dtype))

        next_tokens, self.cache = self._step(
            self.cache,
            column(tokens, 0, "int32"),
            column(positions, 0, "int32"),
            column(temperature, 0.0, "float32"),
            column(top_k, 0, "int32"),
            column(top_p, 1.0, "float32"),
            column(uniforms, 0.0, "float32"),
        )
        return np.asarray(ops.convert_to_numpy(next_tokens)).astype("int32")

    def _make_prefill(self):
        backbone = self.model.backbone

        def prefill(cache, slot, start, token_ids):
            self.traces["prefill"] += 1
            begin = [slot, 0, 0, 0]
            row_shape = [1, *cache[0][0].shape[1:]]
            row = [
                (ops.slice(key, begin, row_shape), ops.slice(value, begin, row_shape))
                for key, value in cache
            ]
            _, row = backbone.compute_hidden_states(
                token_ids, cache=row, cache_update_index=start
            )
            return [
                (ops.slice_update(key, begin, row_key),
                 ops.slice_update(value, begin, row_value))
                for (key, value), (row_key, row_value) in zip(cache, row)
            ]

        return prefill

    def _make_step(self):
        backbone = self.model.backbone
        sampler = self.sampler

        def step(cache, tokens, positions, temperature, top_k, top_p, uniforms):
            self.traces["step"] += 1
            hidden, cache = backbone.compute_hidden_states(
                tokens[:, None], cache=cache, positions=positions[:, None]
            )
            logits = backbone.compute_logits(hidden)[:, 0, :]
            next_tokens = sampler(logits, uniforms, temperature, top_k, top_p)
            return next_tokens, cache

        return step
