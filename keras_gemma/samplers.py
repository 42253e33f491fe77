"""Token samplers: greedy, random, top-k and top-p (nucleus).

A sampler maps next-token logits, float32 (batch, vocabulary), to token ids
(batch,). Randomness comes in as one uniform number per sequence and step,
drawn by ``GemmaCausalLM.generate`` from numpy with the user's ``seed``; each
sampler turns it into a token by inverting its distribution's CDF. This keeps
sampling inside the compiled decode loop with no random state to thread
through it, and the same seed gives every backend the same random numbers.
"""

from keras import ops


class Sampler:
    """Base class: ``temperature`` divides the logits before softmax."""

    def __init__(self, temperature=1.0):
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(
                f"`temperature` must be a number > 0, got {temperature!r}."
            )
        self.temperature = float(temperature)

    def __call__(self, logits, uniform):
        raise NotImplementedError

    def get_config(self):
        return {"temperature": self.temperature}

    def _pick(self, probabilities, uniform):
        """Index j with cdf[j - 1] <= u < cdf[j], for each row."""
        cdf = ops.cumsum(probabilities, axis=-1)
        # Scale u by the total so rows that were truncated need no renormalizing.
        threshold = uniform[:, None] * cdf[:, -1:]
        index = ops.sum(ops.cast(cdf <= threshold, "int32"), axis=-1)
        return ops.minimum(index, ops.shape(probabilities)[-1] - 1)

    def _probabilities(self, logits):
        return ops.softmax(logits / self.temperature, axis=-1)


class GreedySampler(Sampler):
    """Always the most likely token. Deterministic; the default."""

    def __init__(self):
        super().__init__(1.0)

    def __call__(self, logits, uniform):
        return ops.cast(ops.argmax(logits, axis=-1), "int32")

    def get_config(self):
        return {}


class RandomSampler(Sampler):
    """Samples from the whole (temperature-scaled) distribution."""

    def __call__(self, logits, uniform):
        return self._pick(self._probabilities(logits), uniform)


class TopKSampler(Sampler):
    """Samples among the ``k`` most likely tokens."""

    def __init__(self, k=5, temperature=1.0):
        super().__init__(temperature)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`k` must be an integer >= 1, got {k!r}.")
        self.k = k

    def __call__(self, logits, uniform):
        k = min(self.k, logits.shape[-1])
        values, indices = ops.top_k(logits, k)
        choice = self._pick(self._probabilities(values), uniform)
        return ops.cast(
            ops.take_along_axis(indices, choice[:, None], axis=-1)[:, 0], "int32"
        )

    def get_config(self):
        return {"k": self.k, "temperature": self.temperature}


class TopPSampler(Sampler):
    """Nucleus sampling: the smallest set of top tokens with mass >= ``p``.

    ``k`` optionally limits the candidates first, which saves sorting the
    whole vocabulary at every step.
    """

    def __init__(self, p=0.9, k=None, temperature=1.0):
        super().__init__(temperature)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"`p` must be a number in (0, 1], got {p!r}.")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"`k` must be None or an integer >= 1, got {k!r}.")
        self.p = float(p)
        self.k = k

    def __call__(self, logits, uniform):
        k = logits.shape[-1] if self.k is None else min(self.k, logits.shape[-1])
        values, indices = ops.top_k(logits, k)
        probabilities = self._probabilities(values)
        mass_before = ops.cumsum(probabilities, axis=-1) - probabilities
        # The most likely token is always kept, even when it alone exceeds p.
        keep = mass_before < self.p
        probabilities = ops.where(keep, probabilities, 0.0)
        choice = self._pick(probabilities, uniform)
        return ops.cast(
            ops.take_along_axis(indices, choice[:, None], axis=-1)[:, 0], "int32"
        )

    def get_config(self):
        return {"p": self.p, "k": self.k, "temperature": self.temperature}


SAMPLERS = {
    "greedy": GreedySampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
}


def get(identifier):
    """A sampler from a name (``"greedy"``, ``"top_k"``, ...) or an instance."""
    if isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str) and identifier in SAMPLERS:
        return SAMPLERS[identifier]()
    raise ValueError(
        f"Unknown sampler {identifier!r}. Use one of {sorted(SAMPLERS)} or a "
        "keras_gemma.samplers.Sampler instance, e.g. TopKSampler(k=10)."
    )
