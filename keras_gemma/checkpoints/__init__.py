"""Readers and writers of Gemma checkpoints, one module per format.

Every reader produces the same thing: a backbone config (``GemmaBackbone``
keyword arguments) and numpy arrays keyed by our variable paths, e.g.
``decoder_block_0/attention/query/kernel``. ``assign_weights`` is the one
place that copies them into a model.
"""

import contextlib
import math
import numbers

from keras_gemma import backend

# Exceptions that a malformed file makes Python, numpy or h5py raise deep in
# a reader; `file_errors` turns them into a ValueError naming the file.
_MALFORMED = (
    AttributeError, IndexError, KeyError, OverflowError, RuntimeError,
    TypeError, ValueError, ZeroDivisionError, OSError,
)


@contextlib.contextmanager
def file_errors(source, what="is malformed", catch=_MALFORMED):
    """Re-raises errors caused by a malformed ``source`` as ValueErrors naming it.

    A ValueError that already names ``source`` passes unchanged (keeping its
    type, e.g. ``NotEnoughMemoryError``); so do ``FileNotFoundError`` and
    ``MemoryError``. ``catch``: the exception types blamed on the file.
    """
    source = str(source)
    try:
        yield
    except ValueError as error:
        if source in str(error):
            raise
        raise _with_source(error, source) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError, MemoryError):
        raise
    except catch as error:
        detail = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ValueError(
            f"{source} {what} ({detail}). The file may be truncated, corrupt "
            "or not from a Gemma checkpoint; get it again."
        ) from None


def _with_source(error, source):
    try:
        return type(error)(f"{source}: {error}")
    except TypeError:  # an exception class with other constructor arguments
        return ValueError(f"{source}: {error}")


def check_config(config, source):
    """Refuses config values of the wrong type before a backbone is built.

    Each entry of ``CONFIG_DEFAULTS`` is checked against its default: a
    bool must be a bool, a number a finite number >= 0, a None-default
    number (a window, a soft cap, a scalar) a finite number > 0. Sizes are
    checked by ``GemmaBackbone`` itself.
    """
    from keras_gemma.backbone import CONFIG_DEFAULTS

    if not isinstance(config, dict):
        raise ValueError(f"{source}: the config is a {type(config).__name__}, not a mapping.")
    for name, default in CONFIG_DEFAULTS.items():
        if name not in config or config[name] is None and default is None:
            continue
        value = config[name]
        is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            expected = "true or false"
        elif isinstance(default, numbers.Real) or default is None and is_number:
            ok = is_number and math.isfinite(value) and (
                value >= 0 if default is not None else value > 0)
            expected = "a finite number >= 0" if default is not None else "null or a number > 0"
        else:
            continue
        if not ok:
            raise ValueError(
                f"{source}: `{name}` must be {expected}, got {value!r:.60}."
            )


def checkpoint_shapes(backbone):
    """{path: shape} of the float tensors a checkpoint holds for ``backbone``.

    The backbone's own variables, except that a layer built as int8 (see
    ``quantization.build_int8``) stands for the float matrix it quantizes.
    """
    shapes = {}
    int8 = set()
    for layer in _int8_layers(backbone):
        path, shape = layer.float_weight
        shapes[path] = tuple(shape)
        int8.update(v.path for v in layer.int8_variables)
    for variable in backbone.weights:
        if variable.path not in int8:
            shapes[variable.path] = tuple(variable.shape)
    return shapes


def _int8_layers(backbone):
    return [layer for layer in backbone._flatten_layers() if getattr(layer, "is_int8", False)]


def assign_weights(backbone, weights, source):
    """Copies weights into ``backbone``'s variables, one tensor at a time.

    ``weights`` is a dict or an iterable of ``(path, array)`` pairs; readers
    pass generators, so only one tensor beyond the model's own weights is in
    memory at once. Every variable must be given exactly once with the right
    shape; ``source`` names the file in error messages.
    """
    variables = {v.path: v for v in backbone.weights}
    # Layers built as int8 (loading with quantize="int8") take the float
    # tensor and quantize it on the way in.
    int8_layers = {layer.float_weight[0]: layer for layer in _int8_layers(backbone)}
    pairs = weights.items() if isinstance(weights, dict) else weights
    assigned = set()
    for path, value in pairs:
        layer = int8_layers.get(path)
        if layer is not None:
            _check_shape(path, value.shape, layer.float_weight[1], source)
            layer.assign_float_weight(value)
            assigned.update(v.path for v in layer.int8_variables)
            continue
        variable = variables.get(path)
        if variable is None:
            raise ValueError(
                f"{source}: the checkpoint has a weight '{path}' that the model "
                "does not have. Check that the config and the weights come "
                "from the same model."
            )
        _check_shape(path, value.shape, variable.shape, source)
        backend.assign_from_host(variable, value)
        assigned.add(path)
    missing = sorted(set(variables) - assigned)
    if missing:
        raise ValueError(
            f"{source}: the checkpoint lacks weights for "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}. Check that the "
            "config and the weights come from the same model."
        )


def _check_shape(path, shape, expected, source):
    if tuple(shape) != tuple(expected):
        raise ValueError(
            f"{source}: weight of layer '{path}' has shape {tuple(shape)}, "
            f"but the model expects {tuple(expected)}. Check that the config "
            "and the weights come from the same model."
        )
