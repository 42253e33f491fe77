"""torch.export of the forward pass (keras_gemma/export/torch_export.py).

The .pt2 programs are loaded in a fresh process that can import only
PyTorch (tests/isolated_process.py); their logits are checked against
transformers' (the cached oracles of test_parity.py and test_gemma4.py) and
ours, on the traced shape and on others (batch and length are dynamic).

The export traces with PyTorch, so it runs on that backend only; on the
others the one test here is the error telling the user what to do.
"""

import keras
import numpy as np
import pytest
from export_models import (DATA, GEMMA4, ORACLE_LOGITS, causal_lm, int8_and_lora_models,
                           oracle_models, our_logits, small_lm)
from isolated_process import run_isolated
from tiny_models import PADDING_MASK, TOKEN_IDS

import keras_gemma
from keras_gemma.export.torch_export import export_torch

on_torch = pytest.mark.skipif(
    keras.config.backend() != "torch",
    reason="torch.export traces with PyTorch (KERAS_BACKEND=torch)",
)
# Shapes other than the one traced (2 x 8): one row, and a longer batch of 3.
OTHER_SHAPES = {
    "single": (TOKEN_IDS[1:, :5], PADDING_MASK[1:, :5]),
    "longer": (np.tile(TOKEN_IDS, (2, 2))[:3, :20], np.tile(PADDING_MASK, (2, 2))[:3, :20]),
}

_LOAD_AND_RUN = """
import numpy as np, torch
inputs = np.load("inputs.npz")
forward = torch.export.load("model.pt2").module()
outputs = {}
for case in CASES:
    logits = forward(torch.from_numpy(inputs[case + "/token_ids"]),
                     torch.from_numpy(inputs[case + "/padding_mask"]))
    assert logits.dtype == torch.float32, logits.dtype
    outputs[case] = logits.detach().numpy()
np.savez("outputs.npz", **outputs)
"""


