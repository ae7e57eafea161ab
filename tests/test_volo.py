"""VOLO: outlook attention against the official unfold -> matmul -> fold formulation, export, heads, keys."""

from __future__ import annotations

import pytest
import torch

import glocal
from glocal.layers.attention import _softmax_in_memory_order, attend_logits
from glocal.models import FeaturePyramid
from glocal.models.volo import OutlookAttention, Volo, _FoldWindows, _GatherWindows

TINY = dict(depths=(2, 1, 1, 1), embed_dims=(64, 96, 96, 96), num_heads=(2, 3, 3, 3))


def tiny(**kwargs) -> Volo:
    return glocal.create_model("volo_d1_224", **{**TINY, **kwargs})


def outlook(dim: int = 32, heads: int = 2) -> OutlookAttention:
    torch.manual_seed(0)
    attn = OutlookAttention(dim, heads)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.2)  # large enough that the softmax is far from uniform
    return attn.eval()


@pytest.mark.parametrize("size", [(28, 28), (6, 10), (7, 9), (2, 3), (1, 1)])
def test_outlook_attention_equals_unfold_fold_reference(size):
    attn = outlook()
    x = torch.randn(2, *size, 32, requires_grad=True)
    ours = attn(x)
    ref = attn.forward_reference(x)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, [x, *attn.parameters()], grad)
    g_ref = torch.autograd.grad(ref, [x, *attn.parameters()], grad)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "layout",
    [
        (0, 1, 2, 3),  # contiguous: the plain call
        (3, 0, 1, 2),  # keys outermost, VOLO's outlook logits: softmax in memory order
        (1, 3, 0, 2),  # another permutation
    ],
)
def test_attend_logits_softmax_follows_the_memory_order(layout):
    """The softmax over the last axis is the same whatever the logits' memory order, values and gradients."""
    torch.manual_seed(0)
    stored = torch.randn([(4, 3, 1, 9)[d] for d in layout]) * 3  # (B, heads, Nq, Nk) laid out in `layout` order
    logits = stored.permute([layout.index(d) for d in range(4)]).requires_grad_()  # (4, 3, 1, 9) view
    assert logits.shape == (4, 3, 1, 9)
    plain = logits.detach().contiguous().requires_grad_()
    v = torch.randn(4, 3, 9, 5)
    ours, ref = attend_logits(logits, v), attend_logits(plain, v)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, logits, grad)[0], torch.autograd.grad(ref, plain, grad)[0])
    attn = _softmax_in_memory_order(logits.detach())
    assert attn.stride() == logits.stride()  # computed where the logits lie: no relayout copy
    torch.testing.assert_close(attn, plain.detach().softmax(-1))


def test_softmax_of_gapped_logits_falls_back_to_the_plain_call():
    logits = torch.randn(4, 6, 9)[:, ::2].transpose(0, 1)  # strided with gaps: no dense memory order
    torch.testing.assert_close(_softmax_in_memory_order(logits), logits.contiguous().softmax(-1))


@pytest.mark.parametrize("size", [(4, 6), (5, 3)])
def test_window_gather_and_fold_gradients_pass_gradcheck(size):
    """The window gather and fold carry each other as backward: checked against finite differences (and twice)."""
    v = torch.randn(1, *size, 4, dtype=torch.float64, requires_grad=True)
    windows = torch.randn(1, 2, (size[0] + 1) // 2, (size[1] + 1) // 2, 9, 2, dtype=torch.float64, requires_grad=True)
    for fn, arg in ((lambda t: _GatherWindows.apply(t, 2), v), (lambda t: _FoldWindows.apply(t, size), windows)):
        assert torch.autograd.gradcheck(fn, (arg,))
        assert torch.autograd.gradgradcheck(fn, (arg,))


def test_outlook_probe_sees_per_window_maps():
    attn = outlook()
    seen = []
    attn.probe.register_forward_hook(lambda mod, inp, out: seen.append(out))
    x = torch.randn(2, 7, 10, 32)
    with torch.no_grad():
        observed = attn(x)
        torch.testing.assert_close(observed, attn.forward_reference(x), rtol=1e-5, atol=1e-5)
    (maps,) = seen
    assert maps.shape == (2, 2, 4, 5, 9, 9)  # (B, heads, ceil(7/2), ceil(10/2), 9 outputs, 9 gathered values)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 4, 5, 9))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace is deprecated, still what ONNX uses
def test_outlook_attention_traces_without_frozen_shapes():
    """A trace at one size must run correctly at others (no Python arithmetic on traced shapes, no fold)."""
    attn = outlook()
    with torch.no_grad():
        traced = torch.jit.trace(attn, torch.randn(1, 8, 8, 32))
        graph = str(traced.graph)
        assert "col2im" not in graph and "im2col" not in graph
        for size in [(12, 6), (7, 9)]:
            x = torch.randn(2, *size, 32)
            torch.testing.assert_close(traced(x), attn.forward_reference(x), rtol=1e-5, atol=1e-5)


def test_outlook_attention_exports_with_dynamic_sizes():
    attn = outlook()
    b, h, w = (torch.export.Dim(name, min=2, max=64) for name in "bhw")
    program = torch.export.export(attn, (torch.randn(2, 8, 12, 32),), dynamic_shapes=({0: b, 1: 2 * h, 2: 2 * w},))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("col2im" in op or "im2col" in op for op in ops), ops
    x = torch.randn(3, 10, 6, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), attn.forward_reference(x), rtol=1e-5, atol=1e-5)


