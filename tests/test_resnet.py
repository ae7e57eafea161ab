"""ResNet family: block math against direct computations, placement, ablation options, BoTNet sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import glocal
from glocal.analysis.complexity import count_params
from glocal.layers import GlobalContext, MHSA2d, NonLocal2d, RelPosLogits, gc_block, se_block, snl_block
from glocal.layers.bot import AbsPosMHSA2d
from glocal.models.resnet import Bottleneck, CeilAvgPool2x2, CeilMaxPool
from tests.conftest import perturb_


def _meta(name, **kw):
    with torch.device("meta"):
        return glocal.create_model(name, **kw)


def test_gc_block_equals_official_formula():
    torch.manual_seed(0)
    block = perturb_(gc_block(64)).eval()
    x = torch.randn(2, 64, 5, 7)
    mask = F.conv2d(x, block.attn_pool.weight, block.attn_pool.bias).flatten(2).softmax(-1)  # (B, 1, HW)
    context = torch.einsum("bcn,bn->bc", x.flatten(2), mask[:, 0])[..., None, None]
    t1, ln, _, t2 = block.transform
    hidden = F.conv2d(context, t1.weight, t1.bias)
    hidden = F.layer_norm(hidden, hidden.shape[1:], ln.weight, ln.bias, eps=1e-5).relu()
    expected = x + F.conv2d(hidden, t2.weight, t2.bias)
    torch.testing.assert_close(block(x), expected)
    assert t1.out_channels == 4  # int(64 * 1/16)


def test_gc_block_starts_as_identity():
    x = torch.randn(1, 32, 4, 4)
    torch.testing.assert_close(gc_block(32)(x), x)
    torch.testing.assert_close(snl_block(32)(x), x)


def test_se_block_equals_senet_formula():
    torch.manual_seed(0)
    block = se_block(64)
    x = torch.randn(2, 64, 5, 7)
    fc1, _, _, fc2 = block.transform
    s = F.conv2d(F.conv2d(x.mean((2, 3), keepdim=True), fc1.weight, fc1.bias).relu(), fc2.weight, fc2.bias)
    torch.testing.assert_close(block(x), x * s.sigmoid())
    assert not hasattr(block, "attn_pool") and count_params(block) == 64 * 4 + 4 + 4 * 64 + 64


def test_snl_block_is_query_independent_pooling_plus_one_conv():
    torch.manual_seed(0)
    block = perturb_(snl_block(16))
    x = torch.randn(2, 16, 3, 5)
    w = F.conv2d(x, block.attn_pool.weight, block.attn_pool.bias).flatten(2).softmax(-1)[:, 0]  # (B, HW)
    context = torch.einsum("bcn,bn->bc", x.flatten(2), w)[..., None, None]
    conv = block.transform[0]
    torch.testing.assert_close(block(x), x + F.conv2d(context, conv.weight, conv.bias))


def test_non_local_equals_embedded_gaussian():
    torch.manual_seed(0)
    block = perturb_(NonLocal2d(32)).eval()
    x = torch.randn(2, 32, 4, 6)
    theta = F.conv2d(x, block.theta.weight, block.theta.bias).flatten(2)  # (B, 16, HW)
    phi = F.conv2d(x, block.phi.weight, block.phi.bias).flatten(2)
    g = F.conv2d(x, block.g.weight, block.g.bias).flatten(2)
    attn = (theta.transpose(1, 2) @ phi / 16**0.5).softmax(-1)  # (B, HW, HW)
    y = (attn @ g.transpose(1, 2)).transpose(1, 2).reshape(2, 16, 4, 6)
    expected = x + block.norm(F.conv2d(y, block.out.weight, block.out.bias))
    torch.testing.assert_close(block(x), expected)
    assert torch.equal(NonLocal2d(32).norm.weight, torch.zeros(32))


def test_non_local_subsample_pools_keys_and_values():
    block = perturb_(NonLocal2d(8, subsample=True)).eval()
    seen = []
    block.probe.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    block(torch.randn(1, 8, 6, 8))
    assert seen == [torch.Size([1, 1, 48, 12])]


def test_relative_logits_equal_brute_force():
    torch.manual_seed(0)
    H, W, d = 3, 4, 5
    rel = perturb_(RelPosLogits((H, W), d))
    q = torch.randn(2, 2, H, W, d)
    logits = rel(q)
    expected = torch.empty(2, 2, H * W, H * W)
    for y in range(H):
        for x in range(W):
            for ky in range(H):
                for kx in range(W):
                    r = rel.height[ky - y + H - 1] + rel.width[kx - x + W - 1]
                    expected[:, :, y * W + x, ky * W + kx] = q[:, :, y, x] @ r
    torch.testing.assert_close(logits, expected)


def test_relative_tables_follow_the_actual_size():
    rel = RelPosLogits((7, 7), 8)
    out = rel(torch.randn(1, 1, 5, 9, 8))
    assert out.shape == (1, 1, 45, 45)


def test_mhsa_equals_direct_attention_with_relative_logits():
    torch.manual_seed(0)
    mhsa = perturb_(MHSA2d(16, 4, (3, 4)))
    x = torch.randn(2, 16, 3, 4)
    q, k, v = F.conv2d(x, mhsa.qkv.weight).reshape(2, 3, 4, 4, 12).unbind(1)  # (B, heads, d, HW)
    q, k, v = (t.transpose(-2, -1) for t in (q, k, v))
    qs = q * 4**-0.5
    logits = qs @ k.transpose(-2, -1) + mhsa.rel_pos(qs.reshape(2, 4, 3, 4, 4))
    expected = (logits.softmax(-1) @ v).transpose(-2, -1).reshape(2, 16, 3, 4)
    torch.testing.assert_close(mhsa(x), expected)


def test_ablation_one_liner_equals_gcresnet50():
    torch.manual_seed(0)
    a = glocal.create_model("resnet50", block_attn="gc", attn_stages=(3, 4, 5))
    torch.manual_seed(0)
    b = glocal.create_model("gcresnet50")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_gc_placement_every_block_of_c3_to_c5_after_conv3():
    model = _meta("gcresnet50")
    with_context = [n for n, m in model.named_modules() if isinstance(m, GlobalContext)]
    assert len(with_context) == 4 + 6 + 3
    assert all(not n.startswith("layer1") for n in with_context)
    assert not model.layer2[0].context_after_add


@pytest.mark.parametrize("name, where", [("nlresnet50", "layer3.4.context"), ("snlresnet50", "layer3.4.context")])
def test_nl_and_snl_sit_before_the_last_c4_block(name, where):
    model = _meta(name)
    found = [n for n, m in model.named_modules() if isinstance(m, (NonLocal2d, GlobalContext))]
    assert found == [where]
    assert model.layer3[4].context_after_add


def test_nl_before_last_block_of_c4_in_resnet101():
    model = _meta("resnet101", block_attn="nl")
    assert [n for n, m in model.named_modules() if isinstance(m, NonLocal2d)] == ["layer3.21.context"]


@pytest.mark.parametrize(
    "overrides, delta",
    [
        # LayerNorm removed: 2 * hidden parameters less in each of the 13 blocks.
        (dict(attn_norm=False), -2 * (4 * 32 + 6 * 64 + 3 * 128)),
        # Average pooling drops the 1x1 conv C->1 (C + 1 parameters) of each block.
        (dict(attn_pooling="avg"), -(4 * 513 + 6 * 1025 + 3 * 2049)),
        (dict(attn_fusion="scale"), 0),
        (dict(attn_position="after_add"), 0),
    ],
)
def test_gc_ablation_options(overrides, delta):
    base = count_params(_meta("gcresnet50"))
    assert count_params(_meta("gcresnet50", **overrides)) - base == delta
    model = glocal.create_model("gcresnet50", num_classes=3, **overrides).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_gc_ratio_option():
    r4 = count_params(_meta("gcresnet50", attn_ratio=1 / 4))
    assert abs(r4 - 35_560_000) / 35_560_000 < 0.005  # GCNet's r4 variant (reference: 35.56M)


def test_se_anywhere_and_nl_video_recipe():
    model = _meta("resnet50", block_attn="nl", attn_stages=(3, 4), attn_blocks=(1, 3, 5))
    nl = [n for n, m in model.named_modules() if isinstance(m, NonLocal2d)]
    assert nl == ["layer2.1.context", "layer2.3.context", "layer3.1.context", "layer3.3.context", "layer3.5.context"]
    assert abs(count_params(model) - 32_920_000) / 32_920_000 < 0.005  # "5 NL blocks": 32.92M
    se_c5 = _meta("resnet50", block_attn="se", attn_stages=(5,))
    assert sum(isinstance(m, GlobalContext) for m in se_c5.modules()) == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(block_attn="xx"), "block_attn must be one of"),
        (dict(attn_stages=(3,)), "without block_attn"),
        (dict(block_attn="nl", attn_pooling="avg"), "do not apply"),
        (dict(block_attn="gc", attn_stages=(1,)), "numbered 2..5"),
        (dict(block_attn="gc", attn_position="middle"), "attn_position"),
        (dict(bot_stages=(6,)), "bot_stages"),
        (dict(depths=(3, 4, 6)), "4 stages"),
    ],
)
def test_invalid_configs_are_explained(overrides, message):
    with pytest.raises(ValueError, match=message):
        glocal.create_model("resnet50", **overrides)


def test_senet_layout_stride_on_first_1x1_and_ceil_pool():
    model = _meta("seresnet50")
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert isinstance(model.maxpool, CeilMaxPool)  # ceil-mode pooling, equal to nn.MaxPool2d's (tested below)
    tv = _meta("resnet50")
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)


@pytest.mark.parametrize("size", [(14, 14), (13, 20), (7, 9)])
def test_botnet_pool_rounds_up_like_its_shortcut(size):
    x = torch.randn(2, 8, *size)
    expected = torch.nn.AvgPool2d(2, 2, ceil_mode=True)(x)  # partial windows divided by their in-bounds count
    torch.testing.assert_close(CeilAvgPool2x2()(x), expected)
    shortcut = torch.nn.Conv2d(8, 8, 1, stride=2)(x)
    assert expected.shape == shortcut.shape


def test_botnet_structure():
    model = _meta("botnet50")
    mhsa = [m for m in model.modules() if isinstance(m, MHSA2d)]
    assert len(mhsa) == 3 and all(m.num_heads == 4 and m.head_dim == 128 for m in mhsa)
    assert mhsa[0].rel_pos.height.shape == (27, 128) and mhsa[1].rel_pos.width.shape == (13, 128)
    assert isinstance(model.layer4[0].pool, CeilAvgPool2x2)
    assert model.layer4[0].downsample[0].stride == (2, 2)
    assert all(not isinstance(m, MHSA2d) for m in model.layer3.modules())
    # At 1024 the first c5 block's tables cover 64x64 (127 rows), the others 32x32 (63 rows).
    grown = 2 * (127 - 27) * 128 + 2 * 2 * (63 - 13) * 128
    assert count_params(_meta("botnet50", img_size=1024)) == count_params(model) + grown


def test_botnet_at_1024_attends_over_64x64():
    model = glocal.create_model("botnet50", num_classes=5).eval()
    seen = []
    for m in model.layer4.modules():
        if isinstance(m, MHSA2d):
            m.probe.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        y = model(torch.randn(1, 3, 1024, 1024))
    assert y.shape == (1, 5) and torch.isfinite(y).all()
    assert seen == [(1, 4, 4096, 4096), (1, 4, 1024, 1024), (1, 4, 1024, 1024)]


def test_botnet_built_for_its_size_uses_its_tables_unchanged():
    model = perturb_(glocal.create_model("botnet50", img_size=(64, 96))).eval()
    rel = model.layer4[0].conv2.rel_pos
    assert rel.height.shape[0] == 2 * 4 - 1 and rel.width.shape[0] == 2 * 6 - 1
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        model(x)


def test_bottleneck_stride_placement_with_bot():
    block = Bottleneck(1024, 512, 2, mhsa_heads=4, feat_size=(4, 4))
    assert block(torch.randn(1, 1024, 4, 4)).shape == (1, 2048, 2, 2)


def test_botnet_checkpoint_from_another_size_adapts_relative_tables():
    small = perturb_(glocal.create_model("botnet50", img_size=64))
    large = glocal.create_model("botnet50", img_size=256)
    adapted = large.adapt_state_dict(small.state_dict())
    large.load_state_dict(adapted)
    assert large.layer4[0].conv2.rel_pos.height.shape == (31, 128)
    # Endpoints align: the extreme relative offsets keep their embeddings.
    torch.testing.assert_close(large.layer4[0].conv2.rel_pos.height[0], small.layer4[0].conv2.rel_pos.height[0])
    torch.testing.assert_close(large.layer4[1].conv2.rel_pos.width[-1], small.layer4[1].conv2.rel_pos.width[-1])


def test_ceil_max_pool_equals_ceil_mode_at_every_size():
    reference = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for h in range(3, 14):
        for w in (3, 4, 9, 12):
            x = torch.randn(2, 3, h, w)
            assert torch.equal(CeilMaxPool()(x), reference(x)), (h, w)


def test_lj_mhsa_equals_its_formula():
    # leaderj1001's MHSA written out: logits[i, j] = q_i . k_j + p_i . q_j, no scale, softmax over j.
    torch.manual_seed(0)
    mhsa = AbsPosMHSA2d(16, 2, (3, 5)).eval()
    x = torch.randn(2, 16, 3, 5)
    q, k, v = (F.conv2d(x, c.weight, c.bias).reshape(2, 2, 8, 15) for c in (mhsa.query, mhsa.key, mhsa.value))
    pos = (mhsa.rel_h + mhsa.rel_w).reshape(1, 2, 8, 15)  # (1, heads, d, N): rows from rel_w, columns from rel_h
    logits = torch.einsum("bhdi,bhdj->bhij", q, k) + torch.einsum("hdi,bhdj->bhij", pos[0], q)
    expected = torch.einsum("bhij,bhdj->bhdi", logits.softmax(-1), v).reshape(2, 16, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(mhsa(x), expected)
        # Another map size resamples the embeddings along their axis: at 6 x 10 every one is still used.
        assert mhsa(torch.randn(1, 16, 6, 10)).shape == (1, 16, 6, 10)


def test_botnet50_lj_loads_the_original_layout_at_any_size(tmp_path):
    from glocal.weights.resnet import BOTNET_LJ

    torch.manual_seed(0)
    model = perturb_(glocal.create_model("botnet50_lj", depths=(1, 1, 1, 2), img_size=64)).eval()
    theirs = BOTNET_LJ.from_glocal(model.state_dict(), model)
    assert "layer4.0.conv2.0.rel_h" in theirs and "layer4.0.shortcut.0.bias" in theirs and "fc.1.weight" in theirs
    assert "layer1.0.conv2.weight" in theirs  # plain 3x3 convs keep their names
    torch.save(theirs, tmp_path / "lj.pth")
    loaded = glocal.create_model("botnet50_lj", depths=(1, 1, 1, 2), img_size=64, checkpoint=tmp_path / "lj.pth")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x))
    larger = glocal.create_model("botnet50_lj", depths=(1, 1, 1, 2), img_size=128, checkpoint=tmp_path / "lj.pth")
    assert larger.layer4[0].conv2.rel_w.shape == (1, 4, 128, 8, 1)
