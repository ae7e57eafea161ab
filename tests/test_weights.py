"""Checkpoints: glocal's format, safe reading, adaptation, strictness, and the ResNet family's source layouts.

The official layouts are written here independently of glocal's maps, as name -> shape lists derived from each
source's code (torchvision/timm ``resnet.py``, timm ``senet.py``, SENet's prototxt, video-nonlocal-net's
``resnet_helper.py``/``nonlocal_helper.py``, mmdet/mmcv ``ContextBlock``/``NonLocal2d``), so that a wrong map fails.
"""

from __future__ import annotations

import codecs
import logging
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import glocal
from glocal.cli import main as cli_main
from glocal.weights import (
    CheckpointError,
    CheckpointMismatchError,
    KeyMap,
    export_state_dict,
    load_checkpoint,
    load_state_dict,
    read_state_dict,
    save_checkpoint,
)
from glocal.weights.io import read_tensors

# Narrow and shallow: NL/SNL's default block (-2 of c4) is then layer3.0. Full sizes are checked on the meta device.
WIDTHS = (64, 128, 256, 512)
SMALL = dict(depths=(1, 1, 2, 1), widths=(16, 32, 64, 128), stem_width=16)
S = (SMALL["depths"], SMALL["widths"], SMALL["stem_width"])
SW = dict(widths=SMALL["widths"], stem=SMALL["stem_width"])


def _bn(prefix: str, c: int, counter: bool = True) -> dict[str, tuple]:
    keys = {f"{prefix}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")}
    if counter:
        keys[f"{prefix}.num_batches_tracked"] = ()
    return keys


