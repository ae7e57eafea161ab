"""Datasets (bundled digits, ImageFolder with bad files) and the batched tensor transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from glocal.data import (
    ImageFolder,
    MixConfig,
    crop_params,
    load_digits_split,
    mix_batch,
    normalize,
    one_hot,
    open_dataset,
    resized_crop,
)


def write_image_tree(root, classes=("a", "b"), per_class=4, size=(20, 16), seed=0):
    """``root/<class>/<i>.png`` of random RGB images; returns ``root``."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_digits_split_is_fixed_disjoint_and_stratified():
    train, val = load_digits_split("train"), load_digits_split("val")
    assert len(train) + len(val) == 1797
    assert train.images.shape[1:] == (3, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255
    assert val.labels.bincount().min() >= 35  # about 20% of every class (174-183 images each)
    again = load_digits_split("val")
    assert torch.equal(again.images, val.images) and torch.equal(again.labels, val.labels)
    train_rows = {bytes(x.numpy()) for x in train.images[:, 0]}
    overlap = sum(bytes(x.numpy()) in train_rows for x in val.images[:, 0])
    assert overlap < 10  # the digits contain a few pixel-identical duplicates, never the same sample twice


def test_image_folder_reads_resizes_and_skips_bad_files(tmp_path, caplog):
    root = write_image_tree(tmp_path / "train")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    dataset = ImageFolder(root, load_size=12)
    assert dataset.classes == ("a", "b")
    assert len(dataset) == 8 and len(dataset.skipped) == 2
    assert "skipping" in caplog.text
    image, label = dataset[5]
    assert image.shape == (3, 12, 12) and image.dtype == torch.uint8 and label == 1


def test_image_folder_bad_trees_say_what_is_wrong(tmp_path):
    write_image_tree(tmp_path / "data" / "train")
    (tmp_path / "data" / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*no readable images"):
        open_dataset(tmp_path / "data", "train", 8)
    with pytest.raises(FileNotFoundError, match="no val/ folder"):
        open_dataset(tmp_path / "data", "val", 8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(tmp_path / "missing", "train", 8)
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolder(tmp_path / "flat", 8)
    write_image_tree(tmp_path / "val", classes=("a", "c"))
    with pytest.raises(ValueError, match="differ from the training classes"):
        ImageFolder(tmp_path / "val", 8, classes=("a", "b"))


def test_full_crop_without_flip_is_a_plain_resize():
    images = torch.rand(3, 3, 8, 8) * 255
    theta = crop_params(3, (8, 8), torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    torch.testing.assert_close(resized_crop(images, theta, (8, 8)), images, atol=1e-3, rtol=0)
    expected = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized_crop(images, theta, (16, 16)), expected, atol=1e-3, rtol=0)
    flipped = crop_params(3, (8, 8), torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)
    torch.testing.assert_close(resized_crop(images, flipped, (8, 8)), images.flip(-1), atol=1e-3, rtol=0)


def test_crops_are_a_function_of_the_seed_and_stay_inside():
    def draw(seed):
        return crop_params(64, (32, 48), torch.Generator().manual_seed(seed))

    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    theta = draw(3)
    width, height = theta[:, 0, 0].abs(), theta[:, 1, 1]
    assert (width <= 1).all() and (height <= 1).all()
    assert (theta[:, 0, 2].abs() <= 1 - width + 1e-6).all() and (theta[:, 1, 2].abs() <= 1 - height + 1e-6).all()


def test_normalize():
    x = normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.testing.assert_close(x, torch.full((1, 3, 2, 2), 2.0))


def test_label_smoothing_targets():
    t = one_hot(torch.tensor([0, 2]), 4, smoothing=0.1)
    torch.testing.assert_close(t.sum(1), torch.ones(2))
    assert t[0, 0] == pytest.approx(0.925) and t[0, 1] == pytest.approx(0.025)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixing_keeps_targets_consistent_with_images(mode):
    images = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])  # (2, 1, 8, 8): sample 0 black, 1 white
    targets = one_hot(torch.tensor([0, 1]), 2)
    cfg = MixConfig(mixup_alpha=1.0 if mode == "mixup" else 0.0, cutmix_alpha=1.0 if mode == "cutmix" else 0.0)
    mixed, soft = mix_batch(images, targets, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(soft.sum(1), torch.ones(2))
    # The share of sample 1 in mixed image 0 is its mean brightness: the target says the same.
    assert mixed[0].mean().item() == pytest.approx(soft[0, 1].item(), abs=1e-6)
    again, _ = mix_batch(images, targets, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(mixed, again)
    off, same = mix_batch(images, targets, MixConfig(), torch.Generator().manual_seed(0))
    assert off is images and same is targets
