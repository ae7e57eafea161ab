"""Every registered model driven through timm's feature protocol the way detection and segmentation wrappers do.

Each test mirrors what one consumer calls (mmdet's ``TIMMBackbone``, segmentation_models_pytorch's ``tu-``
encoders, Hugging Face's ``TimmBackbone``/``TimmWrapperModel``), so a glocal model can stand where a timm model goes.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import build, perturb_, small_size


def _image(model) -> torch.Tensor:
    return torch.randn(1, 3, *small_size(model))


def test_mmdet_timm_backbone_style(model_name):
    # mmdet: create_model(name, features_only=True, out_indices=...), channels from feature_info, list of maps.
    pyramid = build(model_name, features_only=True, out_indices=(-2, -1)).eval()
    channels, reductions = pyramid.feature_info.channels(), pyramid.feature_info.reduction()
    assert len(channels) == len(reductions) == 2
    x = _image(pyramid.backbone)
    with torch.no_grad():
        maps = pyramid(x)
    assert isinstance(maps, list) and len(maps) == 2
    for fmap, chs, red in zip(maps, channels, reductions, strict=True):
        assert fmap.shape == (1, chs, x.shape[2] // red, x.shape[3] // red)


def test_smp_tu_encoder_style(model_name):
    # smp: features_only with timm's default taps; out channels = [in_chans] + channels(), strides from reduction().
    pyramid = build(model_name, features_only=True).eval()
    info = pyramid.feature_info
    out_channels = [3, *info.channels()]
    assert len(out_channels) == 1 + len(pyramid.out_indices)
    assert info.reduction() == sorted(info.reduction()), "reductions never decrease along the taps"
    with torch.no_grad():
        maps = pyramid(_image(pyramid.backbone))
    assert [m.shape[1] for m in maps] == out_channels[1:]


def test_hf_timm_backbone_style(model_name):
    # transformers' TimmBackbone: return layers from get_dicts(), every tap from info, names real modules.
    pyramid = build(model_name, features_only=True)
    full = build(model_name)
    return_layers = {d["module"]: str(d["index"]) for d in pyramid.feature_info.get_dicts()}
    all_layers = {d["module"]: str(i) for i, d in enumerate(pyramid.feature_info.info)}
    assert len(return_layers) == len(pyramid.out_indices) and len(all_layers) == len(full.feature_info)
    modules = dict(full.named_modules())
    assert all(name in modules for name in all_layers), f"taps naming no module: {set(all_layers) - set(modules)}"
    assert pyramid.feature_info.module_name(0) == full.feature_info[0]["module"]
    assert pyramid.feature_info.get_dicts(keys=["num_chs"], idx=0) == {"num_chs": full.feature_info.channels(0)}


def test_forward_intermediates_signature_and_semantics(model_name):
    torch.manual_seed(0)
    model = perturb_(build(model_name)).eval()
    x = _image(model)
    n = len(model.feature_info)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=[-1], intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        nlc = model.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
        early, first = model.forward_intermediates(x, indices=[0], stop_early=True)
        features = model.forward_features(x)
    assert len(maps) == n
    torch.testing.assert_close(final, features)
    assert isinstance(only, list) and len(only) == 1
    torch.testing.assert_close(only[0], maps[-1])
    torch.testing.assert_close(last_two[0], maps[n - 2])
    torch.testing.assert_close(last_two[1], maps[n - 1])
    torch.testing.assert_close(nlc[0], maps[0].flatten(2).transpose(1, 2))
    torch.testing.assert_close(first[0], maps[0])
    assert early.shape[0] == 1 and torch.isfinite(early).all()
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[n])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_pruned_model_returns_the_same_taps(model_name):
    torch.manual_seed(0)
    model = perturb_(build(model_name)).eval()
    x = _image(model)
    with torch.no_grad():
        before = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        taps = model.prune_intermediate_layers([0, 1], prune_head=True, prune_norm=False)
        after = model.forward_intermediates(x, indices=taps, intermediates_only=True)
    assert taps == [0, 1] and model.num_classes == 0
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "name", ["resnet50", "seresnet50", "botnet50", "twins_pcpvt_small", "twins_svt_small", "vit_tiny_patch16_224",
             "t2t_vit_7", "volo_d1_224",
             # Full softmax attention over 200 x 333 tokens in the first T2T layer: 40 s here.
             pytest.param("t2t_vit_t_14", marks=pytest.mark.slow)],
)  # fmt: skip
def test_detection_input_sizes_run_and_follow_the_stated_rule(name):
    # 800 x 1333 and 600 x 1000 are not multiples of 32; every family takes them (rules in the family docstrings).
    model = build(name, **({"depth": 2} if name.startswith(("vit", "t2t")) else {})).eval()
    with torch.no_grad():
        for size in [(800, 1333), (model.min_input_size, model.min_input_size + 1)]:
            maps = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
            assert all(torch.isfinite(m).all() and min(m.shape[2:]) >= 1 for m in maps)
        with pytest.raises(ValueError, match=f"at least {model.min_input_size}"):
            model(torch.randn(1, 3, model.min_input_size - 1, 64))
