"""What the traced-program exports (SavedModel, torch.export) check first.

Both trace the model with one backend's own tracer, so they run on that
backend only, and both hold the weights as the model has them (float or
int8), so they take no ``quantization``.
"""

# Nothing here imports Keras at module level: the command line reads
# REQUIRED_BACKEND from these modules before it chooses the backend.

_BACKEND_NAMES = {"tensorflow": "TensorFlow", "torch": "PyTorch"}


def check_traceable(model, quantization, what, required_backend, command):
    """Raises a clear error unless ``model`` can be traced here.

    ``what`` names the export ("The SavedModel export"); ``command`` is the
    ``keras-gemma export`` line that re-runs on the right backend.
    """
    import keras

    backend = keras.config.backend()
    if backend != required_backend:
        raise RuntimeError(
            f"{what} traces the model with {_BACKEND_NAMES[required_backend]}, but "
            f"Keras runs on '{backend}'. Run it with KERAS_BACKEND={required_backend} "
            "set before Keras is imported, or use the command line, which does "
            f"that for you: {command}."
        )
    from keras_gemma.causal_lm import GemmaCausalLM

    if not isinstance(model, GemmaCausalLM):
        raise TypeError(
            f"{what} takes a keras_gemma GemmaCausalLM, got {type(model).__name__}."
        )
    if quantization is not None:
        raise ValueError(
            f"{what} takes no quantization (got {quantization!r}): it holds the "
            "model's weights as they are, float or int8. Quantize the model "
            "first (model.quantize('int8'), or from_preset(..., quantize='int8')) "
            "to export int8 weights."
        )
    if model.backbone.use_bidirectional_attention:
        raise ValueError(
            "This model has bidirectional attention (an embedding model such "
            "as EmbeddingGemma): it has no next-token logits to export."
        )
