"""Twins-PCPVT / Twins-SVT: official layout, LSA padding and masking, GSA, input sizes, pyramid and complexity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import glocal
from glocal.analysis.analytic import gsa_macs, lsa_macs
from glocal.layers.probe import explicit_attention
from glocal.models._features import FeaturePyramid
from glocal.models.twins import GlobalSubsampledAttention, LocallyGroupedAttention, TwinsConfig
from glocal.registry import get_entry
from tests.conftest import SMALL_OVERRIDES

TWINS = glocal.list_models("twins_*")
# A tiny SVT (LSA + GSA in every stage) and PCPVT for real computation.
TINY_SVT = dict(embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2))
TINY_PCPVT = dict(embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8), depths=(2, 1, 1, 1))


def tiny(name: str = "twins_svt_small", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    arch = TINY_SVT if "svt" in name else TINY_PCPVT
    return glocal.create_model(name, **{**arch, **kwargs}).eval()


def official_keys(cfg: TwinsConfig, num_classes: int = 1000) -> set[str]:
    """The state-dict keys of Meituan-AutoML/Twins ``CPVTV2``/``ALTGVT`` (equal to timm's), derived independently."""
    keys = {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    for i, depth in enumerate(cfg.depths):
        for p in ("weight", "bias"):
            keys |= {f"patch_embeds.{i}.proj.{p}", f"patch_embeds.{i}.norm.{p}", f"pos_block.{i}.proj.0.{p}"}
            for j in range(depth):
                b = f"blocks.{i}.{j}"
                keys |= {
                    f"{b}.norm1.{p}",
                    f"{b}.norm2.{p}",
                    f"{b}.mlp.fc1.{p}",
                    f"{b}.mlp.fc2.{p}",
                    f"{b}.attn.proj.{p}",
                }
                if cfg.window_sizes is not None and j % 2 == 0:
                    keys.add(f"{b}.attn.qkv.{p}")
                else:
                    keys |= {f"{b}.attn.q.{p}", f"{b}.attn.kv.{p}"}
                    if cfg.sr_ratios[i] > 1:
                        keys |= {f"{b}.attn.sr.{p}", f"{b}.attn.norm.{p}"}
    return keys


@pytest.mark.parametrize("name", TWINS)
def test_state_dict_keys_and_norm_eps_are_official(name):
    with torch.device("meta"):
        model = glocal.create_model(name)
    assert set(model.state_dict()) == official_keys(get_entry(name).config())
    modules = dict(model.named_modules())
    # Patch-embedding and GSA sub-sampling norms keep LayerNorm's default eps; block and final norms use 1e-6.
    for n, m in modules.items():
        if isinstance(m, torch.nn.LayerNorm):
            expected = 1e-5 if n.startswith("patch_embeds.") or n.endswith("attn.norm") else 1e-6
            assert m.eps == expected, n
    assert model.min_input_size == 32


def test_svt_alternates_lsa_and_gsa_and_pcpvt_is_all_gsa():
    with torch.device("meta"):
        svt, pcpvt = glocal.create_model("twins_svt_small"), glocal.create_model("twins_pcpvt_small")
    for stage in svt.blocks:
        kinds = [type(b.attn) for b in stage]
        assert kinds == [
            LocallyGroupedAttention if j % 2 == 0 else GlobalSubsampledAttention for j in range(len(kinds))
        ]
    assert all(isinstance(b.attn, GlobalSubsampledAttention) for stage in pcpvt.blocks for b in stage)
    # GSA's sub-sampling conv and norm exist only where the ratio exceeds 1 (not in the last stage).
    assert [stage[1].attn.sr is None for stage in svt.blocks] == [False, False, False, True]
    assert svt.blocks[0][1].attn.sr.kernel_size == (8, 8) and svt.blocks[0][1].attn.sr.stride == (8, 8)


def test_peg_runs_right_after_the_first_block_of_each_stage():
    model = tiny("twins_pcpvt_small")
    calls = []
    stage_parts = ("patch_embeds.", "pos_block.")
    for n, m in model.named_modules():
        if (n.startswith("blocks.") and n.count(".") == 2) or (n.startswith(stage_parts) and n.count(".") == 1):
            m.register_forward_hook(lambda mod, args, out, n=n: calls.append(n))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert calls[:4] == ["patch_embeds.0", "blocks.0.0", "pos_block.0", "blocks.0.1"]
    assert calls[4:7] == ["patch_embeds.1", "blocks.1.0", "pos_block.1"]


def test_drop_path_is_linear_over_all_blocks():
    model = tiny(drop_path_rate=0.3)
    rates = [b.drop_path1.p for stage in model.blocks for b in stage]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 8))