def test_state_dict_keys_are_the_official_ones():
    depths = TINY["depths"]
    model = tiny()
    expected = {"pos_embed", "cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias", "network.1.proj.weight",
                "network.1.proj.bias", "norm.weight", "norm.bias", "head.weight", "head.bias", "aux_head.weight",
                "aux_head.bias"}  # fmt: skip
    for i in (0, 3, 6):
        expected.add(f"patch_embed.conv.{i}.weight")
    for i in (1, 4, 7):
        expected |= {f"patch_embed.conv.{i}.{n}" for n in ("weight", "bias", "running_mean", "running_var")}
        expected.add(f"patch_embed.conv.{i}.num_batches_tracked")
    common = ["norm1.weight", "norm1.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
              "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]  # fmt: skip
    for j in range(depths[0]):
        expected |= {f"network.0.{j}.{n}" for n in [*common, "attn.v.weight", "attn.attn.weight", "attn.attn.bias"]}
    for i, depth in zip((2, 3, 4), depths[1:], strict=True):
        for j in range(depth):
            expected |= {f"network.{i}.{j}.{n}" for n in [*common, "attn.qkv.weight"]}
    for j in range(2):
        expected |= {f"post_network.{j}.{n}" for n in [*common, "attn.kv.weight", "attn.q.weight"]}
    assert set(model.state_dict()) == expected
    assert model.state_dict()["pos_embed"].shape == (1, 14, 14, 96)


def test_evaluation_rule_and_forward_train():
    torch.manual_seed(0)
    model = tiny(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = model(x)
        cls_logits, aux, box = model.forward_train(x)
    assert box == (0, 0, 0, 0) and aux.shape == (2, 4 * 6, 5)
    torch.testing.assert_close(logits, cls_logits + 0.5 * aux.amax(dim=1))
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 1 + 4 * 6, 96)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 0])


def test_mix_token_swaps_a_box_and_swaps_the_token_logits_back(monkeypatch):
    torch.manual_seed(0)
    model = tiny(num_classes=5).train()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        cls_logits, aux, (r1, c1, r2, c2) = model.forward_train(x)
        assert 0 <= r1 <= r2 <= 4 and 0 <= c1 <= c2 <= 6
        assert cls_logits.shape == (2, 5) and aux.shape == (2, 24, 5)
        model.mix_token = False
        plain_cls, plain_aux, plain_box = model.forward_train(x)
        assert plain_box == (0, 0, 0, 0)
        # A box over the whole grid swaps the two images entirely: the class logits follow the swap, and swapping
        # the token logits back restores every image's own.
        model.mix_token = True
        monkeypatch.setattr("glocal.models.volo._rand_box", lambda rows, cols: (0, 0, rows, cols))
        cls_logits, aux, box = model.forward_train(x)
    assert box == (0, 0, 4, 6)
    torch.testing.assert_close(cls_logits, plain_cls.flip(0))
    torch.testing.assert_close(aux, plain_aux)


def test_any_size_from_15_and_pos_embed_resampling():
    model = tiny(num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 80)).shape == (1, 3)
        # 57 x 70: stem ceil(57 / 2) // 4 = 7 rows at stride 8 (odd: outlook attention pads), 3 at stride 16.
        maps = model.forward_intermediates(torch.randn(1, 3, 57, 70), intermediates_only=True)
        assert maps[0].shape[2:] == (7, 8) and maps[-1].shape[2:] == (3, 4)
        with pytest.raises(ValueError, match="at least 15"):
            model(torch.randn(1, 3, 14, 64))
    big = tiny(num_classes=3, img_size=(384, 320))
    assert big.pos_embed.shape == (1, 24, 20, 96)
    adapted = big.adapt_state_dict(dict(model.state_dict()))
    assert adapted["pos_embed"].shape == (1, 24, 20, 96)
    big.load_state_dict(adapted)


def test_stochastic_depth_schedule_is_official():
    model = tiny(drop_path_rate=0.3)
    rates = [[block.drop_path1.p for block in model.network[i]] for i in (0, 2, 3, 4)]
    total = sum(TINY["depths"])
    assert rates[0] == [0.0, 0.0]  # the official outlookers get no stochastic depth
    assert [r for group in rates[1:] for r in group] == pytest.approx([0.3 * i / (total - 1) for i in (2, 3, 4)])
    model = tiny(drop_path_rate=0.3, outlooker_drop_path=True)
    assert [block.drop_path1.p for block in model.network[0]] == pytest.approx([0.0, 0.3 / (total - 1)])
    assert all(not hasattr(block, "drop_path1") for block in model.post_network)


def test_pyramid_and_pruning():
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 64, 8, 12)] + [(1, 96, 4, 6)] * 3
    assert normed[0].shape == (1, 96, 4, 6)
    pyramid = glocal.create_model("volo_d1_224", **TINY, features_only=True, out_indices=(0,))
    assert pyramid.backbone.pos_embed is None and len(pyramid.backbone.network) == 1
    assert [tuple(m.shape) for m in pyramid(x)] == [(1, 64, 8, 12)]
    normed = FeaturePyramid(tiny(), out_indices=(-1,), norm=True)
    assert isinstance(normed.backbone.norm, torch.nn.LayerNorm) and normed(x)[0].shape == (1, 96, 4, 6)
