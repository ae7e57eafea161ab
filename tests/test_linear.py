"""glocal.layers.linear: oneDNN float32 products equal F.linear's (values and gradients) and are used only where
they may be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from glocal.layers import linear as linear_mod
from glocal.layers.linear import MIN_ROWS, Linear

needs_onednn = pytest.mark.skipif(not linear_mod._ONEDNN, reason="this torch build has no oneDNN linear kernel")


def _ran_onednn(fn) -> bool:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return any("_linear_pointwise" in e.key for e in prof.key_averages())


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [2 * MIN_ROWS, 8 * 160])  # the weight gradient on oneDNN, then on MKL (long sum)
def test_values_and_gradients_equal_f_linear(bias, rows):
    torch.manual_seed(0)
    layer = Linear(96, 160, bias=bias)
    x = torch.randn(4, rows // 4, 96).transpose(0, 1)  # (rows / 4, 4, 96): non-contiguous
    x_ref = x.detach().clone().requires_grad_()
    x.requires_grad_()
    assert _ran_onednn(lambda: layer(x))
    y = layer(x)
    y_ref = F.linear(x_ref, layer.weight, layer.bias)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], g)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, *layer.parameters()], g)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_frozen_weights_and_no_grad_use_the_kernel_too():
    layer = Linear(64, 64).requires_grad_(False)
    x = torch.randn(MIN_ROWS, 64, requires_grad=True)
    y = layer(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, layer.weight.sum(0).expand(MIN_ROWS, -1), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        assert _ran_onednn(lambda: layer(x))


@pytest.mark.parametrize(
    ("rows", "dtype", "autocast"),
    [(MIN_ROWS - 1, torch.float32, False), (MIN_ROWS, torch.float64, False), (MIN_ROWS, torch.float32, True)],
)
def test_small_products_other_dtypes_and_autocast_take_f_linear(rows, dtype, autocast):
    layer = Linear(32, 32).to(dtype)
    x = torch.randn(rows, 32, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        assert not _ran_onednn(lambda: layer(x))
        y = layer(x)
    assert y.dtype == (torch.bfloat16 if autocast else dtype)


def test_traced_graphs_hold_the_standard_operator():
    layer = Linear(32, 48)
    x = torch.randn(2 * MIN_ROWS, 32)
    traced = torch.jit.trace(layer, x)
    assert "linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)
    torch.testing.assert_close(traced(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