def tv_resnet_keys(depths, widths=WIDTHS, stem: int = 64, counter: bool = True) -> dict[str, tuple]:
    """torchvision ``resnet50``'s state dict (the same in timm): names and shapes."""
    keys = {"conv1.weight": (stem, 3, 7, 7), **_bn("bn1", stem, counter)}
    in_chs = stem
    for s, (depth, width) in enumerate(zip(depths, widths, strict=True), start=1):
        for i in range(depth):
            p, out = f"layer{s}.{i}", 4 * width
            keys[f"{p}.conv1.weight"] = (width, in_chs, 1, 1)
            keys.update(_bn(f"{p}.bn1", width, counter))
            keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
            keys.update(_bn(f"{p}.bn2", width, counter))
            keys[f"{p}.conv3.weight"] = (out, width, 1, 1)
            keys.update(_bn(f"{p}.bn3", out, counter))
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (out, in_chs, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", out, counter))
            in_chs = out
    keys.update({"fc.weight": (1000, in_chs), "fc.bias": (1000,)})
    return keys


def legacy_seresnet_keys(depths, widths=WIDTHS, stem: int = 64) -> dict[str, tuple]:
    """timm ``legacy_seresnet50`` / Cadene ``se_resnet50``: layer0 stem, se_module.fc1/fc2, last_linear."""
    keys = {}
    for k, shape in tv_resnet_keys(depths, widths, stem).items():
        k = k.replace("conv1.weight", "layer0.conv1.weight") if k == "conv1.weight" else k
        k = "layer0." + k if k.startswith("bn1.") else k
        k = k.replace("fc.", "last_linear.") if k.startswith("fc.") else k
        keys[k] = shape
    for s, (depth, width) in enumerate(zip(depths, widths, strict=True), start=1):
        out = 4 * width
        for i in range(depth):
            p = f"layer{s}.{i}.se_module"
            keys.update({f"{p}.fc1.weight": (out // 16, out, 1, 1), f"{p}.fc1.bias": (out // 16,)})
            keys.update({f"{p}.fc2.weight": (out, out // 16, 1, 1), f"{p}.fc2.bias": (out,)})
    return keys


def senet_caffe_keys(depths, widths=WIDTHS, stem: int = 64) -> dict[str, tuple]:
    """SE-ResNet-50.caffemodel blobs, '{layer}.{index}': Convolution (w), BatchNorm (mean, var, factor), Scale."""

    def conv_bn(name: str, shape: tuple) -> dict[str, tuple]:
        c = shape[0]
        return {f"{name}.0": shape, f"{name}/bn.0": (c,), f"{name}/bn.1": (c,), f"{name}/bn.2": (1,),
                f"{name}/bn/scale.0": (c,), f"{name}/bn/scale.1": (c,)}  # fmt: skip

    keys = conv_bn("conv1/7x7_s2", (stem, 3, 7, 7))
    in_chs = stem
    for s, (depth, width) in enumerate(zip(depths, widths, strict=True), start=2):
        out = 4 * width
        for b in range(1, depth + 1):
            p = f"conv{s}_{b}"
            keys.update(conv_bn(f"{p}_1x1_reduce", (width, in_chs, 1, 1)))
            keys.update(conv_bn(f"{p}_3x3", (width, width, 3, 3)))
            keys.update(conv_bn(f"{p}_1x1_increase", (out, width, 1, 1)))
            keys.update({f"{p}_1x1_down.0": (out // 16, out, 1, 1), f"{p}_1x1_down.1": (out // 16,)})
            keys.update({f"{p}_1x1_up.0": (out, out // 16, 1, 1), f"{p}_1x1_up.1": (out,)})
            if b == 1:
                keys.update(conv_bn(f"{p}_1x1_proj", (out, in_chs, 1, 1)))
            in_chs = out
    keys.update({"classifier.0": (1000, in_chs), "classifier.1": (1000,)})
    return keys


def caffe2_nl_keys(depths, nl_blocks: dict[int, list[int]], widths=WIDTHS, stem: int = 64) -> dict[str, tuple]:
    """video-nonlocal-net's Caffe2 blobs for a 2-D (T=1) ResNet with NL blocks after res{s}_{i}; 5-D NL kernels."""

    def bn(p: str, c: int) -> dict[str, tuple]:
        return {f"{p}_bn_{x}": (c,) for x in ("s", "b", "rm", "riv")}

    keys = {"conv1_w": (stem, 3, 7, 7), **bn("res_conv1", stem)}
    in_chs = stem
    for s, (depth, width) in enumerate(zip(depths, widths, strict=True), start=2):
        out = 4 * width
        for i in range(depth):
            p = f"res{s}_{i}"
            for letter, shape in (("a", (width, in_chs, 1, 1)), ("b", (width, width, 3, 3)), ("c", (out, width, 1, 1))):
                keys[f"{p}_branch2{letter}_w"] = shape
                keys.update(bn(f"{p}_branch2{letter}", shape[0]))
            if i == 0:
                keys[f"{p}_branch1_w"] = (out, in_chs, 1, 1)
                keys.update(bn(f"{p}_branch1", out))
            in_chs = out
            if i in nl_blocks.get(s, []):
                q = f"nonlocal_conv{s}_{i}"
                for part, shape in (("theta", (out // 2, out)), ("phi", (out // 2, out)), ("g", (out // 2, out)),
                                    ("out", (out, out // 2))):  # fmt: skip
                    keys[f"{q}_{part}_w"] = (*shape, 1, 1, 1)
                    keys[f"{q}_{part}_b"] = (shape[0],)
                keys.update(bn(q, out))
    keys.update({"pred_w": (1000, in_chs), "pred_b": (1000,), "pred_w_momentum": (1000, in_chs)})
    return keys


def mmdet_gc_keys(depths, widths=WIDTHS, stem: int = 64) -> dict[str, tuple]:
    """A GCNet mmdet detector (``stage_with_gcb=(F, T, T, T)``, ratio 1/16): backbone., context_block, and heads."""
    keys = {f"backbone.{k}": v for k, v in tv_resnet_keys(depths, widths, stem).items() if not k.startswith("fc.")}
    for s, (depth, width) in enumerate(zip(depths, widths, strict=True), start=1):
        if s == 1:
            continue
        out, hidden = 4 * width, 4 * width // 16
        for i in range(depth):
            p = f"backbone.layer{s}.{i}.context_block"
            keys.update({f"{p}.conv_mask.weight": (1, out, 1, 1), f"{p}.conv_mask.bias": (1,)})
            keys.update(
                {f"{p}.channel_add_conv.0.weight": (hidden, out, 1, 1), f"{p}.channel_add_conv.0.bias": (hidden,)}
            )
            keys.update(
                {f"{p}.channel_add_conv.1.weight": (hidden, 1, 1), f"{p}.channel_add_conv.1.bias": (hidden, 1, 1)}
            )
            keys.update({f"{p}.channel_add_conv.3.weight": (out, hidden, 1, 1), f"{p}.channel_add_conv.3.bias": (out,)})
    keys.update({"neck.lateral_convs.0.conv.weight": (256, 256, 1, 1), "rpn_head.rpn_cls.weight": (3, 256, 1, 1)})
    return keys


def mmcv_nl_keys(depths, block: str, norm: bool, sub_sample=False, widths=WIDTHS, stem=64) -> dict[str, tuple]:
    """An mmpretrain-style ResNet (backbone., head.fc) with mmcv's NonLocal2d plugin at ``block`` of c4."""
    tv = tv_resnet_keys(depths, widths, stem)
    keys = {f"backbone.{k}": v for k, v in tv.items() if not k.startswith("fc.")}
    keys.update({"head.fc.weight": tv["fc.weight"], "head.fc.bias": (1000,)})
    c = 4 * widths[2]
    p = f"backbone.{block}.nonlocal_block"
    for part in ("g", "theta", "phi"):
        wrap = ".0" if sub_sample and part in ("g", "phi") else ""
        keys.update({f"{p}.{part}{wrap}.conv.weight": (c // 2, c, 1, 1), f"{p}.{part}{wrap}.conv.bias": (c // 2,)})
    keys[f"{p}.conv_out.conv.weight"] = (c, c // 2, 1, 1)
    if norm:
        keys.update(_bn(f"{p}.conv_out.bn", c))
    else:
        keys[f"{p}.conv_out.conv.bias"] = (c,)
    return keys


def make_state_dict(keys: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith(("running_var", "_riv", "bn.1")):
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("bn.2"):
            out[k] = torch.full(shape, 2.0)
        else:
            out[k] = torch.randn(shape, generator=g)
    return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=rtol, atol=1e-6) for k in a)


def perturbed(name: str, **kwargs) -> torch.nn.Module:
    model = glocal.create_model(name, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand(t.shape, generator=g) * 0.02)
    return model.eval()


# --------------------------------------------------------------------------------------------- glocal's format
def test_glocal_format_round_trip_is_bit_exact(tmp_path):
    model = perturbed("gcresnet50", num_classes=7, **SMALL)
    folder = save_checkpoint(model, tmp_path / "gc")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    loaded = glocal.create_model("gcresnet50", checkpoint=folder)  # config overrides and num_classes come back
    assert loaded.num_classes == 7 and loaded.cfg.depths == SMALL["depths"]
    assert same(model.state_dict(), loaded.state_dict())
    double = model.to(torch.float64)
    save_checkpoint(double, folder)
    again = glocal.create_model("gcresnet50", num_classes=7, **SMALL).to(torch.float64)
    assert load_checkpoint(again, folder).layout == "glocal"
    assert same(double.state_dict(), again.state_dict())


def test_glocal_format_float32_round_trip_and_replace(tmp_path):
    model = perturbed("botnet50", **SMALL)
    save_checkpoint(model, tmp_path / "bot")
    save_checkpoint(model, tmp_path / "bot")  # replaces atomically, leaves no temporary folder
    assert sorted(os.listdir(tmp_path)) == ["bot"]
    loaded = glocal.create_model("botnet50", checkpoint=tmp_path / "bot")
    assert same(model.state_dict(), loaded.state_dict())
    x = torch.randn(1, 3, 64, 96)
    out = model(x)
    assert torch.isfinite(out).all() and torch.equal(out, loaded.eval()(x))


def test_missing_checkpoint_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        glocal.create_model("resnet50", checkpoint=tmp_path / "weights.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a glocal checkpoint"):
        glocal.create_model("resnet50", checkpoint=tmp_path / "empty")


def test_save_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        save_checkpoint(glocal.create_model("resnet50", **SMALL), tmp_path / "data")


# --------------------------------------------------------------------------------------------- safe reading
class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_malicious_pickle_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"conv1.weight": torch.zeros(1), "boom": _Exploit(str(marker))}
    if container == "torch-zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_state_dict(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(glocal.create_model("resnet50", **SMALL), path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".npz"])
def test_corrupt_and_truncated_files_raise_clear_errors(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    tensors = {"a": torch.randn(64, 64), "b": torch.randn(3)}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(good))
    elif suffix == ".pth":
        torch.save(tensors, good)
    else:
        np.savez(good, **{k: v.numpy() for k, v in tensors.items()})
    assert read_state_dict(good).keys() == tensors.keys()
    data = good.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    for bad in (truncated, garbage):
        with pytest.raises(CheckpointError, match=bad.name) as err:
            read_state_dict(bad)
        assert suffix.strip(".") in str(err.value).lower() or "pytorch" in str(err.value).lower()


def test_npz_object_arrays_and_unknown_suffix_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickle"):
        read_state_dict(path)
    other = tmp_path / "w.h5"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="suffix"):
        read_state_dict(other)
    assert not zipfile.is_zipfile(other)


def test_training_arguments_and_numpy_metrics_are_admitted_but_nothing_else(tmp_path):
    import argparse

    sd = {"a": torch.zeros(2)}
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1), "metric": np.float64(81.5)}, tmp_path / "t.pth")
    assert same(read_state_dict(tmp_path / "t.pth"), sd)  # what timm's CheckpointSaver writes (VOLO, T2T-ViT)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": sd, "args": argparse.Namespace(x=_Exploit(str(marker)))}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(tmp_path / "mixed.pth")
    assert not marker.exists()


def test_nesting_and_module_prefix_are_unwrapped(tmp_path):
    sd = {"a": torch.zeros(1)}
    ema = {"a": torch.ones(1)}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "deit.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "state_dict_ema": ema}, tmp_path / "t2t.pth")
    assert same(read_state_dict(tmp_path / "deit.pth"), sd)
    assert same(read_state_dict(tmp_path / "t2t.pth"), sd)
    assert same(read_state_dict(tmp_path / "t2t.pth", ema=True), ema)


# --------------------------------------------------------------------------------------------- adaptation, strictness
def test_other_num_classes_reinitialises_the_classifier_and_says_so(caplog):
    source = perturbed("resnet50", **SMALL)
    model = glocal.create_model("resnet50", num_classes=10, **SMALL)
    fc_before = model.fc.weight.clone()
    with caplog.at_level(logging.WARNING, logger="glocal"):
        result = load_state_dict(model, source.state_dict())
    assert result.reinitialised == ["fc"] and "re-initialised" in caplog.text
    assert torch.equal(model.fc.weight, fc_before) and torch.equal(model.conv1.weight, source.conv1.weight)
    headless = glocal.create_model("resnet50", num_classes=0, **SMALL)
    assert load_state_dict(headless, source.state_dict()).reinitialised == []


@pytest.mark.parametrize("in_chans", [1, 2, 5])
def test_first_conv_adapts_to_in_chans(in_chans, caplog):
    source = perturbed("resnet50", **SMALL)
    model = glocal.create_model("resnet50", in_chans=in_chans, **SMALL)
    with caplog.at_level(logging.INFO, logger="glocal"):
        result = load_state_dict(model, source.state_dict())
    w = source.conv1.weight
    if in_chans == 1:
        expected = w.sum(1, keepdim=True)
        assert "summed" in result.adapted[0]
    else:
        expected = w.repeat(1, 2, 1, 1)[:, :in_chans] * (3 / in_chans)
        assert f"3/{in_chans}" in result.adapted[0]
    torch.testing.assert_close(model.conv1.weight, expected)
    assert "adapted the first layer" in caplog.text
    if in_chans == 1:  # a grey image through the summed filters equals the RGB model on the repeated image
        x = torch.rand(1, 1, 64, 64)
        torch.testing.assert_close(model.eval()(x), source(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_missing_unexpected_and_shape_mismatches_are_listed_side_by_side():
    model = glocal.create_model("resnet50", **SMALL)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    del sd["layer2.0.conv1.weight"]
    sd["layer9.extra.weight"] = torch.zeros(1)
    sd["layer1.0.bn1.weight"] = torch.zeros(5)
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict(model, sd, layout="glocal")
    msg = str(err.value)
    assert "1 missing, 1 unexpected, 1 shape mismatches" in msg
    line = next(line for line in msg.splitlines() if "layer2.0.conv1.weight" in line)
    assert "| layer9.extra.weight" in line
    assert "layer1.0.bn1.weight: (5,) vs (16,)" in msg


def test_torchvision_weights_do_not_silently_fill_a_gc_model():
    model = glocal.create_model("gcresnet50", **SMALL)
    with pytest.raises(CheckpointMismatchError, match="context.attn_pool.weight"):
        load_state_dict(model, make_state_dict(tv_resnet_keys(*S)))


def test_unknown_layout_names_the_layouts_tried():
    model = glocal.create_model("resnet50", **SMALL)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(model, {"foo.bar": torch.zeros(1)})
    for name in ("glocal", "timm-legacy-seresnet", "senet-caffe", "caffe2", "openmmlab"):
        assert name in str(err.value)
    with pytest.raises(CheckpointError, match="ambiguous"):
        load_state_dict(model, {"conv2_1_1x1_reduce.0": torch.zeros(1), "res2_0_branch2a_w": torch.zeros(1)})


def test_keymap_templates_with_offsets_invert():
    km = KeyMap([("conv{s+1}_{b+1}_3x3.{*}", "layer{s}.{b}.conv2.{*}"), ("{*}", "{*}")])
    assert km.to_ours("conv2_1_3x3.0") == "layer1.0.conv2.0"
    assert km.to_theirs("layer4.2.conv2.weight") == "conv5_3_3x3.weight"
    assert km.to_ours("other.key") == "other.key"
    with pytest.raises(CheckpointError, match="both map"):
        km.rename_to_ours({"conv2_1_3x3.w": torch.zeros(1), "layer1.0.conv2.w": torch.zeros(1)})


# --------------------------------------------------------------------------------------------- ResNet family layouts
FULL_SIZE = {
    # (model, layout): the official key list of the full-size model (mmdet's GCNet detector without heads)
    ("resnet50", "glocal"): lambda: tv_resnet_keys((3, 4, 6, 3)),
    ("resnet101", "glocal"): lambda: tv_resnet_keys((3, 4, 23, 3)),
    ("seresnet50", "timm-legacy-seresnet"): lambda: legacy_seresnet_keys((3, 4, 6, 3)),
    ("seresnet101", "timm-legacy-seresnet"): lambda: legacy_seresnet_keys((3, 4, 23, 3)),
    ("seresnet50", "senet-caffe"): lambda: senet_caffe_keys((3, 4, 6, 3)),
    ("seresnet101", "senet-caffe"): lambda: senet_caffe_keys((3, 4, 23, 3)),
    ("gcresnet50", "openmmlab"): lambda: mmdet_gc_keys((3, 4, 6, 3)),
    ("gcresnet101", "openmmlab"): lambda: mmdet_gc_keys((3, 4, 23, 3)),
    # on the meta device the NL BatchNorm's values are unknown, so it is exported as mmcv's conv_out.bn
    ("nlresnet50", "openmmlab"): lambda: mmcv_nl_keys((3, 4, 6, 3), "layer3.4", norm=True),
    ("nlresnet50", "caffe2"): lambda: caffe2_nl_keys((3, 4, 6, 3), {4: [4]}),
}


@pytest.mark.parametrize("name,layout", sorted(FULL_SIZE))
def test_full_size_export_matches_the_official_key_list(name, layout):
    with torch.device("meta"):
        model = glocal.create_model(name)
    exported = {k: tuple(v.shape) for k, v in export_state_dict(model, layout).items()}
    official = FULL_SIZE[name, layout]()
    official = {k: (v[:4] if k.endswith("_w") and len(v) == 5 else v) for k, v in official.items()}  # 2-D kernels
    official = {k: v for k, v in official.items() if not k.startswith(("neck.", "rpn_head.")) and "momentum" not in k}
    if layout == "openmmlab" and name.startswith("gc"):
        exported = {k: v for k, v in exported.items() if not k.startswith("head.")}
    assert {k: v for k, v in exported.items() if not k.endswith("num_batches_tracked")} == {
        k: v for k, v in official.items() if not k.endswith("num_batches_tracked")
    }


def test_torchvision_weights_load_one_to_one():
    sd = make_state_dict(tv_resnet_keys(*S))
    model = glocal.create_model("resnet50", **SMALL)
    assert load_state_dict(model, sd).layout == "glocal"
    assert same(model.state_dict(), sd)


OFFICIAL = {
    # layout: (model name, overrides, official keys, exact round trip)
    "timm-legacy-seresnet": ("seresnet50", SMALL, lambda: legacy_seresnet_keys(*S), True),
    "senet-caffe": ("seresnet50", SMALL, lambda: senet_caffe_keys(*S), False),
    "openmmlab-gc": ("gcresnet50", SMALL, lambda: mmdet_gc_keys(*S), True),
    "openmmlab-nl": ("nlresnet50", SMALL, lambda: mmcv_nl_keys(SMALL["depths"], "layer3.0", norm=False, **SW), True),
    "openmmlab-nl-bn": ("nlresnet50", SMALL, lambda: mmcv_nl_keys(SMALL["depths"], "layer3.0", norm=True, **SW), True),
    "openmmlab-nl-sub": (
        "nlresnet50",
        {**SMALL, "nl_subsample": True},
        lambda: mmcv_nl_keys(SMALL["depths"], "layer3.0", norm=True, sub_sample=True, **SW),
        True,
    ),
    "caffe2": ("nlresnet50", SMALL, lambda: caffe2_nl_keys(SMALL["depths"], {4: [0]}, **SW), True),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL))
def test_official_layout_maps_onto_every_parameter_and_back(case):
    name, overrides, keys_fn, exact = OFFICIAL[case]
    layout = case.split("-")[0] if case.startswith("openmmlab") else case
    official = make_state_dict(keys_fn())
    model = glocal.create_model(name, **overrides)
    result = load_state_dict(model, official)  # strict: every model tensor is filled, nothing is left over
    assert result.layout == layout and result.reinitialised == ([] if case != "openmmlab-gc" else ["fc"])
    exported = export_state_dict(model, layout)
    expected = {k: v for k, v in official.items() if not k.startswith(("neck.", "rpn_head.")) and "momentum" not in k}
    if case == "caffe2":  # 2-D kernels are exported 2-D
        expected = {k: (v.squeeze(2) if v.ndim == 5 else v) for k, v in expected.items()}
    if case == "senet-caffe":  # Caffe's BN scale factor is exported as 1 with the statistics divided by it
        expected = {k: (v / 2 if k.endswith(("bn.0", "bn.1")) else v) for k, v in expected.items()}
        expected = {k: (torch.ones(1) if k.endswith("bn.2") else v) for k, v in expected.items()}
    if case == "openmmlab-gc":
        expected = {k: v for k, v in expected.items() if not k.startswith("fc.")}
        exported = {k: v for k, v in exported.items() if not k.startswith("head.fc.")}
    expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    exported = {k: v for k, v in exported.items() if not k.endswith("num_batches_tracked")}
    assert same(exported, expected) if exact else close(exported, expected)

    # and ours -> official -> ours
    ours = perturbed(name, **overrides)
    back = glocal.create_model(name, **overrides).eval()
    load_state_dict(back, export_state_dict(ours, layout))
    skip = ("fc.",) if case == "openmmlab-gc" else ()  # mmdet backbones have no classifier
    a = {k: v for k, v in ours.state_dict().items() if not k.startswith(skip)}
    b = {k: v for k, v in back.state_dict().items() if not k.startswith(skip)}
    if case == "senet-caffe":  # the input conversion scales the first conv: float arithmetic
        assert close(a, b)
    elif case.startswith("openmmlab-nl"):  # a trained BN is exported as mmcv's conv_out.bn, the conv's bias folded in
        x = torch.rand(1, 3, 64, 64)
        torch.testing.assert_close(back(x), ours(x), rtol=1e-4, atol=1e-4)
    else:
        assert same(a, b)


def test_legacy_seresnet_values_land_in_place():
    official = make_state_dict(legacy_seresnet_keys(*S))
    model = glocal.create_model("seresnet50", **SMALL)
    load_state_dict(model, official)
    assert torch.equal(model.conv1.weight, official["layer0.conv1.weight"])
    assert torch.equal(model.layer4[0].context.transform[3].bias, official["layer4.0.se_module.fc2.bias"])
    assert torch.equal(model.fc.weight, official["last_linear.weight"])


def test_mmcv_nl_without_norm_gets_an_identity_batchnorm():
    model = glocal.create_model("nlresnet50", **SMALL).eval()
    official = make_state_dict(mmcv_nl_keys(SMALL["depths"], "layer3.0", norm=False, **SW))
    load_state_dict(model, official)
    block = model.layer3[0].context
    x = torch.randn(2, 256, 3, 3)
    torch.testing.assert_close(block.norm(x), x)
    assert torch.equal(block.out.bias, official["backbone.layer3.0.nonlocal_block.conv_out.conv.bias"])


def test_mmcv_subsample_mismatch_is_explained():
    model = glocal.create_model("nlresnet50", **SMALL)
    official = make_state_dict(mmcv_nl_keys(SMALL["depths"], "layer3.0", norm=False, sub_sample=True, **SW))
    with pytest.raises(CheckpointError, match="nl_subsample=True"):
        load_state_dict(model, official)


def test_caffe2_inflated_video_kernels_are_refused():
    keys = caffe2_nl_keys(SMALL["depths"], {4: [0]}, **SW)
    keys["res2_0_branch2a_w"] = (64, 64, 3, 1, 1)
    with pytest.raises(CheckpointError, match="time steps"):
        load_state_dict(glocal.create_model("nlresnet50", **SMALL), make_state_dict(keys))


def test_caffe2_blob_pickle_loads_without_unpickling_code(tmp_path):
    official = make_state_dict(caffe2_nl_keys(SMALL["depths"], {4: [0]}, **SW))
    path = tmp_path / "i3d_nonlocal_c2d.pkl"
    path.write_bytes(pickle.dumps({"blobs": {k: v.numpy() for k, v in official.items()}}, protocol=2))
    model = glocal.create_model("nlresnet50", **SMALL)
    assert load_checkpoint(model, path).layout == "caffe2"
    assert torch.equal(model.layer3[0].context.theta.weight, official["nonlocal_conv4_0_theta_w"].squeeze(2))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"blobs": {"x": _Exploit(str(marker))}}, protocol=2))
    with pytest.raises(CheckpointError, match="only hold numpy arrays"):
        read_state_dict(evil)
    assert not marker.exists()


class _CodecCall:
    """Pickles as ``_codecs.encode(text, encoding)``: a codec other than latin-1 would run arbitrary transforms."""

    def __init__(self, text, encoding):
        self.args = (text, encoding)

    def __reduce__(self):
        return codecs.encode, self.args


@pytest.mark.parametrize("args", [("eJwDAAAAAAE=", "base64"), ("x", "rot13"), (b"x", "latin1")])
def test_blob_pickle_admits_codecs_encode_only_as_protocol_2_bytes(tmp_path, args):
    arrays = {"w": np.arange(6, dtype=np.float32), "raw": b"\x00\xff"}
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({"blobs": arrays}, protocol=2))
    assert torch.equal(read_tensors(good)["blobs"]["w"], torch.arange(6, dtype=torch.float32))
    assert read_tensors(good)["blobs"]["raw"] == b"\x00\xff"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"blobs": {"x": _CodecCall(*args)}}, protocol=2))
    with pytest.raises(CheckpointError, match="_codecs.encode only as pickle writes bytes"):
        read_tensors(bad)


def test_senet_caffe_first_conv_takes_glocal_inputs():
    """conv1 + bn1 of the converted model on ImageNet-normalised RGB equals Caffe's on BGR 0..255 minus the mean,
    away from the zero-padded border."""
    official = make_state_dict(senet_caffe_keys(*S))
    model = glocal.create_model("seresnet50", **SMALL).eval()
    load_state_dict(model, official)
    rgb = torch.rand(1, 3, 32, 32)
    mean, std = torch.tensor(model.data_config.mean), torch.tensor(model.data_config.std)
    ours = model.bn1(model.conv1((rgb - mean[:, None, None]) / std[:, None, None]))
    bgr = rgb.flip(1) * 255 - torch.tensor([104.0, 117.0, 123.0])[:, None, None]
    factor = official["conv1/7x7_s2/bn.2"]
    caffe = F.batch_norm(
        F.conv2d(bgr, official["conv1/7x7_s2.0"], stride=2, padding=3),
        official["conv1/7x7_s2/bn.0"] / factor,
        official["conv1/7x7_s2/bn.1"] / factor,
        official["conv1/7x7_s2/bn/scale.0"],
        official["conv1/7x7_s2/bn/scale.1"],
        eps=1e-5,
    )
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], caffe[..., 2:-2, 2:-2], rtol=1e-4, atol=1e-3)


def test_cli_convert_writes_glocal_format(tmp_path, monkeypatch):
    from functools import partial

    from glocal.cli import convert

    monkeypatch.setattr(convert, "create_model", partial(glocal.create_model, **SMALL))
    official = make_state_dict(legacy_seresnet_keys(*S))
    official["last_linear.weight"], official["last_linear.bias"] = torch.randn(5, 512), torch.randn(5)
    torch.save({"state_dict": official}, tmp_path / "se_resnet50.pth")
    src, out = str(tmp_path / "se_resnet50.pth"), str(tmp_path / "out")
    assert cli_main(["convert", "--checkpoint", src, "--output", out, "--model", "seresnet50"]) == 0
    model = glocal.create_model("seresnet50", checkpoint=tmp_path / "out")  # 5 classes and SMALL from config.json
    assert model.num_classes == 5 and torch.equal(model.fc.weight, official["last_linear.weight"])
    missing = str(tmp_path / "missing.pth")
    assert (
        cli_main(["convert", "--checkpoint", missing, "--output", str(tmp_path / "o2"), "--model", "seresnet50"]) == 2
    )
