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
import functools
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

        # One trace per input shape, as jax.jit does: a generalized trace
        # (reduce_retracing) sees the batch as None, so shape-dependent
        # choices (int8's one-row matvec, bfloat16 blocks) fall back to the
        # slow formula for every shape after the first.
        return tf.function(function, jit_compile=True, reduce_retracing=False)

    import torch

    step_mode = torch_step_mode(model)
    traces = {}

    def run_without_grad(*args):
        token = _LOOP_BODY_MODE.set((step_mode, model, traces))
        try:
            with torch.no_grad(), _intra_op_threads(torch_inference_threads()):
                return function(*args)
        finally:
            _LOOP_BODY_MODE.reset(token)

    return run_without_grad


# -- PyTorch: traced or compiled decode steps ---------------------------------------

TORCH_COMPILE_SETTING = "KERAS_GEMMA_TORCH_COMPILE"
TORCH_STEP_MODES = ("eager", "trace", "inductor")
# "auto" traces models at least this big: a trace costs about one eager
# step plus two profiling runs, which a real model's generation pays back
# within a few tokens; the unit tests' tiny models (many shapes, few
# tokens each) stay eager.
TORCH_COMPILE_MIN_PARAMETERS = 100_000_000
# (mode, model, traces of this compile_inference function) while one runs.
_LOOP_BODY_MODE = contextvars.ContextVar("keras_gemma_loop_body_mode", default=("eager", None, None))


def torch_step_mode(model):
    """How generation on PyTorch runs ``model``'s decode step.

    ``KERAS_GEMMA_TORCH_COMPILE``:

    - ``auto`` (the default): ``trace`` for models of at least 100M
      parameters, ``eager`` below;
    - ``trace``: the step's ATen ops are recorded once with
      ``torch.jit.trace`` and replayed by TorchScript's executor, without
      the Python, Keras and dispatch work of each op (a second or two to
      trace; the same ops, so the same numbers);
    - ``inductor`` (or ``1``): ``torch.compile`` with inductor (fused
      kernels; minutes to compile on a small CPU);
    - ``eager`` (or ``0``): op by op.
    """
    setting = os.environ.get(TORCH_COMPILE_SETTING, "auto").strip().lower()
    if setting in ("0", "off", "false", "no", "eager"):
        return "eager"
    if setting in ("1", "on", "true", "yes", "inductor"):
        return "inductor"
    if setting == "trace":
        return "trace"
    if setting in ("", "auto"):
        return "trace" if model.count_params() >= TORCH_COMPILE_MIN_PARAMETERS else "eager"
    raise ValueError(
        f"{TORCH_COMPILE_SETTING}={setting!r}: use auto (trace models of at least "
        f"{TORCH_COMPILE_MIN_PARAMETERS:,} parameters), trace, inductor (or 1) "
        "or eager (or 0)."
    )


def torch_compiles(model):
    """Whether generation on PyTorch runs ``model``'s decode step other than eagerly."""
    return torch_step_mode(model) != "eager"


def while_loop(cond, body, loop_vars):
    """``keras.ops.while_loop``; on PyTorch, optionally with a traced or compiled body.

    JAX and TensorFlow compile the whole loop with the function around it.
    Eager PyTorch runs ``body`` op by op, and each op pays Python, Keras
    and dispatch costs (~1,000 ops, a third of a decoded token's time for
    gemma3_270m). Inside a ``compile_inference`` function, ``body`` runs
    as ``torch_step_mode`` says (see ``_traced_step``; inductor:
    ``torch.compile``, which caches the program by ``body``'s code), and
    the loop itself stays in Python.
    """
    if name() != "torch":
        return keras.ops.while_loop(cond, body, loop_vars)
    import torch

    mode, model, traces = _LOOP_BODY_MODE.get()
    loop_vars = tuple(loop_vars)
    if mode == "inductor":
        step = torch.compile(body)
    elif mode == "trace" and bool(cond(*loop_vars)):
        step = _traced_step(body, loop_vars, model, traces)
    else:
        step = body
    while bool(cond(*loop_vars)):
        loop_vars = tuple(step(*loop_vars))
    return loop_vars