# One test per model, so that under pytest-xdist each model is exported and
# loaded once, in whichever worker runs its test.
@on_torch
@pytest.mark.parametrize("name", ["gemma3", "gemma4"])
def test_fresh_process_logits_at_any_shape(name, tmp_path):
    lm = oracle_models(name)
    assert export_torch(lm, tmp_path / "model.pt2") == str(tmp_path / "model.pt2")
    cases = {"oracle": (TOKEN_IDS, PADDING_MASK), **OTHER_SHAPES}
    np.savez(tmp_path / "inputs.npz", **{
        f"{case}/{key}": array.astype("int32")
        for case, arrays in cases.items()
        for key, array in zip(("token_ids", "padding_mask"), arrays)
    })
    run_isolated(f"CASES = {list(cases)!r}\n" + _LOAD_AND_RUN, cwd=tmp_path)
    logits = np.load(tmp_path / "outputs.npz")
    # Our logits and transformers', on the oracle's inputs.
    np.testing.assert_allclose(logits["oracle"], our_logits(lm), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(
        logits["oracle"][PADDING_MASK], ORACLE_LOGITS[name][PADDING_MASK], atol=1e-4, rtol=0
    )
    # Batch and length are dynamic: shapes other than the one traced.
    for case, (token_ids, padding_mask) in OTHER_SHAPES.items():
        assert logits[case].shape == (*token_ids.shape, 640), case
        np.testing.assert_allclose(logits[case], our_logits(lm, token_ids, padding_mask),
                                   atol=1e-5, rtol=1e-5, err_msg=case)


@on_torch
def test_expert_mixture_exports_for_any_length(tmp_path):
    """Gemma 4's expert mixture picks its grouping by the token count, which
    is symbolic here (keras_gemma.backend.static_size)."""
    import torch

    lm = causal_lm(keras_gemma.GemmaBackbone.from_preset(str(DATA / "hf_tiny_gemma4_moe")))
    forward = torch.export.load(export_torch(lm, tmp_path / "moe.pt2")).module()
    logits = forward(torch.from_numpy(TOKEN_IDS), torch.from_numpy(PADDING_MASK.astype("int32")))
    np.testing.assert_allclose(
        logits.numpy()[PADDING_MASK], GEMMA4["moe_logits"][PADDING_MASK], atol=1e-4, rtol=0
    )
    token_ids, padding_mask = OTHER_SHAPES["longer"]
    np.testing.assert_allclose(
        forward(torch.from_numpy(token_ids.astype("int32")),
                torch.from_numpy(padding_mask.astype("int32"))).numpy(),
        our_logits(lm, token_ids, padding_mask), atol=1e-5, rtol=1e-5,
    )


@on_torch
def test_int8_and_lora_models_export_as_they_compute(tmp_path):
    import torch

    models, float_logits = int8_and_lora_models()
    inputs = (torch.from_numpy(TOKEN_IDS), torch.from_numpy(PADDING_MASK.astype("int32")))
    for name, lm in models.items():
        program = torch.export.load(export_torch(lm, tmp_path / f"{name}.pt2"))
        logits = program.module()(*inputs).detach().numpy()
        np.testing.assert_allclose(logits, our_logits(lm), atol=1e-5, rtol=1e-5)
        # int8 rounding, the adapter: both change the float model's numbers.
        assert np.abs(logits - float_logits)[PADDING_MASK].max() > 1e-2
        # Each weight stored once, by our name (the tied embedding too), and
        # no weight baked in as a constant.
        weights = program.state_dict
        assert sum(t.numel() for t in weights.values()) == sum(
            int(np.prod(v.shape)) for v in lm.backbone.variables)
        assert all(t.numel() == 1 for t in program.constants.values())
        assert "decoder_block_0__attention__query__kernel" in weights
        assert ("torch.int8" in {str(t.dtype) for t in weights.values()}) == (name == "int8")


@on_torch
def test_bad_destinations_and_a_failed_export_leave_nothing(tmp_path, monkeypatch):
    import torch

    from keras_gemma.export import torch_export

    lm = small_lm()
    program = torch.export.load(export_torch(lm, tmp_path / "first.pt2"))
    assert program.module()(
        torch.ones((1, 3), dtype=torch.int32), torch.ones((1, 3), dtype=torch.int32)
    ).shape == (1, 3, 640)
    existing = tmp_path / "first.pt2"
    with pytest.raises(FileExistsError, match="overwrite"):
        export_torch(lm, existing)
    with pytest.raises(ValueError, match=r"ending in \.pt2"):
        export_torch(lm, tmp_path / "model.bin")
    with pytest.raises(ValueError, match="no quantization"):
        export_torch(lm, tmp_path / "q.pt2", quantization="f16")
    before = existing.read_bytes()
    save, trace = torch.export.save, torch.export.export

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    def failing_trace(*args, **kwargs):
        raise ValueError("Could not guard on data-dependent expression\n(details)")

    monkeypatch.setattr(torch.export, "export", failing_trace)
    with pytest.raises(RuntimeError, match="could not trace.*ValueError: Could not guard"):
        export_torch(lm, tmp_path / "new.pt2")
    monkeypatch.setattr(torch.export, "export", trace)

    # Writing fails (tracing again would only cost time).
    monkeypatch.setattr(torch_export, "_export_forward", lambda model, torch: program)
    monkeypatch.setattr(torch.export, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_torch(lm, existing, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        export_torch(lm, tmp_path / "new.pt2")
    assert existing.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["first.pt2"]
    monkeypatch.setattr(torch.export, "save", save)
    existing.write_bytes(b"not a program")
    export_torch(lm, existing, overwrite=True)
    assert torch.export.load(str(existing)).module()(
        torch.ones((1, 3), dtype=torch.int32), torch.ones((1, 3), dtype=torch.int32)
    ).shape == (1, 3, 640)


@pytest.mark.skipif(keras.config.backend() == "torch", reason="the error is for other backends")
def test_other_backends_are_told_what_to_run(tmp_path):
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=torch.*--format torch_export"):
        export_torch(small_lm(), tmp_path / "out.pt2")
    assert not (tmp_path / "out.pt2").exists()
