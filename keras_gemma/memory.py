"""Will it fit? Memory estimates, checked before allocations that a config
or a length decides.

A config with ``hidden_dim=10**9`` or ``generate(..., max_length=10**9)``
would otherwise reach the backend and fail after a long wait with its own
out-of-memory message. Here the bytes are estimated first, without
allocating anything, and compared with what is free where the tensors go
(the accelerator, or the host on a CPU; see ``backend.device_memory_available``):

- building a backbone: ``count_parameters(config)`` times the bytes of the
  variables' dtype (int8 layers: one byte plus a float32 scale per 32);
- a generation: the key/value cache as ``backbone.init_cache`` would make it
  (its shapes traced symbolically), the token arrays, one layer's attention
  scores during the prefill, and the logits of one decode step.

Both refuse with a ``NotEnoughMemoryError`` (a ``ValueError`` and a
``MemoryError``) giving the bytes needed, the bytes free and the largest
value that would fit. The estimates leave out what cannot be known up front
(compiled programs, allocator slack), so they refuse only what cannot fit.
Set ``KERAS_GEMMA_SKIP_MEMORY_CHECK=1`` to skip the check.

Example:

```python
import keras_gemma
from keras_gemma import memory

config = keras_gemma.preset_info("gemma_7b_en")["backbone"]
memory.backbone_bytes(config, "bfloat16")  # 17075361792: about 17 GB
```
"""

import math
import os

import numpy as np

from keras_gemma import backend
from keras_gemma import quantization

SKIP_VARIABLE = "KERAS_GEMMA_SKIP_MEMORY_CHECK"
# An int8 matrix stores one byte per value plus one float32 scale per group.
INT8_BYTES_PER_PARAMETER = 1 + 4 / quantization.GROUP_SIZE


class NotEnoughMemoryError(ValueError, MemoryError):
    """What was asked for cannot fit in the memory that is free."""


