"""Segmentation inference (whole image, sliding window) and metrics (mIoU, mAcc, aAcc), as mmseg computes them.

Metrics come from one (K, K) confusion matrix over labelled pixels (``confusion[t, p]``, ignore index excluded):
IoU_k = TP / (TP + FP + FN), Acc_k = TP / (TP + FN), aAcc = sum TP / labelled pixels; mIoU and mAcc average over
the classes present in the ground truth (mmseg's ``nanmean``: a class with no pixel and no prediction is NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "SegInference",
    "SegMetrics",
    "confusion_matrix",
    "metrics_from_confusion",
    "palette",
    "save_overlay",
    "slide_inference",
]


@dataclass(frozen=True)
class SegInference:
    """How a segmenter is evaluated (mmseg's ``test_pipeline`` and ``test_cfg``; the ADE20K defaults): the image
    resized to fit ``test_scale`` (long, short) with its aspect kept (None: its own size), then ``"whole"`` or
    ``"slide"`` inference with ``crop_size`` windows every ``slide_stride`` pixels. A trained segmenter carries its
    run's settings in its checkpoint."""

    test_scale: tuple[int, int] | None = (2048, 512)
    eval_mode: str = "whole"
    crop_size: tuple[int, int] = (512, 512)
    slide_stride: tuple[int, int] = (341, 341)

    def __post_init__(self) -> None:
        if self.eval_mode not in ("whole", "slide"):
            raise ValueError(f"eval_mode must be 'whole' or 'slide', got {self.eval_mode!r}")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """(…) predicted and true labels -> (K, K) int64 counts ``[true, predicted]`` over pixels not ``ignore_index``."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass
class SegMetrics:
    """Percentages; ``iou`` and ``acc`` per class (NaN where the class is absent from the ground truth)."""

    miou: float
    macc: float
    aacc: float
    iou: list[float]
    acc: list[float]
    classes: tuple[str, ...]
    pixels: int

    def summary(self) -> dict:
        return {"mIoU": self.miou, "mAcc": self.macc, "aAcc": self.aacc, "pixels": self.pixels}


def metrics_from_confusion(confusion: torch.Tensor, classes) -> SegMetrics:
    c = confusion.double()
    tp = c.diagonal()
    gt, predicted = c.sum(1), c.sum(0)
    union = gt + predicted - tp
    iou = torch.where(gt > 0, tp / union.clamp(min=1), torch.nan) * 100
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.nan) * 100
    total = float(gt.sum())
    return SegMetrics(
        miou=float(np.nanmean(iou.numpy())) if (gt > 0).any() else float("nan"),
        macc=float(np.nanmean(acc.numpy())) if (gt > 0).any() else float("nan"),
        aacc=float(tp.sum() / total * 100) if total else float("nan"),
        iou=iou.tolist(),
        acc=acc.tolist(),
        classes=tuple(classes),
        pixels=int(total),
    )


@torch.no_grad()
def slide_inference(model: nn.Module, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """mmseg's ``slide`` mode: logits of overlapping ``crop`` windows every ``stride`` pixels (the last window flush
    with the border), averaged where they overlap. (B, C, H, W) -> (B, K, H, W)."""
    H, W = x.shape[-2:]
    (ch, cw), (sh, sw) = crop, stride
    rows = max(H - ch + sh - 1, 0) // sh + 1
    cols = max(W - cw + sw - 1, 0) // sw + 1
    out, count = None, x.new_zeros(1, 1, H, W)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, H), min(c * sw + cw, W)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            logits = model(x[..., y1:y2, x1:x2]).float()
            if out is None:
                out = x.new_zeros(x.shape[0], logits.shape[1], H, W, dtype=torch.float32)
            out[..., y1:y2, x1:x2] += logits
            count[..., y1:y2, x1:x2] += 1
    return out / count


def palette(num_classes: int, colours: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(K, 3) uint8 colours: ``colours`` (a dataset's own palette) first, then a fixed seeded draw for the rest."""
    drawn = np.random.default_rng(0).integers(0, 256, size=(num_classes, 3), dtype=np.uint8)
    if colours:
        given = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)[:num_classes]
        drawn[: len(given)] = given
    return drawn


def save_overlay(
    image: torch.Tensor,
    pred: torch.Tensor,
    path: str | Path,
    alpha: float = 0.5,
    colours: Sequence[Sequence[int]] | None = None,
) -> Path:
    """uint8 (3, H, W) image and (H, W) labels -> a PNG of the image blended with the label colours (``colours``:
    the dataset's palette, see :func:`palette`)."""
    from PIL import Image

    from glocal.weights.io import atomic_path

    colours = palette(256, colours)[pred.clamp(min=0, max=255).numpy()]
    blended = (1 - alpha) * image.permute(1, 2, 0).numpy().astype(np.float32) + alpha * colours
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(tmp, format="PNG")
    return path
