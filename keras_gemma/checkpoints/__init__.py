"""Readers and writers of Gemma checkpoints, one module per format.

Every reader produces the same thing: a backbone config (``GemmaBackbone``
keyword arguments) and a dict of numpy arrays keyed by our variable paths,
e.g. ``decoder_block_0/attention/query/kernel``. ``assign_weights`` is the one
place that copies such a dict into a model.
"""

import numpy as np


def assign_weights(backbone, weights, source):
    """Copies ``weights`` (path -> array) into ``backbone``'s variables.

    Every variable must be given exactly once with the right shape; ``source``
    names the file in error messages.
    """
    variables = {v.path: v for v in backbone.weights}
    missing = sorted(set(variables) - set(weights))
    unexpected = sorted(set(weights) - set(variables))
    if missing or unexpected:
        raise ValueError(
            f"{source}: the checkpoint does not match the model's layers. "
            f"Missing: {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"unexpected: {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}. Check that the config "
            "and the weights come from the same model."
        )
    for path, value in weights.items():
        variable = variables[path]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{source}: weight of layer '{path}' has shape "
                f"{tuple(value.shape)}, but the model expects "
                f"{tuple(variable.shape)}. Check that the config and the "
                "weights come from the same model."
            )
    for path, value in weights.items():
        variable = variables[path]
        variable.assign(value)