def _traced_step(body, loop_vars, model, traces):
    """``body`` as a TorchScript trace: its ATen ops, replayed without Python.

    Every tensor the step reads is an input of the trace, none a constant
    in it: the loop variables, the tensors ``body`` closes over (a decode
    loop's padding mask, sampling uniforms, stop ids) and the model's
    variables (through a ``StatelessScope``), so a new prompt or new
    weights never meet a stale trace. One trace per code, input shapes
    and closed-over Python values, kept by the ``compile_inference``
    function. A trace replays the ops of the step it recorded, so ``body``
    must not choose ops by tensor values read into Python
    (``bool(tensor)``, ``int(tensor)``); shapes may.
    """
    import types
    import warnings

    import torch

    cells = body.__closure__ or ()
    closed = [cell.cell_contents for cell in cells]
    tensor_cells = [i for i, value in enumerate(closed) if isinstance(value, torch.Tensor)]
    flat = keras.tree.flatten(loop_vars)
    key = (
        body.__code__,
        str(keras.tree.map_structure(lambda _: 0, loop_vars)),
        tuple(_trace_key(value) for value in (*flat, *closed)),
    )
    variables = list(model.variables)
    if key not in traces:

        def stateless(values, closed_tensors, *flat_args):
            new_cells = [types.CellType(value) for value in closed]
            for i, tensor in zip(tensor_cells, closed_tensors):
                new_cells[i] = types.CellType(tensor)
            traced_body = types.FunctionType(
                body.__code__, body.__globals__, body.__name__, body.__defaults__, tuple(new_cells)
            )
            # Filled after construction: the constructor would convert and
            # check each value, ~300 more ops recorded into the trace.
            scope = keras.StatelessScope()
            scope.state_mapping.update({id(v): value for v, value in zip(variables, values)})
            with scope:
                outputs = traced_body(*keras.tree.pack_sequence_as(loop_vars, flat_args))
            return tuple(keras.tree.flatten(tuple(outputs)))

        # Keras turns shapes into Python ints as it goes, and the tracer warns
        # about each; shapes are fixed per trace (they are in the key). What
        # the warnings guard against, ops depending on tensor values read
        # into Python, our decode steps do not do (their tests compare
        # traced and eager tokens over many steps, every sampler).
        inputs = ([v.value for v in variables], [closed[i] for i in tensor_cells], *flat)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traces[key] = torch.jit.trace(stateless, inputs, strict=False, check_trace=False)
    traced = traces[key]
    values = [v.value for v in variables]
    closed_tensors = [closed[i] for i in tensor_cells]

    def step(*args):
        outputs = traced(values, closed_tensors, *keras.tree.flatten(args))
        return keras.tree.pack_sequence_as(loop_vars, outputs)

    return step


def _trace_key(value):
    import torch

    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    return ("object", id(value))


def fused_int8_matmul(inputs, levels, scales):
    """``inputs @ dequantized(levels, scales).T`` without a float copy, or None.

    ``levels`` (out, in) int8 and ``scales`` (out, in / group) as
    ``quantization.py`` stores them. Only PyTorch inside a traced or
    compiled ``compile_inference`` function has such a kernel
    (``torch_int8.py``: eager PyTorch would otherwise write a float copy
    of every matrix for every decoded token); None tells the caller to
    dequantize and multiply as usual (XLA fuses that by itself).
    """
    if name() != "torch" or _LOOP_BODY_MODE.get()[0] == "eager":
        return None
    from keras_gemma import torch_int8

    return torch_int8.grouped_int8_matmul(
        keras.ops.convert_to_tensor(inputs),
        keras.ops.convert_to_tensor(levels),
        keras.ops.convert_to_tensor(scales),
    )


def matmul_transposed(inputs, matrix):
    """``inputs @ matrix.T`` for a tall (out, in) ``matrix`` (the tied LM head).

    On PyTorch a few rows times a float32 matrix run as a batch of products
    over row blocks of the matrix (``torch_matmul.py``: MKL's single product
    of that shape reads memory at half speed); elsewhere, and for longer
    inputs, ``keras.ops.matmul``.
    """
    if name() == "torch":
        from keras_gemma import torch_matmul

        inputs = keras.ops.convert_to_tensor(inputs)
        matrix = keras.ops.convert_to_tensor(matrix)
        if inputs.dtype == matrix.dtype:
            return torch_matmul.matmul_transposed(inputs, matrix)
    return keras.ops.matmul(inputs, keras.ops.transpose(matrix))


# Rows from which TensorFlow's decode loops multiply a transposed copy of
# the tied LM head (see transposes_lm_head).
TRANSPOSED_LM_HEAD_MIN_ROWS = 8


def transposes_lm_head(rows, dtype):
    """Whether compiled decode loops of ``rows`` rows should multiply a
    transposed (in, out) copy of the tied LM head, made once per
    generation, instead of the (out, in) matrix as stored.

    TensorFlow 2.21's XLA:CPU multiplies 16 rows by a (640, 262,144)
    float32 matrix ~20% faster than by the (262,144, 640) one Gemma 3 270M
    stores (41 against 51 ms; JAX's XLA: no faster), so batch 16 decodes
    ~12% faster; the copy takes ~0.1 s and its size in memory (0.67 GB)
    while the generation runs. Batch 1 reads memory at the same speed
    either way, so it keeps the matrix as stored. TensorFlow, float32,
    from ``TRANSPOSED_LM_HEAD_MIN_ROWS`` rows.
    """
    return (
        name() == "tensorflow"
        and rows >= TRANSPOSED_LM_HEAD_MIN_ROWS
        and keras.backend.standardize_dtype(dtype) == "float32"
    )


TORCH_THREADS_SETTING = "KERAS_GEMMA_TORCH_THREADS"


