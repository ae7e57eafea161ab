"""Global attention at high resolution: the fused path never keeps an N x N map for the backward pass, and it
equals the explicit (materialised, probed) path in outputs and gradients, in training and inference (float64)."""

from __future__ import annotations

import pytest
import torch

from glocal.layers import MHSA2d, MultiHeadAttention, NonLocal2d, attend
from glocal.layers.bot import AbsPosMHSA2d
from glocal.layers.probe import explicit_attention
from glocal.models.t2t_vit import TokenAttention
from glocal.models.twins import GlobalSubsampledAttention
from glocal.models.volo import ClassAttention
from tests.conftest import perturb_

GRID = (16, 20)  # 320 positions: every N x N map (102,400 entries) is larger than any activation below
N = GRID[0] * GRID[1]


def _map_input(channels):
    return torch.randn(2, channels, *GRID)


def _token_input(channels, prefix=0):
    return torch.randn(2, prefix + N, channels)


def _call(module, x):
    return module(x)


def _call_on_grid(module, x):
    return module(x, GRID)


# (name, module factory, input factory, forward)
MODULES = [
    ("non_local", lambda: NonLocal2d(32), lambda: _map_input(32), _call),
    ("non_local_subsampled", lambda: NonLocal2d(32, subsample=True), lambda: _map_input(32), _call),
    ("bot_relpos", lambda: MHSA2d(32, 4, (8, 8)), lambda: _map_input(32), _call),
    ("bot_abspos", lambda: AbsPosMHSA2d(32, 4, GRID), lambda: _map_input(32), _call),
    ("vit_mhsa", lambda: MultiHeadAttention(32, 4, prefix_tokens=1), lambda: _token_input(32, 1), _call),
    ("twins_gsa", lambda: GlobalSubsampledAttention(32, 2, 1), lambda: _token_input(32), _call_on_grid),
    ("twins_gsa_sr2", lambda: GlobalSubsampledAttention(32, 2, 2), lambda: _token_input(32), _call_on_grid),
    ("t2t_token", lambda: TokenAttention(27, 16), lambda: _token_input(27), _call),
    ("volo_class", lambda: ClassAttention(32, 4), lambda: _token_input(32, 1), _call),
]
IDS = [m[0] for m in MODULES]


def _build(factory):
    torch.manual_seed(0)
    module = perturb_(factory()).double()
    if isinstance(module, NonLocal2d):
        torch.nn.init.normal_(module.norm.weight)  # the zero-initialised output BN would hide the attention
    return module


def _run(module, forward, x, explicit: bool):
    """Output and the gradients of the input and every parameter under a fixed random projection of the output."""
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with explicit_attention(explicit):
        out = forward(module, x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * weights).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name, factory, make_input, forward", MODULES, ids=IDS)
def test_fused_equals_explicit_in_outputs_and_gradients(name, factory, make_input, forward, mode):
    module = _build(factory).train(mode == "train")
    torch.manual_seed(2)
    x = make_input().double()
    fused, fused_dx, fused_grads = _run(module, forward, x, explicit=False)
    ref, ref_dx, ref_grads = _run(module, forward, x, explicit=True)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused_dx, ref_dx, rtol=1e-10, atol=1e-12)
    assert fused_grads.keys() == ref_grads.keys()
    for key in ref_grads:
        assert ref_grads[key] is not None, key
        torch.testing.assert_close(fused_grads[key], ref_grads[key], rtol=1e-10, atol=1e-10, msg=key)


@pytest.mark.parametrize("name, factory, make_input, forward", MODULES[:-1], ids=IDS[:-1])
def test_training_keeps_no_attention_map_for_backward(name, factory, make_input, forward):
    """Every tensor autograd saves in a training step holds fewer entries than the (B, heads, Nq, Nk) attention map;
    the explicit path (the route BoTNet's materialised bias took in training before) saves it: the check can fail."""
    module = _build(factory).float().train()
    x = make_input().requires_grad_(True)

    def largest_saved(explicit: bool) -> int:
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), explicit_attention(explicit):
            forward(module, x).sum().backward()
        return max(sizes)

    maps = []
    hook = module.probe.register_forward_hook(lambda mod, args, out: maps.append(out.numel()))
    assert largest_saved(explicit=True) >= maps[0]
    hook.remove()
    assert largest_saved(explicit=False) < maps[0]


def test_bias_factors_equal_the_materialised_bias():
    """``bias_factors=(a, b)`` is ``bias=a @ b^T`` (broadcast over batch and heads, values of another width)."""
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 7, 5, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 3, 7, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    a = torch.randn(1, 3, 7, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(2, 1, 7, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    inputs = (q, k, v, a, b)
    fused = attend(q, k, v, bias_factors=(a, b), scale=0.3)
    fused_grads = torch.autograd.grad(fused.sum(), inputs)
    logits = 0.3 * q @ k.transpose(-2, -1) + a @ b.transpose(-2, -1)
    ref = logits.softmax(-1) @ v
    ref_grads = torch.autograd.grad(ref.sum(), inputs)
    assert fused.shape == (2, 3, 7, 9)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(fused_grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="bias or bias_factors"):
        attend(q, k, v, bias=logits, bias_factors=(a, b))
