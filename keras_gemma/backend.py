"""The one place that knows which backend Keras runs on.

Model code uses ``keras.ops`` only. Compiling a whole generation loop is the
exception: Keras has no public "jit this function" API, so this module wraps
a function with ``jax.jit`` (passing the model's variables as explicit
arguments, so weights are not baked into the program as constants),
``tf.function(jit_compile=True)``, or runs it eagerly under
``torch.no_grad()``.
"""

import contextlib

import keras

SUPPORTED_BACKENDS = ("jax", "tensorflow", "torch")


def name():
    backend = keras.config.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"keras_gemma runs on the backends {', '.join(SUPPORTED_BACKENDS)}; "
            f"Keras is set to '{backend}'. Set KERAS_BACKEND to one of them "
            "before importing keras."
        )
    return backend


def compile_inference(model, function, donate_argnums=()):
    """Returns ``function`` compiled for inference with ``model``'s weights.

    ``function`` takes and returns tensors (or nested tuples/lists of them)
    and reads ``model``'s variables; Python values it needs must be closed
    over, and a new compiled function made for each. ``donate_argnums``
    names arguments the caller never reads again (a key/value cache), so
    JAX may update them in place instead of copying.
    """
    backend = name()
    if backend == "jax":
        import jax

        def stateless(variable_values, *args):
            mapping = list(zip(model.variables, variable_values))
            with keras.StatelessScope(state_mapping=mapping):
                return function(*args)

        donate = tuple(i + 1 for i in donate_argnums)
        jitted = jax.jit(stateless, donate_argnums=donate)

        def run(*args):
            return jitted([v.value for v in model.variables], *args)

        return run
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=True, reduce_retracing=True)

    import torch

    def run_without_grad(*args):
        with torch.no_grad():
            return function(*args)

    return run_without_grad


def place_for_variable(variable, value):
    """``value`` (a numpy array) made ready to assign to ``variable``.

    Under a JAX ``keras.distribution``, each device receives only its own
    shard straight from host memory; a plain ``assign`` would first build
    the whole tensor on one device and then re-shard it.
    """
    layout = getattr(variable, "_layout", None)
    if layout is None or name() != "jax":
        return value
    import jax
    import jax.numpy as jnp
    import numpy as np

    sharding = getattr(layout, "backend_layout", layout)
    host_value = np.asarray(value).astype(jnp.dtype(variable.dtype), copy=False)
    return jax.device_put(host_value, sharding)


def no_grad():
    """Context manager disabling gradient tracking where that costs (torch)."""
    if name() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