def torch_inference_threads():
    """Intra-op threads for ``compile_inference`` functions on PyTorch.

    Every op that PyTorch splits over threads waits until all its threads
    run, and when other processes keep the cores busy that wait costs far
    more than the split saves (2-core machine under load: 170 ms per
    decoded token with one thread, 1,600 ms with two; an int8 traced step
    28 against 5,300 ms; see benchmarks/README.md), while on idle cores
    two threads read memory faster than one (~20 against ~12 GB/s), which
    is what a memory-bound decode step needs.
    ``KERAS_GEMMA_TORCH_THREADS``: a number, or ``auto`` (the default):
    all of ``torch.get_num_threads()`` when that many cores are idle now
    (``/proc/loadavg``'s runnable tasks, other than this one), else half
    of them, at least 1. Training, ``score`` and everything outside these
    functions keep PyTorch's own setting.
    """
    setting = os.environ.get(TORCH_THREADS_SETTING, "auto").strip().lower()
    if setting in ("", "auto"):
        threads = _torch_threads_outside()
        busy = _other_runnable_tasks()
        if busy is not None and busy + threads <= (os.cpu_count() or 1):
            return threads
        return max(1, threads // 2)
    try:
        threads = int(setting)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(
            f"{TORCH_THREADS_SETTING}={setting!r}: use a number of threads "
            "(1 or more) or auto (all of torch.get_num_threads() when the "
            "cores are idle, else half)."
        )
    return threads


def _other_runnable_tasks():
    """Most tasks seen running or waiting for a core, not counting this one
    (Linux: five readings of ``/proc/loadavg`` a millisecond apart), or None.

    The most, not the least: each reading is a snapshot, and threads split
    over a core that another task wants collapse (see above), so one busy
    reading is reason enough for half.
    """
    import time

    readings = []
    for reading in range(5):
        if reading:
            time.sleep(0.001)
        try:
            with open("/proc/loadavg") as f:
                runnable = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        readings.append(runnable - 1)  # the reading thread itself runs
    return max(0, max(readings))


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


# -- XLA:CPU: bfloat16 products for int8 matrices at batch > 1 (quantization.py) -----


def fast_bfloat16_dot():
    """Whether a bfloat16 x bfloat16 product accumulated in float32 beats float32.

    On CPUs (measured on an AVX-512 BF16 machine, 16 x 640 by 640 x 262,144):
    JAX's XLA hands it to YNNPACK, 37-44 ms against 61-70 in float32;
    TensorFlow's XLA, written as ``BatchMatMulV3`` with a float32 output,
    22 ms against 48-51 (its plain bfloat16 ``matmul`` rounds the sums to
    bfloat16, and under ``--xla_cpu_experimental_ynn_fusion_type=dot`` it
    took 79 ms). GPUs and PyTorch are not measured here.
    """
    if name() == "jax":
        import jax

        return jax.default_backend() == "cpu"
    if name() == "tensorflow":
        import tensorflow as tf

        return not tf.config.list_logical_devices("GPU")
    return False


def bfloat16_matmul_transposed(inputs, matrix):
    """``inputs @ matrix.T`` for bfloat16 operands, summed and returned in float32."""
    if name() == "jax":
        import jax
        import jax.numpy as jnp

        contract = (((inputs.ndim - 1,), (1,)), ((), ()))
        return jax.lax.dot_general(inputs, matrix, contract, preferred_element_type=jnp.float32)
    if name() == "tensorflow":
        return _tensorflow_bfloat16_matmul_transposed()(inputs, matrix)
    from keras import ops

    return ops.matmul(ops.cast(inputs, "float32"), ops.transpose(ops.cast(matrix, "float32")))


@functools.cache
def _tensorflow_bfloat16_matmul_transposed():
    # Only XLA has a kernel for this op (bfloat16 in, float32 out); compiled
    # alone when called eagerly, inlined into the decode loop's program.
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def matmul(inputs, matrix):
        rows = tf.reshape(inputs, (-1, inputs.shape[-1]))
        outputs = tf.raw_ops.BatchMatMulV3(x=rows, y=matrix, Tout=tf.float32, adj_y=True)
        return tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], tf.shape(matrix)[:1]], 0))

    return matmul


# -- XLA:CPU: operand order of the attention products over the cache (attention.py) --


def cache_first_in_attention_products():
    """(keys first, values first): operand order of a decode step's cache einsums.

    The same product either way, but XLA:CPU multiplies a batched product
    without copying only when its operands come in the order its version
    expects; otherwise it writes a transposed copy of every layer's key or
    value cache each step. Measured on 18 layers x 128 positions x 256
    values per head (``benchmarks/README.md``), ms per step at batch 16 / 1:
    JAX 0.10, keys second and values first 7.2 / 0.50 (each other order
    16-32 / 0.53-1.24); TensorFlow 2.21, keys first and values second
    6.3 / 0.82 (JAX's order 10.6 / 1.15). PyTorch: no difference.
    """
    if name() == "tensorflow":
        return True, False
    return False, True
