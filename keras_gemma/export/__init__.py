"""Exporters: a keras_gemma model out to the formats people deploy with.

A leaf on the core, like ``serving/`` and ``evaluation/``: it imports the
model, the model never imports it (``GemmaCausalLM.export_to_huggingface``
imports it late). One module per format; each writes atomically through
``files.py`` and reads weights through ``files.float_weights`` (LoRA merged,
the model itself untouched).

``saved_model.py`` and ``torch_export.py`` are the only modules here that
import a backend (TensorFlow, PyTorch), inside their functions: a
SavedModel is a TensorFlow artefact and a ``torch.export`` program a
PyTorch one, so tracing them is backend code by nature. They are leaves
the core never imports; the model they trace stays ``keras.ops``.

| format         | module           | destination | holds our int8 layout |
|----------------|------------------|-------------|------------------------|
| ``hf``         | huggingface.py   | directory   | no                     |
| ``gguf``       | gguf.py          | file        | as Q8_0                |
| ``saved_model``| saved_model.py   | directory   | yes (traced program)   |
| ``torch_export``| torch_export.py | file        | yes (traced program)   |
"""

import importlib

# format name -> (module, function). Each function takes
# (model, destination, quantization=None, overwrite=False) and returns the
# path it wrote.
FORMATS = {
    "hf": ("keras_gemma.export.huggingface", "export_huggingface"),
    "gguf": ("keras_gemma.export.gguf", "export_gguf"),
    "saved_model": ("keras_gemma.export.saved_model", "export_saved_model"),
    "torch_export": ("keras_gemma.export.torch_export", "export_torch"),
}


def export(model, format, destination, quantization=None, overwrite=False):
    """Writes ``model`` (a ``GemmaCausalLM``) to ``destination`` in ``format``.

    ``format`` is one of ``FORMATS``; ``quantization`` is format-specific
    (GGUF: ``f32``, ``f16``, ``bf16``, ``q8_0``). An existing non-empty
    destination is refused unless ``overwrite``; a failed export leaves
    nothing behind.
    """
    if format not in FORMATS:
        raise ValueError(
            f"Unknown export format {format!r}. Choose one of: "
            f"{', '.join(FORMATS)}."
        )
    module_name, function_name = FORMATS[format]
    function = getattr(importlib.import_module(module_name), function_name)
    return function(model, destination, quantization=quantization, overwrite=overwrite)
