"""Rotary position embeddings (RoPE), in the "rotate half" layout.

Gemma's reference code, Hugging Face and llama.cpp pair feature ``i`` with
feature ``i + head_dim / 2``. (keras-hub pairs neighbours instead; since it
does so for queries and keys alike, attention scores are the same.)
"""

from keras import ops


def rotary_cos_sin(
    positions, head_dim, max_wavelength, scaling_factor=1.0, rotary_fraction=1.0
):
    """Returns ``cos`` and ``sin`` of shape ``(len(positions), head_dim)``.

    ``positions`` is a 1-D tensor of absolute positions; ``scaling_factor``
    is linear position interpolation (Gemma 3's long-context global layers
    divide positions by 8). ``rotary_fraction`` < 1 is Gemma 4's
    "proportional" RoPE: only the first ``int(fraction * head_dim / 2)``
    frequencies (which keep their full-width values ``base^(-2i/head_dim)``)
    rotate; the rest have frequency 0, so those features pass unrotated.
    """
    exponents = ops.arange(0, head_dim, 2, dtype="float32") / head_dim
    inverse_frequencies = 1.0 / ops.power(float(max_wavelength), exponents)
    rotated = int(rotary_fraction * head_dim // 2)
    if rotated < head_dim // 2:
        keep = ops.arange(head_dim // 2) < rotated
        inverse_frequencies = ops.where(keep, inverse_frequencies, 0.0)
    positions = ops.cast(positions, "float32") / float(scaling_factor)
    angles = ops.einsum("t,f->tf", positions, inverse_frequencies)
    angles = ops.concatenate([angles, angles], axis=-1)
    return ops.cos(angles), ops.sin(angles)


def apply_rotary(x, cos, sin):
    """Rotates ``x`` of shape ``(batch, time, heads, head_dim)``.

    ``cos`` and ``sin`` are (time, head_dim), or (batch, time, head_dim)
    when each row has its own positions.
    """
    if len(cos.shape) == 2:
        cos, sin = cos[None], sin[None]
    cos = ops.cast(cos[:, :, None, :], x.dtype)
    sin = ops.cast(sin[:, :, None, :], x.dtype)
    first_half, second_half = ops.split(x, 2, axis=-1)
    rotated = ops.concatenate([-second_half, first_half], axis=-1)
    return x * cos + rotated * sin
