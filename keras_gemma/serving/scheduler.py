"""Continuous batching: a fixed set of batch slots fed from a bounded queue.

One thread owns the model. Between two decode steps it moves waiting
requests into free slots (prefilling their prompts), then runs one step for
every occupied slot at once. A request that finishes (a stop token, a stop
string, its ``max_tokens``) or is cancelled leaves its slot right after the
step that decided it, and the next waiting request takes the slot before
the following step; the others keep going, untouched.

Requests report back through a callback, called on the scheduler's thread
with ``("text", piece)`` as new text becomes final and then exactly one
``("done", finish_reason)`` (``"stop"``, ``"length"``, ``"cancelled"``) or
``("error", message)``.
"""

import collections
import itertools
import logging
import threading
import time

import numpy as np

from keras_gemma.serving.engine import MAX_CANDIDATES
from keras_gemma.serving.engine import SlotEngine

logger = logging.getLogger("keras_gemma.serving")


class QueueFull(Exception):
    """The waiting queue is full; try again later (HTTP 429)."""


class NotAccepting(Exception):
    """The scheduler is shutting down and takes no new requests (HTTP 503)."""


class GenerationRequest:
    """One prompt to continue, with its sampling settings.

    Args:
        prompt_ids: token ids, ``<bos>`` included.
        max_tokens: most new tokens.
        temperature: 0 for greedy, else the sampling temperature.
        top_k: sample among the ``top_k`` most likely tokens (0: no limit).
        top_p: nucleus sampling mass (1: no limit).
        seed: makes sampling reproducible; the random number for position
            ``i`` is the ``i``-th of ``numpy.random.default_rng(seed)``, as
            in ``GemmaCausalLM.generate``.
        stop: strings that end the text (not included in it).
        on_event: called with ``("text", piece)``, then ``("done",
            finish_reason)`` or ``("error", message)``.
    """

    _ids = itertools.count()

    def __init__(self, prompt_ids, max_tokens, temperature=0.0, top_k=0,
                 top_p=1.0, seed=None, stop=(), on_event=None):
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.stop = [s for s in stop if s]
        self.on_event = on_event or (lambda event: None)
        self.number = next(self._ids)
        # Drawn only for sampling; position i uses uniforms[i].
        self.uniforms = (
            np.random.default_rng(seed).random(len(self.prompt_ids) + self.max_tokens,
                                               dtype="float32")
            if self.temperature > 0 else None
        )
        self.generated = []
        self.text = ""  # the final text so far (emitted or held back)
        self.emitted = 0  # characters of `text` already sent
        self.finish_reason = None
        self.arrived = time.monotonic()
        self.first_token_at = None
        self.finished_at = None
        self.cancelled = False
        # Set once the request is in a slot.
        self.position = None
        self.last_token = None

    @property
    def prompt_tokens(self):
        return len(self.prompt_ids)

    @property
    def completion_tokens(self):
        return len(self.generated)

    @property
    def done(self):
        return self.finish_reason is not None

    def time_to_first_token(self):
        return None if self.first_token_at is None else self.first_token_at - self.arrived

    def _finish(self, reason, event=None):
        if self.done:
            return
        self.finish_reason = reason
        self.finished_at = time.monotonic()
        self.on_event(event or ("done", reason))


