"""Export: TorchScript trace, torch.export and ONNX agree with eager at sizes other than the traced one."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import glocal
from glocal.export import export_onnx, export_program, export_torchscript
from glocal.models.t2t_vit import TokenPerformer
from tests.conftest import build, perturb_, small_size

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def _two_sizes(model):
    h, w = small_size(model)
    return (h, w), (w, h)


# The attention kinds whose export is least obvious (relative logits, masked windows, outlook gather) run by
# default; `make test-slow` exports every model.
REPRESENTATIVES = ("botnet50", "twins_svt_small", "volo_d1_224")


def _cases():
    names = glocal.list_models()
    fast = [n for n in REPRESENTATIVES if n in names]
    return [pytest.param(n) for n in fast] + [pytest.param(n, marks=pytest.mark.slow) for n in names if n not in fast]


@pytest.mark.parametrize("name", _cases())
def test_torchscript_and_torch_export_agree_with_eager(name, tmp_path):
    model = perturb_(build(name, num_classes=6)).eval()
    first, second = _two_sizes(model)
    x = torch.randn(2, 3, *first)
    path = export_torchscript(model, tmp_path / "model.pt", x)
    scripted = torch.jit.load(str(path))
    program = export_program(model, x).module()
    with torch.no_grad():
        for size in (first, second):
            xs = torch.randn(2, 3, *size)
            expected = model(xs)
            torch.testing.assert_close(scripted(xs), expected, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(program(xs), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="onnx, onnxscript and onnxruntime are not installed (the 'export' extra)")
@pytest.mark.parametrize("name", glocal.list_models())
def test_onnx_dynamic_size_agrees_with_eager(name, tmp_path):
    import onnxruntime

    model = build(name, num_classes=6).eval()
    if not any(isinstance(m, TokenPerformer) for m in model.modules()):
        # Perturbed weights push the Performer's exp(w x - |x|^2 / 2) features where float32 rounding differences
        # between onnxruntime's and torch's kernels grow to 1e-3 of the logits; at initialisation they agree to 4e-7.
        perturb_(model)
    first, second = _two_sizes(model)
    path = export_onnx(model, tmp_path / "model.onnx", torch.randn(2, 3, *first))
    session = onnxruntime.InferenceSession(str(path))
    for size in (first, second):
        xs = torch.randn(1, 3, *size)
        (out,) = session.run(None, {session.get_inputs()[0].name: xs.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), model(xs), rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not HAS_ONNX, reason="onnx, onnxscript and onnxruntime are not installed (the 'export' extra)")
def test_onnx_export_of_a_small_resnet(tmp_path):
    import onnxruntime

    model = perturb_(glocal.create_model("gcresnet50", depths=(1, 1, 1, 1), num_classes=3)).eval()
    path = export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 3, 64, 96))
    session = onnxruntime.InferenceSession(str(path))
    xs = torch.randn(1, 3, 96, 64)
    (out,) = session.run(None, {session.get_inputs()[0].name: xs.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(xs), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "volo_d1_224", "t2t_vit_7"])
def test_trace_at_the_default_size_runs_at_other_sizes(name):
    """Position embeddings are resampled without shape comparisons that a trace would freeze at the traced size."""
    model = perturb_(build(name, num_classes=4)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 224, 224))
        x = torch.randn(1, 3, 160, 256)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-4)
