"""Token samplers: greedy, random, top-k and top-p (nucleus).

A sampler maps next-token logits, float32 (batch, vocabulary), to token ids
(batch,). Randomness comes in as one uniform number per sequence and step,
drawn by ``GemmaCausalLM.generate`` from numpy with the user's ``seed``; each
sampler turns it into a token by inverting its distribution's CDF. This keeps
sampling inside the compiled decode loop with no random state to thread
through it, and the same seed gives every backend the same random numbers.

The constructors take keras-hub's arguments (``k``, ``p``, ``seed``,
``temperature``). A sampler's ``seed`` works as in keras-hub: fresh models
compiled with ``TopKSampler(k=5, seed=2)`` generate the same text, and each
further ``generate`` call with the same sampler draws new numbers (the seed
for call ``n`` is ``[seed, n]``). ``generate(seed=...)`` overrides it.
"""

import keras
from keras import ops

from keras_gemma import xla_cpu


def _register(cls):
    return keras.saving.register_keras_serializable(package="keras_gemma")(cls)


@_register
class Sampler:
    """Base class: ``temperature`` divides the logits before softmax."""

    def __init__(self, temperature=1.0, seed=None):
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(
                f"`temperature` must be a number > 0, got {temperature!r}."
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(
                f"`seed` must be None or an integer >= 0, got {seed!r}."
            )
        self.temperature = float(temperature)
        self.seed = seed
        self._calls = 0

    def __call__(self, logits, uniform):
        raise NotImplementedError

    def next_seed(self):
        """The numpy seed for the next ``generate`` call: None (fresh
        entropy) without a ``seed``, else ``[seed, number of calls so far]``."""
        if self.seed is None:
            return None
        seed = [self.seed, self._calls]
        self._calls += 1
        return seed

    def get_config(self):
        config = {"temperature": self.temperature}
        if self.seed is not None:
            config["seed"] = self.seed
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _pick(self, probabilities, uniform):
        """Index j with cdf[j - 1] <= u < cdf[j], for each row."""
        cdf = ops.cumsum(probabilities, axis=-1)
        # Scale u by the total so rows that were truncated need no renormalizing.
        threshold = uniform[:, None] * cdf[:, -1:]
        index = ops.sum(ops.cast(cdf <= threshold, "int32"), axis=-1)
        return ops.minimum(index, ops.shape(probabilities)[-1] - 1)

    def _probabilities(self, logits):
        return ops.softmax(logits / self.temperature, axis=-1)


@_register
class GreedySampler(Sampler):
    """Always the most likely token. Deterministic; the default.

    ``temperature`` is accepted (as keras-hub does) but cannot change the
    most likely token.
    """

    def __init__(self, temperature=1.0):
        super().__init__(temperature)

    def __call__(self, logits, uniform):
        return xla_cpu.argmax(logits)

    def get_config(self):
        return {}


@_register
class RandomSampler(Sampler):
    """Samples from the whole (temperature-scaled) distribution."""

    def __init__(self, seed=None, temperature=1.0):
        super().__init__(temperature, seed)

    def __call__(self, logits, uniform):
        return self._pick(self._probabilities(logits), uniform)


@_register
class TopKSampler(Sampler):
    """Samples among the ``k`` most likely tokens.

    Example: ``gemma.compile(sampler=TopKSampler(k=5, seed=2))``.
    """

    def __init__(self, k=5, seed=None, temperature=1.0):
        super().__init__(temperature, seed)
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
        return {"k": self.k, **super().get_config()}


@_register
class TopPSampler(Sampler):
    """Nucleus sampling: the smallest set of top tokens with mass >= ``p``.

    ``k`` optionally limits the candidates first, which saves sorting the
    whole vocabulary at every step. ``p`` defaults to 0.1, as in keras-hub.
    """

    def __init__(self, p=0.1, k=None, seed=None, temperature=1.0):
        super().__init__(temperature, seed)
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
        return {"p": self.p, "k": self.k, **super().get_config()}


SAMPLERS = {
    "greedy": GreedySampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
}


class _NotProvided:
    """A keras-hub sampler keras_gemma does not have: a clear error on use."""

    instead = ""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            f"keras_gemma has no {type(self).__name__}. {self.instead} "
            "Available: GreedySampler, RandomSampler, TopKSampler, TopPSampler."
        )


class BeamSampler(_NotProvided):
    instead = "For deterministic output use GreedySampler (the default)."


class ContrastiveSampler(_NotProvided):
    instead = "Use TopKSampler or TopPSampler."


class SpeculativeSampler(_NotProvided):
    instead = "Use TopKSampler or TopPSampler."


def serialize(sampler):
    """A sampler as a JSON-able dict (as ``keras_hub.samplers.serialize``)."""
    return keras.saving.serialize_keras_object(sampler)


def deserialize(config, custom_objects=None):
    """The sampler ``serialize`` described."""
    return keras.saving.deserialize_keras_object(
        config,
        module_objects={**SAMPLERS, **{c.__name__: c for c in SAMPLERS.values()}},
        custom_objects=custom_objects,
    )


def get(identifier):
    """A sampler from a name (``"greedy"``, ``"top_k"``, ...), an instance, or
    a ``serialize`` dict."""
    if isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str) and identifier in SAMPLERS:
        return SAMPLERS[identifier]()
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(
        f"Unknown sampler {identifier!r}. Use one of {sorted(SAMPLERS)} or a "
        "keras_gemma.samplers.Sampler instance, e.g. TopKSampler(k=10)."
    )
