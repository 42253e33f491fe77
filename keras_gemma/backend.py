"""The one place that knows which backend Keras runs on.

Model code uses ``keras.ops`` only. Compiling a whole generation loop is the
exception: Keras has no public "jit this function" API, so this module wraps
a function with ``jax.jit`` (passing the model's variables as explicit
arguments, so weights are not baked into the program as constants),
``tf.function(jit_compile=True)``, or runs it eagerly under
``torch.no_grad()``. On PyTorch the body of a decode loop can be compiled
with ``torch.compile`` instead (see ``while_loop``), when
``KERAS_GEMMA_TORCH_COMPILE`` asks for it.
"""

import contextlib
import contextvars
import numbers
import os

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

    compile_steps = torch_compiles(model)

    def run_without_grad(*args):
        token = _COMPILE_LOOP_BODIES.set(compile_steps)
        try:
            with torch.no_grad(), _intra_op_threads(torch_inference_threads()):
                return function(*args)
        finally:
            _COMPILE_LOOP_BODIES.reset(token)

    return run_without_grad


# -- PyTorch: compiled decode steps -------------------------------------------------

TORCH_COMPILE_SETTING = "KERAS_GEMMA_TORCH_COMPILE"
# "auto" compiles models at least this big: compiling costs minutes on a
# small CPU, which only a real model's generation pays back; the unit
# tests' tiny models stay eager.
TORCH_COMPILE_MIN_PARAMETERS = 100_000_000
_COMPILE_LOOP_BODIES = contextvars.ContextVar("keras_gemma_compile_loop_bodies", default=False)


def torch_compiles(model):
    """Whether generation on PyTorch compiles ``model``'s decode step.

    ``KERAS_GEMMA_TORCH_COMPILE``: ``0`` (the default: eager), ``1`` (always)
    or ``auto`` (models of at least 100M parameters).
    """
    setting = os.environ.get(TORCH_COMPILE_SETTING, "0").strip().lower()
    if setting in ("", "0", "off", "false", "no"):
        return False
    if setting in ("1", "on", "true", "yes"):
        return True
    if setting == "auto":
        return model.count_params() >= TORCH_COMPILE_MIN_PARAMETERS
    raise ValueError(
        f"{TORCH_COMPILE_SETTING}={setting!r}: use 0 (eager), 1 (compile) or auto "
        f"(compile models of at least {TORCH_COMPILE_MIN_PARAMETERS:,} parameters)."
    )


def while_loop(cond, body, loop_vars):
    """``keras.ops.while_loop``; on PyTorch, optionally with a compiled body.

    JAX and TensorFlow compile the whole loop with the function around it.
    Eager PyTorch runs ``body`` op by op, and each op pays Python, dispatch
    and thread start-up costs (hundreds per decoded token); inside a
    ``compile_inference`` function of a model that ``torch_compiles``,
    ``body`` is compiled with ``torch.compile`` (fused kernels, one call per
    step) and the loop itself stays in Python. ``torch.compile`` caches the
    program by ``body``'s code, so a new closure of the same body reuses it.
    """
    if name() != "torch":
        return keras.ops.while_loop(cond, body, loop_vars)
    import torch

    step = torch.compile(body) if _COMPILE_LOOP_BODIES.get() else body
    loop_vars = tuple(loop_vars)
    while bool(cond(*loop_vars)):
        loop_vars = tuple(step(*loop_vars))
    return loop_vars


TORCH_THREADS_SETTING = "KERAS_GEMMA_TORCH_THREADS"


def torch_inference_threads():
    """Intra-op threads for ``compile_inference`` functions on PyTorch.

    Eager generation is ~1,000 small ops per token; every op that PyTorch
    splits over threads waits until all its threads run, and on a CPU whose
    cores are busy (or simply few) that wait costs more than the split
    saves (2-core machine under load: 170 ms per decoded token with one
    thread, 1,600 ms with two; see benchmarks/README.md).
    ``KERAS_GEMMA_TORCH_THREADS``: a number, or ``auto`` (the default): half
    of ``torch.get_num_threads()``, at least 1. Training, ``score`` and
    everything outside these functions keep PyTorch's own setting.
    """
    import torch

    setting = os.environ.get(TORCH_THREADS_SETTING, "auto").strip().lower()
    if setting in ("", "auto"):
        return max(1, _torch_threads_outside() // 2)
    try:
        threads = int(setting)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(
            f"{TORCH_THREADS_SETTING}={setting!r}: use a number of threads "
            "(1 or more) or auto (half of torch.get_num_threads())."
        )
    return threads


_THREADS_OUTSIDE = contextvars.ContextVar("keras_gemma_torch_threads_outside", default=None)


def _torch_threads_outside():
    # Nested compile_inference calls halve the caller's setting, not ours.
    import torch

    outside = _THREADS_OUTSIDE.get()
    return torch.get_num_threads() if outside is None else outside


@contextlib.contextmanager
def _intra_op_threads(threads):
    import torch

    before = torch.get_num_threads()
    token = _THREADS_OUTSIDE.set(_torch_threads_outside())
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)
        _THREADS_OUTSIDE.reset(token)


# Rows copied per step when filling a TensorFlow variable from host memory.
_ASSIGN_CHUNK_BYTES = 8 * 2**20


def compiles_loops():
    """Whether ``compile_inference`` compiles (JAX, TensorFlow) or runs eagerly."""
    return name() != "torch"


