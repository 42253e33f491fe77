"""Readers and writers of Gemma checkpoints, one module per format.

Every reader produces the same thing: a backbone config (``GemmaBackbone``
keyword arguments) and numpy arrays keyed by our variable paths, e.g.
``decoder_block_0/attention/query/kernel``. ``assign_weights`` is the one
place that copies them into a model.
"""

from keras_gemma import backend


def assign_weights(backbone, weights, source):
    """Copies weights into ``backbone``'s variables, one tensor at a time.

    ``weights`` is a dict or an iterable of ``(path, array)`` pairs; readers
    pass generators, so only one tensor beyond the model's own weights is in
    memory at once. Every variable must be given exactly once with the right
    shape; ``source`` names the file in error messages.
    """
    variables = {v.path: v for v in backbone.weights}
    pairs = weights.items() if isinstance(weights, dict) else weights
    assigned = set()
    for path, value in pairs:
        variable = variables.get(path)
        if variable is None:
            raise ValueError(
                f"{source}: the checkpoint has a weight '{path}' that the model "
                "does not have. Check that the config and the weights come "
                "from the same model."
            )
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{source}: weight of layer '{path}' has shape "
                f"{tuple(value.shape)}, but the model expects "
                f"{tuple(variable.shape)}. Check that the config and the "
                "weights come from the same model."
            )
        backend.assign_from_host(variable, value)
        assigned.add(path)
    missing = sorted(set(variables) - assigned)
    if missing:
        raise ValueError(
            f"{source}: the checkpoint lacks weights for "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}. Check that the "
            "config and the weights come from the same model."
        )