def _skipped():
    return os.environ.get(SKIP_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def _itemsize(dtype):
    dtype = getattr(dtype, "variable_dtype", dtype) or "float32"
    dtype = str(dtype)
    if dtype.startswith("mixed_"):  # a mixed policy's variables are float32
        return 4
    if dtype == "bfloat16":
        return 2
    return np.dtype(dtype).itemsize


def format_bytes(count):
    """``1.5 GB``-style text (decimal units, as memory is usually quoted)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
    return f"{int(count)} bytes"


# -- estimates -------------------------------------------------------------------


def backbone_bytes(config, dtype="float32", int8=False, count_parameters=None):
    """Bytes of the variables of a backbone with this config.

    ``dtype``: the variables' dtype (a name or a dtype policy; a mixed policy
    stores float32). ``int8``: built with int8 layers (``quantize="int8"``).
    """
    if count_parameters is None:
        from keras_gemma.backbone import GemmaBackbone

        count_parameters = GemmaBackbone.count_parameters
    per_parameter = INT8_BYTES_PER_PARAMETER if int8 else _itemsize(dtype)
    return int(math.ceil(_parameters(config, count_parameters) * per_parameter))


def _parameters(config, count_parameters, fitting=None):
    """``count_parameters(config)``, or a lower bound when that is absurd.

    count_parameters walks the layers; a config with 10^18 layers is over
    any memory by the lower bound already, so it is never walked.
    ``fitting``: the most parameters that fit, if known (a lower bound
    above it is answer enough).
    """
    at_least = _parameters_at_least(config)
    limit = _LOWER_BOUND_PARAMETERS if fitting is None else min(fitting, _LOWER_BOUND_PARAMETERS)
    return at_least if at_least > limit else count_parameters(config)


# Configs with at least this many parameters (10^15) fit nowhere.
_LOWER_BOUND_PARAMETERS = 10**15


def _parameters_at_least(config):
    """A lower bound on the parameters: the embedding and two norms a layer.

    0 when the sizes are not integers (count_parameters then says why).
    """
    sizes = [config.get(name) for name in ("vocabulary_size", "hidden_dim", "num_layers")]
    if not all(isinstance(size, int) and not isinstance(size, bool) and size > 0
               for size in sizes):
        return 0
    vocabulary_size, hidden_dim, num_layers = sizes
    return hidden_dim * (vocabulary_size + 2 * num_layers)


def cache_bytes(backbone, batch_size, length):
    """Bytes of ``backbone.init_cache(batch_size, length)``, allocating nothing."""
    specs = backend.output_specs(lambda: backbone.init_cache(batch_size, length))
    total = 0
    for spec in _leaves(specs):
        total += math.prod(spec.shape) * _itemsize(spec.dtype)
    return total


def generation_bytes(backbone, batch_size, length, prefill_length=1):
    """Bytes a generation of ``batch_size`` x ``length`` tokens allocates.

    ``length``: the cache's length (the total length, padded as generate
    pads it); ``prefill_length``: the tokens run through at once first.
    Returns a dict of the parts and their ``"total"``.
    """
    parts = {
        "key/value cache": cache_bytes(backbone, batch_size, length),
        # token ids (numpy + tensor, int32), padding masks (bool, two),
        # sampling uniforms (float32).
        "token arrays": batch_size * length * (4 + 4 + 1 + 1 + 4),
        # One layer's attention scores and probabilities (float32) over the
        # whole cache while the prompt is prefilled.
        "prefill attention": 2 * 4 * batch_size * backbone.num_query_heads
        * min(prefill_length, length) * length,
        # One decode step's logits (float32) and their softmax.
        "logits": 2 * 4 * batch_size * backbone.vocabulary_size,
    }
    parts["total"] = sum(parts.values())
    return parts


def _leaves(tree):
    if isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _leaves(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _leaves(item)
    elif tree is not None:
        yield tree


# -- checks ----------------------------------------------------------------------


def available_bytes():
    """``(bytes or None, where)``: free memory where new tensors go."""
    return backend.device_memory_available()


def check_backbone(backbone, available=None):
    """Refuses to build ``backbone``'s weights if they cannot fit.

    Called by ``GemmaBackbone.__init__`` before any variable exists, with
    its config and dtype policy already set. ``available``: ``(bytes,
    where)``, for tests; default: ``available_bytes()``.
    """
    check_weights(
        backbone._config(),
        backbone.dtype_policy.variable_dtype,
        int8=quantization.building_int8(),
        count_parameters=type(backbone).count_parameters,
        available=available,
    )


def check_weights(config, dtype="float32", int8=False, count_parameters=None,
                  available=None):
    """Refuses a backbone config whose weights cannot fit (see check_backbone)."""
    if _skipped():
        return
    if count_parameters is None:
        from keras_gemma.backbone import GemmaBackbone

        count_parameters = GemmaBackbone.count_parameters
    free, where = available if available is not None else available_bytes()
    per_parameter = INT8_BYTES_PER_PARAMETER if int8 else _itemsize(dtype)
    fitting = None if free is None else int(free / per_parameter)
    parameters = _parameters(config, count_parameters, fitting)
    needed = int(math.ceil(parameters * per_parameter))
    if free is None or needed <= free:
        return
    stored = "int8" if int8 else dtype
    # Each candidate in the hint's search is counted only if it could fit.
    def count(candidate):
        return _parameters(candidate, count_parameters, fitting)
    message = (
        f"GemmaBackbone: {parameters:,} parameters in {stored} need "
        f"{format_bytes(needed)}, but only {format_bytes(free)} of {where} "
        f"is free; at most {int(free / (needed / parameters)):,} parameters "
        "would fit."
    )
    hint = _largest_dimension(config, count, needed / parameters, free)
    if hint:
        message += f" {hint}"
    if not int8 and _itemsize(dtype) > 1:
        message += (
            " Use a smaller model, dtype='bfloat16' or quantize='int8', or "
            "check the config for a wrong size."
        )
    raise NotEnoughMemoryError(message)


# Config entries that scale the weights, tried one at a time for a hint.
_DIMENSIONS = (
    "vocabulary_size", "num_layers", "hidden_dim", "intermediate_dim",
    "head_dim", "num_query_heads", "num_key_value_heads",
)


def _largest_dimension(config, count, bytes_per_parameter, free):
    """'hidden_dim=10^9 is the outlier: at most N would fit' (or '')."""
    best = None
    for name in _DIMENSIONS:
        value = config.get(name)
        if not isinstance(value, int) or value < 2:
            continue
        low, high = 0, value  # largest fitting value lies in [low, high)
        while high - low > 1:
            middle = (low + high) // 2
            if name == "num_layers":
                parameters = _layers_estimate(count, config, middle)
            else:
                parameters = _count_valid(count, config, name, middle)
            if parameters is None:  # e.g. heads that stop dividing: no hint
                low = 0
                break
            size = parameters * bytes_per_parameter
            low, high = (middle, high) if size <= free else (low, middle)
        if low >= 1 and (best is None or value / low > best[1] / best[2]):
            best = (name, value, low)
    if best is None:
        return ""
    name, value, largest = best
    return (
        f"With the rest of the config unchanged, {name} (now {value:,}) "
        f"would have to be at most {largest:,}."
    )


def _layers_estimate(count, config, num_layers):
    """Parameters with ``num_layers`` layers, from 1 and 2 layers' counts
    (walking 10^6 layers per step of the search would take seconds; the
    hint is an estimate anyway), or None."""
    one = _count_valid(count, config, "num_layers", 1)
    two = _count_valid(count, config, "num_layers", 2)
    if one is None or two is None:
        return None
    return one + (two - one) * (num_layers - 1)


def _count_valid(count, config, name, value):
    """Parameters with ``config[name] = value``, or of the next valid value
    (count_parameters validates: ``head_dim`` must be even), or None."""
    for candidate in (value, value + 1):
        try:
            return count({**config, name: candidate})
        except ValueError:
            continue
    return None


def check_generation(backbone, batch_size, max_length, cache_length=None,
                     prefill_length=1, context_length=None, available=None):
    """Refuses a generation longer than the model's context or the memory.

    ``max_length``: the total length asked for; ``cache_length``: the
    length the cache gets (``max_length`` rounded up, as generate does);
    ``prefill_length``: the prompt tokens run at once (1 before the prompts
    are tokenized, a lower bound); ``context_length``: the model's maximum
    positions, or None if unknown. ``available``: ``(bytes, where)``, for
    tests.
    """
    if context_length is not None and max_length > context_length:
        raise ValueError(
            f"max_length={max_length:,} exceeds this model's context length "
            f"of {context_length:,} tokens (the positions it was trained on). "
            f"Pass max_length <= {context_length:,}."
        )
    if _skipped():
        return
    cache_length = cache_length or max_length
    needed = generation_bytes(backbone, batch_size, cache_length, prefill_length)
    free, where = available if available is not None else available_bytes()
    if free is None or needed["total"] <= free:
        return
    # Every part grows linearly with the length (the prefill is fixed), and
    # with the batch.
    longer = generation_bytes(backbone, batch_size, 2 * cache_length, prefill_length)
    per_position = (longer["total"] - needed["total"]) / cache_length
    fixed = needed["total"] - per_position * cache_length
    largest_length = int((free - fixed) // per_position) if free > fixed else 0
    largest_batch = int(free // (needed["total"] / batch_size))
    parts = ", ".join(
        f"{name} {format_bytes(size)}" for name, size in needed.items() if name != "total"
    )
    fits = []
    if largest_length >= 2:
        fits.append(f"max_length <= {largest_length:,} would fit for this batch")
    if largest_batch >= 1:
        fits.append(f"a batch of at most {largest_batch:,} prompts at this length")
    raise NotEnoughMemoryError(
        f"Generating {batch_size} x {max_length:,} tokens needs "
        f"{format_bytes(needed['total'])} ({parts}), but only "
        f"{format_bytes(free)} of {where} is free"
        + (f"; {' or '.join(fits)}" if fits else "; not even 2 tokens fit")
        + ". Lower max_length or the batch size."
    )
