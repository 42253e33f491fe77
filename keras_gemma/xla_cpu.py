"""``keras.ops`` formulations that XLA:CPU compiles better (JAX, TensorFlow).

Used by the compiled decode step only; eager PyTorch keeps the plain ops.

**A vector of its own for a matrix-vector product** (``own_buffer``). XLA:CPU
fuses the cheap ops that compute a matrix-vector product's vector (an
RMSNorm, the sum and head transpose that end attention) into the product,
which then recomputes them for every row of the matrix, and a transposed
read of the vector keeps the product from vectorizing: Gemma 3 270M's int8
attention output projection took 5-10x the time of a gate projection twice
its size. ``own_buffer`` has the vector computed once, into a contiguous
buffer, before the product reads it.

**In-place cache writes** (``after``). A decode step reads each layer's key/value cache (attention) and writes one
position of it (the new key and value). XLA writes in place only when the
program's data flow shows that every read of the old cache comes before the
write; otherwise it copies the whole cache first, every step (Gemma 3 270M
at batch 16 and 256 positions: two copies of each of the 36 caches of 4 MB
per step, ~20 ms). Control dependencies are not enough: XLA:CPU turns an
optimization barrier into the very copy it should prevent. So the written
values are made to depend, by data, on what the readers computed:
``after(done, values)`` adds an exact zero derived from ``done``.
"""

from keras import ops

from keras_gemma import backend


def after(done, values):
    """``values`` (a tensor) unchanged, computed only once ``done`` is.

    The dependency is one element of ``done`` times zero (non-finite
    elements replaced first, so the zero is exact); XLA does not fold
    ``x * 0`` for floats, so it keeps the dependency. Costs one
    multiply-add per element of ``values`` (a decode step's new keys or
    values: a few hundred numbers).
    """
    first = ops.reshape(done, (-1,))[0]
    first = ops.where(ops.isfinite(first), first, ops.zeros_like(first))
    zero = ops.cast(first * 0, values.dtype)
    return values + zero


def own_buffer(values, one):
    """``values`` unchanged, computed into a buffer of their own before use.

    ``values[..., positions]`` with ``positions`` = ``arange * one``: a
    gather, which XLA never fuses into a consumer that reads each element
    many times (a matrix-vector product), while the ops producing
    ``values`` fuse into the gather and run once. ``one`` is a scalar equal
    to 1 that the compiler cannot prove constant (the int8 layers' level
    factor, see ``quantization.levels_varying_with``), so the gather is not
    folded away; with ``one`` None, ``values`` are returned as they are.
    Costs a copy of ``values`` (a few thousand numbers per projection).
    """
    if one is None:
        return values
    positions = ops.arange(values.shape[-1], dtype="int32") * ops.cast(one, "int32")
    return ops.take(values, positions, axis=-1)


def argmax(logits):
    """``ops.argmax(logits, axis=-1)`` as int32 (the first maximum on ties).

    XLA:CPU compiles argmax into a reduction over (value, index) pairs that
    it does not vectorize: 34 ms for 16 x 262,144 logits, against 3 ms for
    this maximum, then the smallest index holding it (two plain
    reductions). A row containing NaN gives its last index (argmax: the
    NaN's). Eager PyTorch: ``argmax``.
    """
    if not backend.compiles_loops():
        return ops.cast(ops.argmax(logits, axis=-1), "int32")
    size = logits.shape[-1]
    largest = ops.max(logits, axis=-1, keepdims=True)
    positions = ops.arange(size, dtype="int32")
    first = ops.min(ops.where(logits == largest, positions, size), axis=-1)
    return ops.minimum(first, size - 1)