class Scheduler:
    """Serves ``GenerationRequest``s with continuous batching on ``model``.

    Args:
        model: a ``keras_gemma.GemmaCausalLM`` with a preprocessor.
        max_batch: batch slots (requests decoded together).
        max_queue: requests that may wait for a slot; ``submit`` raises
            ``QueueFull`` beyond that (default: 4 x ``max_batch``).
        context_length: most tokens (prompt + output) of one request
            (default: the preprocessor's ``sequence_length``).

    Example:

    ```python
    import queue
    scheduler = Scheduler(model, max_batch=4)
    scheduler.start()
    events = queue.Queue()
    ids = [2] + model.preprocessor.tokenizer.tokenize("The capital of France is")
    scheduler.submit(GenerationRequest(ids, max_tokens=20, on_event=events.put))
    scheduler.stop()
    ```
    """

    def __init__(self, model, max_batch=16, max_queue=None, context_length=None):
        if model.preprocessor is None:
            raise ValueError("Serving needs a model with a preprocessor (a tokenizer).")
        for name, value in (("max_batch", max_batch), ("context_length", context_length),
                            ("max_queue", max_queue)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < (0 if name == "max_queue" else 1)):
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if context_length is not None and context_length < 2:
            raise ValueError(f"`context_length` must be at least 2, got {context_length}.")
        self.model = model
        self.tokenizer = model.preprocessor.tokenizer
        self.max_batch = max_batch
        self.max_queue = 4 * max_batch if max_queue is None else max_queue
        self.context_length = context_length or model.preprocessor.sequence_length
        tokenizer = self.tokenizer
        self.stop_token_ids = {
            i for i in (tokenizer.eos_token_id, tokenizer.end_of_turn_token_id)
            if i is not None
        }
        # Dropped from the text, as GemmaCausalLM.generate drops them.
        self._hidden_ids = {tokenizer.pad_token_id, tokenizer.bos_token_id,
                            tokenizer.eos_token_id}
        self.max_top_k = min(model.backbone.vocabulary_size, MAX_CANDIDATES)
        self.engine = None
        self._slots = [None] * max_batch
        self._waiting = collections.deque()
        self._condition = threading.Condition()
        self._accepting = False
        self._stopping = False
        self._thread = None

    # -- control (any thread) --------------------------------------------------

    def start(self):
        """Builds the slot cache, compiles and warms up, starts the thread."""
        if self._thread is not None:
            raise RuntimeError("This scheduler was already started.")
        self.engine = SlotEngine(self.model, self.max_batch, self.context_length)
        # Compile both programs now, not on the first request.
        self.engine.prefill(0, [self.tokenizer.bos_token_id])
        self.engine.step(tokens=None, positions=None,
                         temperature=np.ones((self.max_batch,), "float32"))
        self._accepting = True
        self._thread = threading.Thread(
            target=self._run, name="keras-gemma-scheduler", daemon=True
        )
        self._thread.start()

    def submit(self, *requests):
        """Queues requests, all or none: raises ``QueueFull`` or ``NotAccepting``."""
        with self._condition:
            if not self._accepting:
                raise NotAccepting("The server is shutting down and takes no new requests.")
            in_system = len(self._waiting) + sum(r is not None for r in self._slots)
            if in_system + len(requests) > self.max_batch + self.max_queue:
                raise QueueFull(
                    f"The queue is full ({self.max_queue} requests waiting for "
                    f"{self.max_batch} batch slots); retry later."
                )
            self._waiting.extend(requests)
            self._condition.notify_all()

    def cancel(self, request):
        """Stops a request; its slot (or queue place) is freed before the next step."""
        if request.done:
            return
        request.cancelled = True
        with self._condition:
            self._condition.notify_all()

    def stop_accepting(self):
        with self._condition:
            self._accepting = False

    def stop(self, timeout=30.0):
        """Takes no new requests, lets those queued or running finish for up
        to ``timeout`` seconds, cancels the rest, and ends the thread."""
        self.stop_accepting()
        deadline = time.monotonic() + (timeout or 0.0)
        with self._condition:
            while (self._waiting or any(self._slots)) and time.monotonic() < deadline:
                self._condition.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def stats(self):
        with self._condition:
            return {
                "slots": self.max_batch,
                "active": sum(r is not None for r in self._slots),
                "queued": len(self._waiting),
                "accepting": self._accepting,
            }

    # -- the scheduler thread --------------------------------------------------

    def _run(self):
        while True:
            with self._condition:
                self._drop_cancelled()
                while not self._stopping and not self._waiting and not any(self._slots):
                    self._condition.wait()
                if self._stopping:
                    for request in [*self._waiting, *filter(None, self._slots)]:
                        request._finish("cancelled")
                    self._waiting.clear()
                    self._slots = [None] * self.max_batch
                    self._condition.notify_all()
                    return
                admitted = []
                for slot, occupant in enumerate(self._slots):
                    if occupant is None and self._waiting:
                        request = self._waiting.popleft()
                        self._slots[slot] = request
                        admitted.append((slot, request))
            for slot, request in admitted:
                self._guarded(self._prefill, [(slot, request)], slot, request)
            occupied = [(s, r) for s, r in enumerate(self._slots) if r is not None]
            if occupied:
                self._guarded(self._step, occupied, occupied)

    def _guarded(self, function, affected, *args):
        """Runs ``function``; if it fails, its requests end with an error."""
        try:
            function(*args)
        except Exception as error:  # one bad step must not end the server
            logger.exception("keras-gemma serve: the model step failed")
            message = f"The model failed on this request: {type(error).__name__}: {error}"
            for slot, request in affected:
                request._finish("error", ("error", message))
            self._free_finished()

    def _drop_cancelled(self):
        """(Under the lock.) Ends cancelled requests and frees their places."""
        for request in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(request)
            request._finish("cancelled")
        for slot, request in enumerate(self._slots):
            if request is not None and request.cancelled:
                request._finish("cancelled")
                self._slots[slot] = None
        self._condition.notify_all()

    def _free_finished(self):
        with self._condition:
            for slot, request in enumerate(self._slots):
                if request is not None and (request.done or request.cancelled):
                    request._finish("cancelled")
                    self._slots[slot] = None
            self._condition.notify_all()

    def _prefill(self, slot, request):
        self.engine.prefill(slot, request.prompt_ids)
        # The first step runs the last prompt token again, as generate does.
        request.position = len(request.prompt_ids) - 1
        request.last_token = request.prompt_ids[-1]

    def _step(self, occupied):
        n = self.max_batch
        tokens = np.zeros((n,), "int32")
        positions = np.zeros((n,), "int32")
        temperature = np.zeros((n,), "float32")
        top_k = np.zeros((n,), "int32")
        top_p = np.ones((n,), "float32")
        uniforms = np.zeros((n,), "float32")
        for slot, request in occupied:
            tokens[slot] = request.last_token
            positions[slot] = request.position
            if request.uniforms is not None:
                temperature[slot] = request.temperature
                top_k[slot] = request.top_k
                top_p[slot] = request.top_p
                uniforms[slot] = request.uniforms[request.position + 1]
        next_tokens = self.engine.step(tokens, positions, temperature, top_k, top_p, uniforms)
        now = time.monotonic()
        for slot, request in occupied:
            if request.first_token_at is None:
                request.first_token_at = now
            self._accept(request, int(next_tokens[slot]))
        self._free_finished()

    def _accept(self, request, token):
        """Adds one sampled token to ``request``; finishes it if it is done."""
        if request.cancelled:
            return
        if token in self.stop_token_ids:
            self._update_text(request, final=True)
            request._finish("stop")
            return
        request.generated.append(token)
        request.position += 1
        request.last_token = token
        if self._update_text(request, final=False):
            request._finish("stop")
        elif len(request.generated) >= request.max_tokens:
            self._update_text(request, final=True)
            request._finish("length")

    def _update_text(self, request, final):
        """Emits the text that can no longer change; True if a stop string hit."""
        text = self.tokenizer.detokenize(
            [t for t in request.generated if t not in self._hidden_ids]
        )
        hits = [i for i in (text.find(s) for s in request.stop) if i >= 0]
        if hits:
            text, final = text[: min(hits)], True
        ready = len(text)
        if not final:
            # A character split over byte tokens shows as U+FFFD until its
            # last byte arrives, and text that may begin a stop string may
            # still become one: hold both back.
            if text.endswith("\ufffd"):
                ready = request.emitted
            else:
                ready -= _longest_stop_prefix(text, request.stop)
        request.text = text
        if ready > request.emitted:
            piece = text[request.emitted:ready]
            request.emitted = ready
            request.on_event(("text", piece))
        return bool(hits)


def _longest_stop_prefix(text, stops):
    """Length of the longest end of ``text`` that begins some stop string."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-length:]):
                longest = length
                break
    return longest
