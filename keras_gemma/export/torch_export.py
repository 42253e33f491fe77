"""torch.export: the forward pass as a PyTorch ``ExportedProgram`` (.pt2).

The program is traced from the model by ``torch.export.export`` and holds
only ATen operations and the weights, so ``torch.export.load`` reads it with
only PyTorch installed, no keras_gemma and no Keras.

The program (``torch.export.load(path).module()``) takes two positional
tensors, ``token_ids`` int32 (batch, length) and ``padding_mask`` int32
(batch, length; 1 = real token, 0 = padding), and returns ``logits``
float32 (batch, length, vocabulary): the logits of the token after each
position, as calling the Keras model gives. Batch size and length are
dynamic (``torch.export.Dim``), so any shape runs without re-exporting.
The weights are the program's parameters (frozen), each stored once under
our weight name, e.g. ``decoder_block_0__attention__query__kernel`` (``/``
written ``__``). There is no generate loop: decode by calling it on the
growing sequence, or use the SavedModel export for a compiled loop.

As for the SavedModel, the program is traced from the model as it is: int8
weights (``model.quantize("int8")``) are exported as int8 with their
scales, and a LoRA model's adapters are traced in. As there, Gemma 4's
expert mixture runs per (token, chosen expert) pair for a symbolic token
count (see ``keras_gemma.backend.static_size``): about 95 MB per token and
layer for 26B-A4B in bfloat16, so keep its inputs short.

Example (PyTorch backend):

```python
import torch
import keras_gemma
from keras_gemma.export.torch_export import export_torch

gemma = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
export_torch(gemma, "gemma.pt2")

forward = torch.export.load("gemma.pt2").module()
token_ids = torch.tensor([[2, 651, 7217, 603]], dtype=torch.int32)
logits = forward(token_ids, torch.ones_like(token_ids))
```
"""

from pathlib import Path

from keras_gemma.export.traced import check_traceable

# Read by the command line before it picks the backend: this module imports
# no Keras (nor TensorFlow, PyTorch) until an export runs.
REQUIRED_BACKEND = "torch"
SUFFIX = ".pt2"
DESTINATION = "file"  # for keras-gemma export: refuse a folder path
# Shapes traced with; the dimensions stay dynamic. Not 1: torch.export
# specializes a dimension traced at size 1 to a constant.
_EXAMPLE_BATCH, _EXAMPLE_LENGTH = 2, 8


def export_torch(model, destination, quantization=None, overwrite=False):
    """Writes ``model``'s forward pass (a ``GemmaCausalLM``) to a .pt2 file.

    Runs on the PyTorch backend (``KERAS_BACKEND=torch``); from another
    backend use ``keras-gemma export --format torch_export SRC DST.pt2``,
    which re-runs itself on PyTorch. ``destination`` is a file path ending
    in ``.pt2``. ``quantization`` must be None: the weights are exported as
    the model holds them (float, or int8 after ``model.quantize("int8")``).

    Returns the file written, as a string. An existing file is refused
    unless ``overwrite``; a failed export leaves nothing behind.
    """
    check_traceable(
        model, quantization, "The torch.export export", REQUIRED_BACKEND,
        "keras-gemma export --format torch_export SRC DST.pt2",
    )
    if not str(destination).endswith(SUFFIX):
        raise ValueError(
            f"A torch.export program is a {SUFFIX} file (torch.export.load "
            f"expects the suffix); got {str(destination)!r}. Give a path "
            f"ending in {SUFFIX}."
        )
    from keras_gemma.export.files import check_destination
    from keras_gemma.export.files import staged_file

    check_destination(destination, overwrite)

    import torch

    from keras_gemma.evaluation.progress import bar

    with bar(2, "Exporting torch program") as advance:
        program = _export_forward(model, torch)
        advance()
        with staged_file(destination, overwrite) as staging:
            # A file object: the staging name lacks the .pt2 suffix
            # torch.export.save checks paths for.
            with open(staging, "wb") as handle:
                torch.export.save(program, handle)
        advance()
    return str(Path(destination))


def _export_forward(model, torch):
    import keras

    class Forward(torch.nn.Module):
        """token_ids, padding_mask -> float32 logits, as the Keras model.

        Keras variables hold their torch tensors themselves, where
        torch.export's tracer does not look for weights: it would store them
        as constants, a tied embedding twice. So each variable is
        registered here once, by its path, and the forward pass reads the
        registered tensors through a ``keras.StatelessScope``.
        """

        def __init__(self, backbone):
            super().__init__()
            # Not a submodule: its weights are registered below, once each.
            object.__setattr__(self, "_backbone", backbone)
            self._variables = list(backbone.variables)
            self._names = []
            for index, variable in enumerate(self._variables):
                # Our weight names, e.g. decoder_block_0__attention__query__kernel.
                name = variable.path.replace("/", "__").replace(".", "_")
                if name in self._names or hasattr(self, name):
                    name += f"__{index}"
                # Frozen (the memory is shared): a served program's outputs
                # should not track gradients.
                self.register_parameter(
                    name, torch.nn.Parameter(variable.value.detach(), requires_grad=False)
                )
                self._names.append(name)

        # The backbone's tracing entry, not model.__call__: that one checks
        # concrete input values, which torch.export's fake tensors lack.
        def forward(self, token_ids, padding_mask):
            mapping = [(v, getattr(self, n)) for v, n in zip(self._variables, self._names)]
            with keras.StatelessScope(state_mapping=mapping):
                hidden, _ = self._backbone.compute_hidden_states(token_ids, padding_mask)
                return self._backbone.compute_logits(hidden)

    shape = (_EXAMPLE_BATCH, _EXAMPLE_LENGTH)
    device = model.variables[0].value.device  # where Keras put the weights
    token_ids = torch.ones(shape, dtype=torch.int32, device=device)
    padding_mask = torch.ones(shape, dtype=torch.int32, device=device)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    dims = {0: batch, 1: length}
    try:
        with torch.no_grad():
            return torch.export.export(
                Forward(model.backbone),
                (token_ids, padding_mask),
                dynamic_shapes={"token_ids": dims, "padding_mask": dims},
            )
    except Exception as error:  # torch's tracer raises many kinds
        summary = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise RuntimeError(
            "torch.export could not trace this model's forward pass for any "
            f"batch size and length ({type(error).__name__}: {summary}). This "
            "is a bug in keras_gemma's export; the SavedModel export "
            "(--format saved_model) may work meanwhile."
        ) from error
