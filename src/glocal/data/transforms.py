"""Batched image transforms on tensors: random-resized-crop with flip, centre crop, normalisation, mixup/cutmix.

Every random choice is drawn from an explicit ``torch.Generator`` for a whole (global) batch at once, so a training
step's augmentation is a function of the generator's seed alone, and data-parallel ranks can each take their slice
of the same draw: the union of the ranks' batches is the single-process batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

__all__ = [
    "MixConfig",
    "center_crop",
    "create_transform",
    "crop_params",
    "mix_batch",
    "normalize",
    "one_hot",
    "resized_crop",
]


def crop_params(
    n: int,
    image_size: tuple[int, int],
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
) -> torch.Tensor:
    """Affine parameters (n, 2, 3) of Inception-style random-resized crops with horizontal flips.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio); a crop wider or taller than the image is clipped to
    it (torchvision retries, then falls back to a centre crop; clipping keeps one draw per sample). Coordinates are
    ``affine_grid``'s normalised [-1, 1] ones.
    """
    H, W = image_size
    area = torch.empty(n).uniform_(*scale, generator=generator) * H * W
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    width = ((area * aspect).sqrt() / W).clamp(max=1.0)  # fraction of the image width
    height = ((area / aspect).sqrt() / H).clamp(max=1.0)
    center_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    center_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator) < hflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = center_y
    return theta


def resized_crop(images: torch.Tensor, theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sample crops given by ``theta`` (from :func:`crop_params`) of a float batch (B, C, H, W) at ``size``."""
    grid = F.affine_grid(theta.to(images), [images.shape[0], images.shape[1], *size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def center_crop(images: torch.Tensor, size: tuple[int, int], crop_pct: float = 1.0) -> torch.Tensor:
    """Evaluation view: the central ``crop_pct`` of each side, resized (antialiased) to ``size``."""
    H, W = images.shape[-2:]
    ch, cw = max(1, round(H * crop_pct)), max(1, round(W * crop_pct))
    top, left = (H - ch) // 2, (W - cw) // 2
    images = images[..., top : top + ch, left : left + cw]
    if (ch, cw) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 or [0, 255] float (B, C, H, W) -> float32 standardised per channel."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
    return (images.float() - mean_t) / std_t


def one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) int labels -> (B, num_classes) targets with label smoothing (Szegedy et al., 2016)."""
    off = smoothing / num_classes
    return torch.full((labels.shape[0], num_classes), off).scatter_(1, labels[:, None], 1.0 - smoothing + off)


@dataclass(frozen=True)
class MixConfig:
    """Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) as in DeiT's recipe: one draw per batch.

    An alpha of 0 disables a method; with both on, ``switch_prob`` picks CutMix. ``prob`` is the chance a batch is
    mixed at all.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def mix_batch(
    images: torch.Tensor, targets: torch.Tensor, cfg: MixConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with its reverse: images (B, C, H, W), soft targets (B, K). Returns new tensors.

    The random draws are the same whatever the batch size, so data-parallel ranks mixing their own slices make the
    same choice of method and lambda.
    """
    draws = torch.rand(2, generator=generator)
    # torch's Beta sampler takes no generator: numpy's, seeded from ours, keeps the draw reproducible.
    beta_seed = int(torch.randint(2**62, (1,), generator=generator))
    if not cfg.enabled or draws[0] >= cfg.prob:
        return images, targets
    use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or draws[1] < cfg.switch_prob)
    alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
    lam = float(np.random.default_rng(beta_seed).beta(alpha, alpha))
    if use_cutmix:
        H, W = images.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        box = torch.rand(2, generator=generator)
        cy, cx = int(box[0] * H), int(box[1] * W)
        h, w = int(H * cut), int(W * cut)
        y0, y1 = max(cy - h // 2, 0), min(cy + h // 2, H)
        x0, x1 = max(cx - w // 2, 0), min(cx + w // 2, W)
        images = images.clone()
        images[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)  # the area actually kept
    else:
        images = images * lam + images.flip(0) * (1.0 - lam)
    return images, targets * lam + targets.flip(0) * (1.0 - lam)


def create_transform(cfg, train: bool = False):
    """The evaluation view of a data config (``model.data_config``, ``model.pretrained_cfg`` or a dict with
    ``input_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``): a function PIL image -> (3, H, W) float32.

    The shorter side is resized to ``floor(size / crop_pct)`` with the config's interpolation, the centre ``size``
    crop is taken and the result normalised, as timm's eval transform does. ``crop_pct`` > 1 (VOLO's 448/512 tags:
    1.15) resizes below the crop size, so the crop extends past the image and the border is zero (black), as
    torchvision's ``CenterCrop`` pads.
    """
    from PIL import Image

    from glocal.data.datasets import pil_resampling

    if train:
        raise ValueError("create_transform(train=True) is not provided; training augments batched tensors "
                         "(glocal.data.crop_params / resized_crop)")  # fmt: skip
    get = cfg.get if isinstance(cfg, dict) else lambda key: getattr(cfg, key)
    height, width = tuple(get("input_size"))[-2:]
    resample = pil_resampling(get("interpolation"))
    crop_pct, mean, std = float(get("crop_pct")), tuple(get("mean")), tuple(get("std"))
    scale_size = math.floor(max(height, width) / crop_pct)

    def transform(image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        w, h = image.size
        if w <= h:
            new_w, new_h = scale_size, round(h * scale_size / w)
        else:
            new_w, new_h = round(w * scale_size / h), scale_size
        image = image.resize((new_w, new_h), resample)
        left, top = round((new_w - width) / 2), round((new_h - height) / 2)
        image = image.crop((left, top, left + width, top + height))  # pads with black where the image is smaller
        array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
        return normalize(array[None], mean, std)[0]

    return transform
