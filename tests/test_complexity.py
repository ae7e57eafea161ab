"""MAC counting with the fused attention kernel, the papers' analytic formulas, and the inference optimiser."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import glocal
from glocal.analysis import analytic
from glocal.analysis.complexity import count_macs, count_train_macs
from glocal.layers import MHSA2d
from glocal.optimize import optimize_for_inference
from tests.conftest import perturb_

# Models with attention on the fused path at a small size (real CPU tensors, so the fused kernel runs).
FUSED_CASES = [("botnet50", 64), ("nlresnet50", 64), ("gcresnet50", 64)]


def test_cpu_fused_sdpa_is_counted_forward_and_backward():
    B, heads, Nq, Nk, d = 2, 3, 5, 7, 4
    q = torch.randn(B, heads, Nq, d, requires_grad=True)
    k = torch.randn(B, heads, Nk, d, requires_grad=True)
    v = torch.randn(B, heads, Nk, d, requires_grad=True)
    mask = torch.randn(B, heads, Nq, Nk)
    with FlopCounterMode(display=False) as fwd:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with FlopCounterMode(display=False) as bwd:
        out.sum().backward()
    macs = B * heads * Nq * Nk * d
    assert fwd.get_total_flops() == 2 * (2 * macs)  # q k^T and attn v
    assert bwd.get_total_flops() == 2 * (5 * macs)  # recomputed scores and four gradient products


@pytest.mark.parametrize(("name", "size"), FUSED_CASES)
def test_fused_and_explicit_counts_agree(name, size):
    kwargs = {"img_size": size} if name == "botnet50" else {}
    model = glocal.create_model(name, depths=(1, 1, 2, 1), **kwargs)
    maps = []  # BoT attention: the fused kernel multiplies its zero-padded values too (attend's bias_factors)
    hooks = [m.register_forward_pre_hook(lambda mod, args: maps.append((mod.num_heads, *args[0].shape[-2:])))
             for m in model.modules() if isinstance(m, MHSA2d)]  # fmt: skip
    fused = count_macs(model, (3, size, size))
    for hook in hooks:
        hook.remove()
    explicit = count_macs(model, (3, size, size), explicit=True)
    assert (len(maps) > 0) == (name == "botnet50")
    assert fused - explicit == sum(heads * (H * W) ** 2 * (H + W) for heads, H, W in maps)


def test_meta_counts_equal_cpu_counts():
    model = glocal.create_model("botnet50", img_size=64)
    with torch.device("meta"):
        meta = glocal.create_model("botnet50", img_size=64)
    assert count_macs(meta, (3, 64, 64)) == count_macs(model, (3, 64, 64))


def test_train_step_counts_forward_and_backward():
    with torch.device("meta"):
        model = glocal.create_model("resnet50")
    forward = count_macs(model, (3, 224, 224))
    train = count_train_macs(model, (3, 224, 224))
    # Backward is two products per forward product, less the input gradient of the first conv.
    assert 2.5 * forward < train < 3 * forward
    assert all(p.grad is None for p in model.parameters())


def _one_per_family() -> list[str]:
    first: dict[str, str] = {}
    for name in glocal.list_models():
        first.setdefault(glocal.registry.get_entry(name).family, name)
    return list(first.values())


@pytest.mark.parametrize("name", _one_per_family())
def test_attention_costs_match_counted(name):
    entry = glocal.registry.get_entry(name)
    with torch.device("meta"):
        model = glocal.create_model(name)
    for cost in analytic.attention_costs(model, entry.input_size):
        # The formulas count exactly the products the counter sees; 1% leaves room for a bias-free variant.
        assert cost.ratio == pytest.approx(1.0, rel=0.01), cost


@pytest.mark.parametrize(
    ("name", "kinds"),
    [("nlresnet50", {"non-local"}), ("snlresnet50", {"SNL"}), ("gcresnet50", {"GC"}), ("seresnet50", {"SE"}),
     ("botnet50", {"BoT MHSA2d"}), ("twins_svt_small", {"LSA", "GSA"}), ("twins_pcpvt_small", {"GSA"}),
     ("volo_d1_224", {"outlook", "global MHSA", "class attention"}), ("vit_small_patch16_224", {"global MHSA"}),
     ("t2t_vit_14", {"T2T Performer", "global MHSA"}), ("t2t_vit_t_14", {"T2T token attention", "global MHSA"})],
)  # fmt: skip
def test_attention_costs_find_each_design(name, kinds):
    with torch.device("meta"):
        model = glocal.create_model(name)
    costs = analytic.attention_costs(model, (3, 224, 224))
    assert {c.kind for c in costs} == kinds
    assert all(c.counted == c.analytic for c in costs)


def test_formulas_reduce_to_each_other():
    H, W, C = 14, 14, 64
    N = H * W
    assert analytic.gsa_macs(H, W, C, 1) == analytic.mhsa_macs(N, C) == 4 * N * C * C + 2 * N * N * C
    assert analytic.lsa_macs(H, W, C, (H, W)) == analytic.mhsa_macs(N, C)
    assert max(analytic.lsa_macs(H, W, C, (7, 7)), analytic.gsa_macs(H, W, C, 7)) < analytic.mhsa_macs(N, C)
    # Global attention grows quadratically, windowed attention and GC linearly, SE not at all.
    assert analytic.mhsa_macs(4 * N, C) > 4 * analytic.mhsa_macs(N, C)
    assert analytic.lsa_macs(2 * H, 2 * W, C, (7, 7)) == 4 * analytic.lsa_macs(H, W, C, (7, 7))
    # T2T's Performer is linear in the tokens and its softmax token attention is not; class attention is linear.
    c, d, m = 147, 64, 32
    assert analytic.performer_macs(4 * N, c, d, m) == 4 * analytic.performer_macs(N, c, d, m)
    assert analytic.token_attention_macs(4 * N, c, d) > 4 * analytic.token_attention_macs(N, c, d)
    assert analytic.class_attention_macs(4 * N - 1, C) < 4 * analytic.class_attention_macs(N - 1, C)
    assert analytic.gc_macs(2 * H, 2 * W, C) < 4 * analytic.gc_macs(H, W, C)
    assert analytic.se_macs(C) == 2 * C * (C // 16)
    assert analytic.nl_macs(H, W, C, subsample=True) < analytic.nl_macs(H, W, C)
    assert analytic.outlook_macs(H, W, C, kernel=3, heads=2) == 2 * N * C * C + N * (2 * 81 * C + 81 * C)


def _with_running_stats(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return model


@pytest.mark.parametrize("name", ["resnet50", "seresnet50", "botnet50", "nlresnet50"])
def test_optimized_model_equals_eager(name):
    kwargs = {"img_size": 64} if name == "botnet50" else {}
    model = _with_running_stats(perturb_(glocal.create_model(name, depths=(1, 1, 2, 1), **kwargs))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fast = optimize_for_inference(model, example=x[:1])
        assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.affine for m in fast.conv1.modules())
        out = fast(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        half = optimize_for_inference(model, example=x[:1], dtype=torch.bfloat16)
        out16 = half(x.to(memory_format=torch.channels_last, dtype=torch.bfloat16)).float()
        assert (out16 - ref).abs().max() <= 0.05 * ref.abs().max()
        if name in ("resnet50", "botnet50"):
            frozen = optimize_for_inference(model, example=x, freeze=True)
            out = frozen(x.to(memory_format=torch.channels_last))
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the eager model is left unchanged"
