"""glocal.dense: necks, heads, segmenters on every family, metrics, sliding inference, data, backbone options."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import glocal
from glocal.data.segmentation import IGNORE_INDEX, SegAugment, SegmentationDataset, make_synthetic_segmentation
from glocal.dense import (
    FPN,
    BackboneWithFPN,
    SimpleFeaturePyramid,
    confusion_matrix,
    create_segmenter,
    enable_grad_checkpointing,
    layer_decay_groups,
    metrics_from_confusion,
    slide_inference,
)
from tests.conftest import SMALL_OVERRIDES

FAMILY_REPRESENTATIVES = [
    "resnet50", "seresnet50", "gcresnet50", "nlresnet50", "snlresnet50", "botnet50", "twins_pcpvt_small",
    "twins_svt_small", "vit_small_patch16_224", "t2t_vit_7", "volo_d1_224",
]  # fmt: skip


def _tiny(name: str) -> dict:
    return {**SMALL_OVERRIDES.get(name, {}), **({"depths": (1, 1, 1, 1)} if "resnet" in name or "bot" in name else {})}


@pytest.mark.parametrize("head", ["semantic_fpn", "upernet"])
@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_segmenter_output_has_the_input_size(name, head):
    model = create_segmenter(name, head=head, num_classes=5, **_tiny(name)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 300, 460))
    assert out.shape == (1, 5, 300, 460)
    assert torch.isfinite(out).all()


def test_upernet_auxiliary_head_and_loss():
    model = create_segmenter("resnet50", head="upernet", num_classes=3, depths=(1, 1, 1, 1))
    logits = model.forward_train(torch.randn(2, 3, 64, 96))
    assert set(logits) == {"out", "aux"} and logits["aux"].shape == (2, 3, 64, 96)
    target = torch.randint(0, 3, (2, 64, 96))
    target[:, :8] = IGNORE_INDEX
    expected = nn.functional.cross_entropy(logits["out"], target, ignore_index=255)
    expected = expected + 0.4 * nn.functional.cross_entropy(logits["aux"], target, ignore_index=255)
    torch.testing.assert_close(model.loss(logits, target), expected)


def test_heads_keep_mmseg_channel_defaults():
    upernet = create_segmenter("twins_pcpvt_small", head="upernet", num_classes=150, depths=(1, 1, 1, 1))
    assert upernet.decode_head.conv_seg.in_channels == 512  # UPerHead channels=512
    assert upernet.aux_head.convs[0].in_channels == 320 and upernet.aux_head.conv_seg.in_channels == 256
    fpn = create_segmenter("twins_pcpvt_small", head="semantic_fpn", num_classes=150, depths=(1, 1, 1, 1))
    assert fpn.neck.out_channels == 256 and fpn.decode_head.conv_seg.in_channels == 128
    assert fpn.decode_head.dropout.p == 0.1


def test_fpn_extra_levels():
    feats = [torch.randn(1, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate((8, 16, 32, 64))]
    maxpool = FPN([8, 16, 32, 64], 16, extra_levels="maxpool")(feats)
    assert [m.shape[-1] for m in maxpool] == [64, 32, 16, 8, 4]
    conv = FPN([8, 16, 32, 64], 16, extra_levels="conv")(feats)
    assert [m.shape[-1] for m in conv] == [64, 32, 16, 8, 4, 2] and all(m.shape[1] == 16 for m in conv)


def test_simple_feature_pyramid_strides():
    maps = SimpleFeaturePyramid(32, in_stride=16, out_channels=8)(torch.randn(1, 32, 8, 12))
    assert [tuple(m.shape[-2:]) for m in maps] == [(32, 48), (16, 24), (8, 12), (4, 6)]


@pytest.mark.parametrize("name", ["resnet50", "vit_small_patch16_224"])
def test_backbone_with_fpn_interface(name):
    model = BackboneWithFPN(name, out_channels=64, **_tiny(name)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 192))
    assert isinstance(out, OrderedDict) and list(out) == ["0", "1", "2", "3", "pool"]
    assert model.out_channels == 64 and all(v.shape[1] == 64 for v in out.values())
    assert [v.shape[-1] for v in out.values()] == [48, 24, 12, 6, 3]


def test_metrics_equal_a_hand_computation():
    # rows: true class, columns: predicted. Class 2 never occurs in the ground truth (NaN, left out of the means).
    confusion = torch.tensor([[50, 10, 0], [5, 30, 5], [0, 0, 0]])
    m = metrics_from_confusion(confusion, ("a", "b", "c"))
    iou_a, iou_b = 50 / (60 + 55 - 50), 30 / (40 + 40 - 30)
    assert m.iou[0] == pytest.approx(iou_a * 100) and m.iou[1] == pytest.approx(iou_b * 100)
    assert np.isnan(m.iou[2]) and np.isnan(m.acc[2])
    assert m.miou == pytest.approx((iou_a + iou_b) / 2 * 100)
    assert m.macc == pytest.approx((50 / 60 + 30 / 40) / 2 * 100)
    assert m.aacc == pytest.approx(80 / 100 * 100) and m.pixels == 100


def test_confusion_matrix_skips_ignored_pixels():
    target = torch.tensor([[0, 1, 255], [2, 2, 1]])
    pred = torch.tensor([[0, 2, 1], [2, 0, 1]])
    expected = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 1]])
    assert torch.equal(confusion_matrix(pred, target, 3), expected)


def test_sliding_equals_whole_where_it_must():
    torch.manual_seed(0)
    pointwise = nn.Conv2d(3, 4, 1)  # each pixel's logits depend on that pixel only
    x = torch.randn(1, 3, 70, 101)
    torch.testing.assert_close(slide_inference(pointwise, x, (32, 48), (20, 30)), pointwise(x))
    model = create_segmenter("resnet50", head="semantic_fpn", num_classes=3, depths=(1, 1, 1, 1)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():  # one window covering the image is whole-image inference
        torch.testing.assert_close(slide_inference(model, x, (64, 96), (32, 32)), model(x))


def test_layer_decay_orders_learning_rates():
    model = create_segmenter("vit_small_patch16_224", head="semantic_fpn", num_classes=3, depth=4)
    groups = layer_decay_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    bb = model.pyramid.backbone
    assert lr_of[id(model.decode_head.conv_seg.weight)] == 1.0
    assert lr_of[id(bb.blocks[3].mlp.fc1.weight)] == 0.5
    assert lr_of[id(bb.blocks[0].mlp.fc1.weight)] == 0.5**4
    assert lr_of[id(bb.pos_embed)] == 0.5**5
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.ndim <= 1 for p in g["params"]))


def test_frozen_stages_and_frozen_bn():
    model = create_segmenter("resnet50", num_classes=3, depths=(1, 1, 1, 1), frozen_stages=1, frozen_bn=True)
    bb = model.pyramid.backbone
    assert not any(p.requires_grad for p in bb.layer1.parameters()) and not bb.conv1.weight.requires_grad
    assert bb.layer2[0].conv1.weight.requires_grad and not bb.layer2[0].bn1.weight.requires_grad
    model.train()
    assert not bb.layer3[0].bn1.training and model.decode_head.training
    before = bb.layer2[0].bn1.running_mean.clone()
    model.forward_train(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, bb.layer2[0].bn1.running_mean)
    with pytest.raises(ValueError, match="ResNet family"):
        create_segmenter("vit_small_patch16_224", num_classes=3, depth=4, frozen_stages=1)


@pytest.mark.parametrize("name", ["resnet50", "twins_svt_small"])
def test_grad_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    plain = create_segmenter(name, head="semantic_fpn", num_classes=3, **_tiny(name)).eval()
    ckpt = create_segmenter(name, head="semantic_fpn", num_classes=3, **_tiny(name)).eval()
    ckpt.load_state_dict(plain.state_dict())
    assert enable_grad_checkpointing(ckpt) > 0
    x = torch.randn(1, 3, 64, 64)
    plain(x).sum().backward()
    ckpt(x).sum().backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=n)


def test_dataset_layout_and_augmentation(tmp_path):
    root = make_synthetic_segmentation(tmp_path / "shapes", train=4, val=2, size=(48, 64))
    ds = SegmentationDataset(root, "train")
    assert ds.classes == ("background", "circle", "rectangle", "triangle") and len(ds) == 4
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64) and label.shape == (48, 64)
    assert set(label.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    aug = SegAugment(scale=(64, 48), ratio_range=(0.5, 0.5), crop_size=(40, 40))
    x, y = aug(image, label, np.random.default_rng(0))
    assert x.shape == (3, 40, 40) and y.shape == (40, 40)
    assert (y[24:] == IGNORE_INDEX).all()  # resized to 24x32, padded to the crop with the ignore index
    reduced = SegmentationDataset(root, "train", reduce_zero_label=True)[0][1]
    assert torch.equal(reduced == IGNORE_INDEX, (label == 0) | (label == IGNORE_INDEX))
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        SegmentationDataset(tmp_path, "train")
    (tmp_path / "classes.txt").write_text("a\n")
    with pytest.raises(FileNotFoundError, match="ADE20K layout"):
        SegmentationDataset(tmp_path, "train")


def test_create_segmenter_is_public():
    assert glocal.create_segmenter is create_segmenter
