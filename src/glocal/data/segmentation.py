"""Semantic-segmentation data: ADE20K / VOC folder layouts, joint image+mask augmentation, a synthetic set.

Layouts (``SegmentationDataset(root, split)``):

* ADE20K: ``images/{training,validation}/*.jpg|png`` and ``annotations/{training,validation}/*.png`` (same stems);
  ``train``/``val`` folder names work too;
* VOC: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` and the stems in ``ImageSets/Segmentation/{train,val}.txt``.

Labels are PNG maps of class indices, 255 = ignore. Class names come from ``classes.txt`` (one per line) in the
root. Palette-mode label PNGs (VOC's) give the dataset its ``palette``, the colour of each class, which a trained
segmenter keeps for its overlays. ``reduce_zero_label`` (ADE20K's convention) maps 0 ("other") to 255 and k to k - 1.

Training augmentation follows mmseg's ADE20K pipeline (``configs/_base_/datasets/ade20k.py``): ``RandomResize``
(scale (2048, 512) times a ratio in (0.5, 2.0), aspect kept), ``RandomCrop`` (512x512, re-drawn up to 10 times
while one class covers more than ``cat_max_ratio`` = 0.75 of it), flip 0.5, ``PhotoMetricDistortion`` (brightness
+-32, contrast and saturation x0.5-1.5, hue shifted by ``randint(-18, 18)`` OpenCV hue units, i.e. -36 to +34 degrees
in steps of 2 (uint8 HSV counts hue 0-179), each with probability 0.5) and padding to the crop size (image 0, label
255). Hue is rotated in YIQ space and saturation blended with the grey image rather than scaled in HSV (deviations of
a few grey levels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "SegAugment", "SegmentationDataset", "make_synthetic_segmentation"]

IGNORE_INDEX = 255
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_SPLIT_NAMES = {"train": ("training", "train"), "val": ("validation", "val")}


def _read_classes(root: Path) -> tuple[str, ...]:
    path = root / "classes.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{str(root)!r} has no classes.txt (one class name per line, in label order)")
    classes = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not classes:
        raise ValueError(f"{str(path)!r} lists no classes")
    return classes


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    if split not in _SPLIT_NAMES:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if (root / "JPEGImages").is_dir():
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"VOC layout without {str(listing)!r}")
        stems = [s.strip() for s in listing.read_text().splitlines() if s.strip()]
        return [(root / "JPEGImages" / f"{s}.jpg", root / "SegmentationClass" / f"{s}.png") for s in stems]
    for name in _SPLIT_NAMES[split]:
        images, labels = root / "images" / name, root / "annotations" / name
        if images.is_dir() and labels.is_dir():
            files = sorted(p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            return [(p, labels / f"{p.stem}.png") for p in files]
    raise FileNotFoundError(
        f"{str(root)!r} is neither an ADE20K layout (images/{_SPLIT_NAMES[split][0]}/ and "
        f"annotations/{_SPLIT_NAMES[split][0]}/) nor a VOC one (JPEGImages/, SegmentationClass/, ImageSets/)"
    )


class SegmentationDataset(torch.utils.data.Dataset):
    """Item ``i``: (uint8 image (3, H, W), int64 labels (H, W)) at the files' own size. ``palette``: the (r, g, b)
    of each class when the label PNGs are palette images, else None."""

    def __init__(self, root: str | Path, split: str = "train", *, reduce_zero_label: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"segmentation data folder {str(root)!r} does not exist")
        self.classes = _read_classes(self.root)
        self.pairs = _pairs(self.root, split)
        if not self.pairs:
            raise ValueError(f"{str(root)!r} has no {split} images")
        missing = [str(lab) for img, lab in self.pairs if not lab.is_file() or not img.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image/label file(s) missing, e.g. {missing[0]!r}")
        self.reduce_zero_label = reduce_zero_label
        self.palette = _label_palette(self.pairs[0][1], len(self.classes), reduce_zero_label)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image_path, label_path = self.pairs[index]
        with Image.open(image_path) as im:
            image = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        with Image.open(label_path) as im:
            label = torch.from_numpy(np.asarray(im).astype(np.int64))
        if label.ndim != 2 or label.shape != image.shape[1:]:
            raise ValueError(f"{str(label_path)!r} must be a single-channel map of the image's size {image.shape[1:]}")
        if self.reduce_zero_label:
            label = torch.where(label == 0, IGNORE_INDEX, label - 1)
            label[label == IGNORE_INDEX - 1] = IGNORE_INDEX
        return image, label


def _label_palette(path: Path, num_classes: int, reduce_zero_label: bool) -> tuple[tuple[int, int, int], ...] | None:
    """The colours of classes 0..K-1 in a palette-mode label PNG (after ``reduce_zero_label``'s shift), else None."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode != "P" or im.getpalette() is None:
            return None
        flat = im.getpalette()
    colours = [tuple(flat[i : i + 3]) for i in range(0, len(flat) - 2, 3)][int(reduce_zero_label) :]
    return tuple(colours[:num_classes]) if len(colours) >= num_classes else None


@dataclass(frozen=True)
class SegAugment:
    """Joint image+mask training augmentation (mmseg's ADE20K pipeline; see the module docstring)."""

    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 512)
    cat_max_ratio: float = 0.75
    flip: float = 0.5
    photometric: bool = True

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator):
        """uint8 (3, H, W), int64 (H, W) -> float (3, h, w) in 0..255 and int64 (h, w) at ``crop_size``."""
        ratio = rng.uniform(*self.ratio_range)
        H, W = image.shape[-2:]
        long_edge, short_edge = max(self.scale) * ratio, min(self.scale) * ratio
        factor = min(long_edge / max(H, W), short_edge / min(H, W))
        size = (max(1, round(H * factor)), max(1, round(W * factor)))
        x = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        y = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        x, y = self._crop(x, y, rng)
        if rng.random() < self.flip:
            x, y = x.flip(-1), y.flip(-1)
        if self.photometric:
            x = photometric_distortion(x, rng)
        ch, cw = self.crop_size
        pad = (0, cw - x.shape[-1], 0, ch - x.shape[-2])
        return F.pad(x, pad, value=0.0), F.pad(y, pad, value=IGNORE_INDEX)

    def _crop(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        ch, cw = min(self.crop_size[0], x.shape[-2]), min(self.crop_size[1], x.shape[-1])
        for _ in range(10):
            top = int(rng.integers(0, x.shape[-2] - ch + 1))
            left = int(rng.integers(0, x.shape[-1] - cw + 1))
            crop = y[top : top + ch, left : left + cw]
            counts = torch.bincount(crop[crop != IGNORE_INDEX].flatten())
            counts = counts[counts > 0]
            if self.cat_max_ratio >= 1.0 or (len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio):
                break
        return x[:, top : top + ch, left : left + cw], crop


def photometric_distortion(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmseg's ``PhotoMetricDistortion`` on a float (3, H, W) image in 0..255 (hue rotated in YIQ space)."""
    if rng.random() < 0.5:
        x = x + rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast_first and contrast is not None:
        x = x * contrast
    x = x.clamp(0, 255)
    if rng.random() < 0.5:  # saturation
        grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = (grey + (x - grey) * rng.uniform(0.5, 1.5)).clamp(0, 255)
    if rng.random() < 0.5:  # hue
        angle = math.radians(2 * int(rng.integers(-18, 18)))  # mmseg: randint(-18, 18) units of 2 degrees
        rgb_to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        c, s = math.cos(angle), math.sin(angle)
        rotate = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
        matrix = torch.linalg.inv(rgb_to_yiq) @ rotate @ rgb_to_yiq
        x = torch.einsum("ij,jhw->ihw", matrix, x).clamp(0, 255)  # (3, H, W)
    if not contrast_first and contrast is not None:
        x = (x * contrast).clamp(0, 255)
    return x


def make_synthetic_segmentation(
    root: str | Path,
    *,
    train: int = 48,
    val: int = 16,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
) -> Path:
    """Write a small segmentation set in the ADE20K layout: circles, rectangles and triangles (classes 1-3) of
    class-specific hues on a striped, noisy background (class 0, "background"), a 2-pixel ignore band (255)
    around every shape; ``classes.txt`` lists the four classes. Returns ``root``."""
    from PIL import Image

    root = Path(root)
    classes = ("background", "circle", "rectangle", "triangle")
    rng = np.random.default_rng(seed)
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W]
    for split, count in (("training", train), ("validation", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            period, phase = rng.uniform(6, 14), rng.uniform(0, 2 * np.pi)
            stripes = 60 + 40 * np.sin((xx * rng.uniform(-1, 1) + yy) / period * 2 * np.pi + phase)
            image = np.stack([stripes, stripes * 0.8, stripes * 0.6], -1) + rng.normal(0, 12, (H, W, 3))
            label = np.zeros((H, W), dtype=np.uint8)
            for _ in range(int(rng.integers(2, 5))):
                kind = int(rng.integers(1, 4))
                cy, cx = rng.uniform(0.15, 0.85) * H, rng.uniform(0.15, 0.85) * W
                r = rng.uniform(0.1, 0.22) * min(H, W)
                if kind == 1:
                    dist = np.hypot(yy - cy, xx - cx) - r
                elif kind == 2:
                    dist = np.maximum(np.abs(yy - cy) - r * 0.7, np.abs(xx - cx) - r * 1.2)
                else:
                    dist = np.maximum(yy - (cy + r), np.abs(xx - cx) - (yy - (cy - r)) * 0.6)
                colour = np.array([[230, 60, 60], [60, 200, 70], [70, 90, 230]][kind - 1], dtype=np.float64)
                inside = dist < 0
                image[inside] = colour + rng.normal(0, 15, (int(inside.sum()), 3))
                label[np.abs(dist) < 1.0] = IGNORE_INDEX
                label[dist < -1.0] = kind
            stem = f"{split}_{n:04d}"
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / "images" / split / f"{stem}.png")
            Image.fromarray(label).save(root / "annotations" / split / f"{stem}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


if __name__ == "__main__":
    import sys

    print(make_synthetic_segmentation(sys.argv[1] if len(sys.argv) > 1 else "shapes"))