def assign_from_host(variable, value):
    """Copies ``value`` (a numpy array) into ``variable`` without extra copies.

    Loading must not hold more than one spare copy of a tensor (the numpy
    array the reader made). A plain ``Variable.assign`` holds two or three on
    TensorFlow and PyTorch (a converted tensor, and on TensorFlow the
    variable's old buffer), so:

    - JAX: ``assign`` (CPU arrays can alias numpy memory); under a
      ``keras.distribution`` each device receives only its own shard.
    - TensorFlow: the rows are written in place, a few MiB at a time.
    - PyTorch: ``copy_`` from a tensor sharing the numpy array's memory.
    """
    import numpy as np

    backend = name()
    if backend == "jax":
        layout = getattr(variable, "_layout", None)
        if layout is not None:
            import jax
            import jax.numpy as jnp

            sharding = getattr(layout, "backend_layout", layout)
            host_value = np.asarray(value).astype(jnp.dtype(variable.dtype), copy=False)
            value = jax.device_put(host_value, sharding)
        variable.assign(value)
        return
    if backend == "torch":
        import torch

        value = np.asarray(value)
        if value.dtype.name == "bfloat16":  # ml_dtypes; torch has no numpy bridge
            source = torch.from_numpy(np.ascontiguousarray(value).view(np.int16))
            source = source.view(torch.bfloat16)
        else:
            source = torch.from_numpy(np.ascontiguousarray(value))
        # np.ascontiguousarray makes a 0-d array 1-d (Gemma 4's layer scalars).
        source = source.reshape(value.shape)
        with torch.no_grad():
            variable.value.copy_(source)  # converts dtype and device as it goes
        return

    import tensorflow as tf

    target = variable.value
    handle = getattr(target, "handle", None)
    value = np.asarray(value)
    if handle is None or value.ndim == 0 or value.nbytes <= _ASSIGN_CHUNK_BYTES:
        variable.assign(value)
        return
    rows = max(1, _ASSIGN_CHUNK_BYTES // (value.nbytes // value.shape[0]))
    for begin in range(0, value.shape[0], rows):
        end = min(value.shape[0], begin + rows)
        chunk = tf.cast(tf.constant(value[begin:end]), target.dtype)
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=handle,
            begin=[begin] + [0] * (value.ndim - 1),
            end=[end] + list(value.shape[1:]),
            strides=[1] * value.ndim,
            value=chunk,
        )


def static_size(size):
    """A dimension of a tensor's shape as an ``int``, or None if it is only
    known when the program runs.

    Tracing for any shape, TensorFlow gives None and ``torch.export`` a
    symbolic ``torch.SymInt`` (which Python arithmetic and comparisons would
    pin to the traced example's size); both come back as None.
    """
    return int(size) if isinstance(size, numbers.Integral) else None


def no_grad():
    """Context manager disabling gradient tracking where that costs (torch)."""
    if name() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


# -- memory (see keras_gemma/memory.py) ------------------------------------------


def output_specs(function):
    """What ``function()`` would return, as shapes and dtypes, allocating nothing.

    Traces ``function`` symbolically (``jax.eval_shape``, a TensorFlow graph,
    PyTorch's meta device) through Keras' own tracer, so e.g. the key/value
    cache of a 10^9-token generation can be sized without creating it.
    """
    from keras.src.backend import compute_output_spec

    return compute_output_spec(function)


def host_memory_available():
    """Bytes the host can still give this process (``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import os

    try:  # other Unixes: free pages only (a lower bound: caches not counted)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def device_memory_available():
    """``(bytes or None, where)``: memory free where Keras puts new tensors.

    On an accelerator that is its free memory (summed over the devices a
    ``keras.distribution`` spreads weights across); on a CPU it is the host's.
    ``None`` means the backend cannot tell (TensorFlow on a GPU reports
    usage, not capacity); then nothing is refused.
    """
    backend = name()
    if backend == "jax":
        import jax

        devices = jax.local_devices()
        if devices[0].platform != "cpu":
            if keras.distribution.distribution() is None:
                devices = devices[:1]
            free = 0
            for device in devices:
                stats = device.memory_stats() or {}
                if "bytes_limit" not in stats:
                    return None, f"{device.platform.upper()} memory"
                free += stats["bytes_limit"] - stats.get("bytes_in_use", 0)
            where = f"{len(devices)} {devices[0].platform.upper()}s" if len(devices) > 1 else str(devices[0])
            return free, where
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return free, f"cuda:{torch.cuda.current_device()}"
    else:
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            return None, "GPU memory"
    return host_memory_available(), "host memory"


# -- XLA: keeping two computations in separate kernels (quantization.py) -------------


def fusion_barrier(tensor):
    """``tensor`` unchanged; XLA does not fuse the ops on either side into one.

    JAX and TensorFlow compile with XLA, whose CPU backend would otherwise
    merge a sliced int8 matrix-vector product with the sum of the slices
    (see ``quantization.grouped_matmul``); PyTorch does not fuse, so there
    it is the identity.
    """
    backend = name()
    if backend == "jax":
        import jax

        return jax.lax.optimization_barrier(tensor)
    if backend == "tensorflow":
        from tensorflow.compiler.tf2xla.python import xla

        return xla.optimization_barrier(tensor)[0]
    return tensor