def test_official_initialisation():
    model = tiny()
    peg = model.pos_block[0].proj[0].weight  # depth-wise 3x3: fan_out = 9
    assert abs(peg.std().item() - math.sqrt(2 / 9)) < 0.1
    fc1 = model.blocks[2][0].mlp.fc1
    assert abs(fc1.weight.std().item() - 0.02) < 0.002 and fc1.weight.abs().max() <= 2.0
    assert not fc1.bias.any() and not model.pos_block[0].proj[0].bias.any()
    assert model.no_weight_decay() == {f"pos_block.{i}.proj.0.{p}" for i in range(4) for p in ("weight", "bias")}


def _lsa_reference(attn: LocallyGroupedAttention, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Attention computed window by window over the real tokens only: no padding, no mask."""
    B, N, C = x.shape
    ws, heads = attn.window_size, attn.num_heads
    grid = x.reshape(B, H, W, C)
    out = torch.empty_like(grid)
    for top in range(0, H, ws):
        for left in range(0, W, ws):
            win = grid[:, top : top + ws, left : left + ws]  # (B, h, w, C) with h, w <= ws at the border
            h, w = win.shape[1:3]
            q, k, v = attn.qkv(win.reshape(B, h * w, C)).reshape(B, h * w, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
            weights = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1)  # (B, heads, h*w, h*w)
            o = (weights @ v).transpose(1, 2).reshape(B, h, w, C)
            out[:, top : top + h, left : left + w] = o
    return attn.proj(out.reshape(B, N, C))


@pytest.mark.parametrize("size", [(9, 12), (5, 5), (13, 8), (1, 3)])
@pytest.mark.parametrize("explicit", [False, True])
def test_lsa_padding_masks_exactly(size, explicit):
    torch.manual_seed(0)
    attn = LocallyGroupedAttention(16, 2, window_size=4).eval()
    H, W = size
    x = torch.randn(2, H * W, 16)
    with torch.no_grad(), explicit_attention(explicit):
        out = attn(x, (H, W))
        ref = _lsa_reference(attn, x, H, W)
    assert out.shape == (2, H * W, 16) and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_lsa_at_window_multiples_takes_the_unpadded_path(monkeypatch):
    torch.manual_seed(0)
    attn = LocallyGroupedAttention(16, 2, window_size=4).eval()
    x = torch.randn(2, 8 * 12, 16)

    def no_mask(*args):
        raise AssertionError("a map that is a multiple of the window must not be padded or masked")

    monkeypatch.setattr(attn, "_padding_bias", no_mask)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, (8, 12)), _lsa_reference(attn, x, 8, 12), rtol=1e-5, atol=1e-6)


def test_lsa_maps_give_padded_keys_zero_weight_and_stay_finite():
    torch.manual_seed(0)
    attn = LocallyGroupedAttention(8, 1, window_size=7).eval()
    maps = []
    attn.probe.register_forward_hook(lambda m, args, out: maps.append(out))
    x = torch.randn(1, 8 * 8, 8, requires_grad=True)  # 8x8 -> padded 14x14: the last window holds one real token
    attn(x, (8, 8)).sum().backward()
    (attn_map,) = maps  # (windows, heads, 49, 49)
    assert torch.isfinite(attn_map).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(attn_map.sum(-1), torch.ones(attn_map.shape[:-1]))
    real = torch.zeros(14, 14, dtype=torch.bool)
    real[:8, :8] = True
    real = real.reshape(2, 7, 2, 7).transpose(1, 2).reshape(4, 1, 1, 49)  # (windows, 1, 1, ws*ws)
    assert (attn_map.masked_select(~real.expand_as(attn_map)) == 0).all()
    assert attn_map[3, 0, :, 0].eq(1).all()  # the corner window: every query attends to its single real key


def test_gsa_matches_direct_computation():
    torch.manual_seed(0)
    attn = GlobalSubsampledAttention(16, 2, sr_ratio=2).eval()
    x = torch.randn(2, 6 * 4, 16)
    with torch.no_grad():
        out = attn(x, (6, 4))
        fmap = x.transpose(1, 2).reshape(2, 16, 6, 4)
        reduced = attn.norm(F.conv2d(fmap, attn.sr.weight, attn.sr.bias, stride=2).flatten(2).transpose(1, 2))
        q = attn.q(x).reshape(2, 24, 2, 8).transpose(1, 2)
        k, v = attn.kv(reduced).reshape(2, 6, 2, 2, 8).permute(2, 0, 3, 1, 4)
        ref = ((q @ k.transpose(-2, -1)) * 8**-0.5).softmax(-1) @ v  # (B, heads, 24, 8): 6 sub-sampled keys
        ref = attn.proj(ref.transpose(1, 2).reshape(2, 24, 16))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "size"),
    [("twins_svt_small", (32, 32)), ("twins_svt_small", (96, 32)), ("twins_svt_small", (320, 320)),
     ("twins_pcpvt_small", (32, 32)), ("twins_pcpvt_small", (32, 64))],
)  # fmt: skip
def test_any_multiple_of_32_works_and_paths_agree(name, size):
    # 320x320 gives SVT a 10x10 last stage with 7x7 windows: the official code fails there.
    model = tiny(name)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        fused = model(x)
        with explicit_attention():
            explicit = model(x)
    assert fused.shape == (1, 1000) and torch.isfinite(fused).all()
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(31, 64), (64, 20), (0, 32)])
def test_sizes_below_the_minimum_raise(size):
    model = tiny()
    assert model.min_input_size == 32
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 3, *size))


@pytest.mark.parametrize("name", ["twins_pcpvt_small", "twins_svt_small"])
def test_any_size_from_32_floors_like_the_official_strided_convs(name):
    # 200 x 264: stage maps 50x66, 25x33, 12x16, 6x8 (the official PCPVT runs there; glocal's logits equal its
    # logits to 3e-7 under the same weights, measured with the official gvt.py). 32 x 33: one token at stride 32.
    model = glocal.create_model(name, **SMALL_OVERRIDES[name]).eval()
    with torch.no_grad():
        for size, last in [((200, 264), (6, 8)), ((32, 33), (1, 1))]:
            maps = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
            assert maps[-1].shape[2:] == last
            assert [m.shape[2] for m in maps] == [size[0] // r for r in model.feature_info.reduction()]


def test_pyramid_is_nchw_at_4_8_16_32_and_head_is_norm_then_mean():
    model = tiny()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
        logits = model(x)
        tokens = model.norm(maps[-1].flatten(2).transpose(1, 2))  # (B, N, C4)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    torch.testing.assert_close(final, maps[-1])
    torch.testing.assert_close(normed, tokens.transpose(1, 2).reshape(2, 128, 2, 3))
    torch.testing.assert_close(logits, model.head(tokens.mean(1)))

    pyramid = glocal.create_model("twins_svt_small", **TINY_SVT, features_only=True, out_indices=(1, 2))
    assert pyramid.feature_info.channels() == [32, 64] and pyramid.feature_info.reduction() == [8, 16]
    assert len(pyramid.backbone.blocks) == 3 and isinstance(pyramid.backbone.head, torch.nn.Identity)
    assert [tuple(m.shape) for m in pyramid(torch.randn(1, 3, 96, 64))] == [(1, 32, 12, 8), (1, 64, 6, 4)]
    # Normed taps keep the final norm only where the last stage is tapped (it normalises nothing else).
    assert isinstance(pyramid.backbone.norm, torch.nn.Identity)
    normed_pyramid = FeaturePyramid(tiny(), norm=True)
    assert isinstance(normed_pyramid.backbone.norm, torch.nn.LayerNorm)
    with torch.no_grad():
        torch.testing.assert_close(normed_pyramid(x)[-1], normed)


def _counted(module: torch.nn.Module, x: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
    """(all MACs, attention-matmul MACs) of one call, attention explicit so its matmuls are visible."""
    with torch.no_grad(), explicit_attention(), FlopCounterMode(display=False) as counter:
        module(x, size)
    per_op = counter.get_flop_counts()["Global"]
    attention = sum(v for op, v in per_op.items() if "bmm" in str(op))
    return counter.get_total_flops() // 2, attention // 2


def test_lsa_cost_is_linear_and_global_cost_quadratic_in_tokens():
    dim = 32
    lsa = LocallyGroupedAttention(dim, 2, window_size=7).eval()
    gsa = GlobalSubsampledAttention(dim, 2, sr_ratio=2).eval()
    full = GlobalSubsampledAttention(dim, 2, sr_ratio=1).eval()
    lsa_attn, full_attn = [], []
    for side in (14, 28, 56):
        x = torch.randn(1, side * side, dim)
        total, attn = _counted(lsa, x, (side, side))
        assert total == lsa_macs(side, side, dim, (7, 7))
        lsa_attn.append(attn)
        total, attn = _counted(full, x, (side, side))
        assert total == gsa_macs(side, side, dim, 1)
        full_attn.append(attn)
        assert _counted(gsa, x, (side, side))[0] == gsa_macs(side, side, dim, 2)
    # 4x the tokens: LSA's attention matmuls cost 4x, global attention's 16x.
    assert [b / a for a, b in zip(lsa_attn, lsa_attn[1:], strict=False)] == [4.0, 4.0]
    assert [b / a for a, b in zip(full_attn, full_attn[1:], strict=False)] == [16.0, 16.0]
    assert lsa_attn[0] == 2 * 14 * 14 * 49 * dim
    # A map that is not a multiple of the window is counted at its padded size.
    assert (
        _counted(lsa, torch.randn(1, 100, dim), (10, 10))[0]
        == lsa_macs(10, 10, dim, (7, 7))
        == lsa_macs(14, 14, dim, (7, 7))
    )


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_trace_at_a_window_multiple_runs_at_padded_sizes():
    # A traced graph always takes the padded, masked LSA path, so a trace at 224 (no padding) serves 320x256 too.
    model = tiny(num_classes=6)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 224, 224), check_trace=False)
        for size in ((224, 224), (320, 256)):
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)
