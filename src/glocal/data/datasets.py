"""Image classification datasets: an ImageFolder tree read with PIL, and the bundled handwritten digits.

Both return ``(image, label)`` with ``image`` a (C, H, W) uint8 tensor. Every image of a dataset has the same size,
so batches stack: for training, ImageFolder images are resized on load (shorter side to ``load_size``, then
centre-cropped) and all randomness (crops, flips, mixing) happens later, batched, on tensors, with explicit
generators, so data loading workers hold no random state and a run is a deterministic function of its seed. For
evaluation a dataset is opened with ``transform=create_transform(data_config, normalize=False)``: every image is
then exactly the eval view (:class:`glocal.data.transforms.EvalTransform`), the same one ``glocal predict`` sees.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from glocal.data.transforms import EvalTransform

__all__ = [
    "DIGITS_CLASSES",
    "ImageDataset",
    "ImageFolder",
    "TensorImages",
    "load_digits_split",
    "load_image",
    "open_dataset",
    "read_rgb",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DIGITS_CLASSES = tuple(str(d) for d in range(10))
# Held out for validation from each digit class, with a fixed permutation: the split never changes between runs.
DIGITS_VAL_FRACTION = 0.2


class ImageDataset(torch.utils.data.Dataset):
    """What the engine needs from a dataset besides ``__len__``/``__getitem__``: class names and integer labels."""

    classes: tuple[str, ...]
    labels: torch.Tensor  # (N,) int64
    skipped: list[str]


@dataclass
class TensorImages(ImageDataset):
    """Images already in memory: (N, C, H, W) uint8 and (N,) int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def load_digits_split(split: str) -> TensorImages:
    """scikit-learn's handwritten digits (1,797 8x8 images, 16 grey levels, 10 classes) as RGB uint8.

    ``split`` is 'train' or 'val'; 20% of every class is held out with a fixed permutation (seed 0).
    The images stay 8x8: the transforms resize them to the model's input size.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "val"):
        raise ValueError(f"the digits dataset has splits 'train' and 'val', got {split!r}")
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
    targets = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    val_index = []
    for label in range(10):
        members = np.flatnonzero(targets == label)
        n_val = round(len(members) * DIGITS_VAL_FRACTION)
        val_index.extend(rng.permutation(members)[:n_val].tolist())
    is_val = np.zeros(len(targets), dtype=bool)
    is_val[val_index] = True
    keep = is_val if split == "val" else ~is_val
    x = torch.from_numpy(images[keep])[:, None].expand(-1, 3, -1, -1).contiguous()  # (N, 3, 8, 8)
    return TensorImages(images=x, labels=torch.from_numpy(targets[keep]), classes=DIGITS_CLASSES)


class ImageFolder(ImageDataset):
    """``root/<class>/<image>`` read with PIL; class folders sorted by name give the labels.

    Every file is checked when the tree is scanned: one PIL cannot read (corrupt, or not an image) is logged and
    skipped, and listed in ``skipped``. An empty class folder or a tree without class folders raises ``ValueError``.
    Images are converted to RGB, then given by ``transform`` (PIL image -> (3, H, W) uint8 tensor; the eval view
    ``create_transform(cfg, normalize=False)``) or, without one, their shorter side resized to ``load_size`` with
    ``interpolation`` and centre-cropped to a square (the training load).
    """

    def __init__(
        self,
        root: str | Path,
        load_size: int | None = None,
        classes: tuple[str, ...] | None = None,
        interpolation: str = "bilinear",
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
    ) -> None:
        if (load_size is None) == (transform is None):
            raise ValueError("ImageFolder takes a load_size (the training load) or a transform (an eval view)")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist")
        found = tuple(sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")))
        if not found:
            raise ValueError(f"{str(self.root)!r} has no class folders (expected {self.root}/<class>/<image>)")
        if classes is not None and found != tuple(classes):
            raise ValueError(
                f"class folders of {str(self.root)!r} differ from the training classes: "
                f"missing {sorted(set(classes) - set(found))}, extra {sorted(set(found) - set(classes))}"
            )
        self.classes = found
        self.load_size = load_size
        self.interpolation = interpolation
        self.transform = transform
        self.samples: list[tuple[Path, int]] = []
        self.skipped = []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in (self.root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
            kept = 0
            for path in files:
                if self._readable(path):
                    self.samples.append((path, label))
                    kept += 1
                else:
                    self.skipped.append(str(path))
            if kept == 0:
                raise ValueError(f"class folder {str(self.root / name)!r} has no readable images")
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def _readable(self, path: Path) -> bool:
        """Decode the whole file (PIL's ``verify`` passes truncated JPEGs, which would then fail mid-epoch)."""
        try:
            read_rgb(path)
        except ValueError as err:
            logger.warning("skipping %s", err)
            return False
        return True

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        if self.transform is not None:
            return self.transform(read_rgb(path)), label
        return load_image(path, self.load_size, self.interpolation), label


# PIL modes of 16- and 32-bit greyscale images (16-bit PNGs), which ``convert("RGB")`` would clip at 255.
_WIDE_GREY = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def read_rgb(path: str | Path) -> Image.Image:
    """An image file decoded in full as 8-bit RGB; ``ValueError`` naming the file when it cannot be read (not an
    image, truncated, corrupt, or over PIL's decompression-bomb limit). 16-bit greyscale is scaled, not clipped."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _WIDE_GREY:
                grey = np.asarray(image, dtype=np.float64) * (255 / _WIDE_GREY[image.mode])
                return Image.fromarray(np.clip(grey.round(), 0, 255).astype(np.uint8)).convert("RGB")
            return image.convert("RGB")
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"{path} is not read: its size exceeds PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels "
            f"({err}); raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path} is not a readable image (corrupt, truncated or not an image: {err})") from err


def load_image(path: str | Path, load_size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """One image file as a (3, load_size, load_size) uint8 tensor: RGB, shorter side resized with
    ``interpolation`` (the model's ``data_config.interpolation``), centre-cropped: the eval view's resize and crop
    at crop_pct 1.0 (:class:`~glocal.data.transforms.EvalTransform`; no normalisation, so mean and std are unused)."""
    square = EvalTransform((load_size, load_size), 1.0, interpolation, (0.0,) * 3, (1.0,) * 3, normalize=False)
    return square(read_rgb(path))


def open_dataset(
    data_dir: str | Path | None,
    split: str,
    load_size: int | None = None,
    classes=None,
    interpolation: str = "bilinear",
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
) -> ImageDataset:
    """The ``split`` ('train' | 'val') of an ImageFolder tree ``data_dir/{train,val}``, or of the bundled digits.

    With ``transform`` (an eval view, PIL image -> (3, H, W) uint8) every image is given by it, the digits' 8x8
    images too (as PIL images, as their PNG files would be read); without one the digits stay 8x8 and an ImageFolder
    is loaded at ``load_size`` (see :class:`ImageFolder`)."""
    if data_dir is None:
        digits = load_digits_split(split)
        if transform is None:
            return digits
        views = [transform(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in digits.images]
        return dataclasses.replace(digits, images=torch.stack(views))
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {str(root)!r} does not exist")
    if not (root / split).is_dir():
        raise FileNotFoundError(
            f"data directory {str(root)!r} has no {split}/ folder (expected {root}/{split}/<class>/)"
        )
    return ImageFolder(root / split, load_size, classes=classes, interpolation=interpolation, transform=transform)
