"""Image transforms: the eval view of a data config on PIL images (``create_transform``, timm's eval transform), and
batched ones on tensors for training: random-resized-crop with flip, normalisation, mixup/cutmix.

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
    "INTERPOLATIONS",
    "EvalTransform",
    "MixConfig",
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


# timm's interpolation names (``str_to_interp_mode``) and the PIL filters torchvision maps them to.
_RESAMPLING = {
    "nearest": "NEAREST", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "box": "BOX", "hamming": "HAMMING",
    "lanczos": "LANCZOS",
}  # fmt: skip
INTERPOLATIONS = tuple(_RESAMPLING)


def pil_resampling(interpolation: str):
    """PIL's resampling filter for a data config's ``interpolation`` name."""
    from PIL import Image

    if interpolation not in _RESAMPLING:
        raise ValueError(f"interpolation {interpolation!r} is not one of {sorted(_RESAMPLING)}")
    return getattr(Image.Resampling, _RESAMPLING[interpolation])


class EvalTransform:
    """The evaluation view of a data config, as timm's eval transform (``transforms_imagenet_eval``, crop mode
    'center') computes it on PIL images: a callable PIL image -> (3, H, W) tensor. Build it with
    :func:`create_transform`.

    ``scale_size`` is ``floor(side / crop_pct)`` per side. A square one resizes the shorter side to it (the longer
    side to ``int(scale * long / short)``, as torchvision's ``Resize(int)``); otherwise both sides are scaled by the
    smaller ratio and rounded (timm's ``ResizeKeepRatio``). The centre ``size`` crop follows torchvision's
    ``CenterCrop``: offsets ``round((side - crop) / 2)``, and where the resized image is smaller than the crop
    (``crop_pct`` > 1, VOLO's 448/512 tags: 1.15) it is first padded with black, ``(crop - side) // 2`` before it.
    Normalised images are ``(x - mean * 255) / (std * 255)`` in float32 (torchvision divides by 255 first: equal
    to float32 rounding); ``normalize=False`` gives the uint8 crop.
    """

    def __init__(self, size: tuple[int, int], crop_pct: float, interpolation: str, mean, std, normalize: bool = True):
        if not crop_pct > 0:
            raise ValueError(f"crop_pct must be positive, got {crop_pct}")
        self.size = (int(size[0]), int(size[1]))
        self.crop_pct = float(crop_pct)
        self.scale_size = (math.floor(self.size[0] / self.crop_pct), math.floor(self.size[1] / self.crop_pct))
        self.interpolation = interpolation
        self.resample = pil_resampling(interpolation)
        self.mean, self.std = tuple(mean), tuple(std)
        self.normalize = normalize

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) an image of ``width`` x ``height`` is resized to before the crop."""
        if self.scale_size[0] == self.scale_size[1]:
            scale = self.scale_size[0]
            if width <= height:
                return scale, int(scale * height / width)
            return int(scale * width / height), scale
        ratio = min(height / self.scale_size[0], width / self.scale_size[1])
        return round(width / ratio), round(height / ratio)

    def crop(self, image):
        """The resized, centre-cropped PIL image (RGB), before conversion to a tensor."""
        from PIL import Image

        image = image.convert("RGB")
        image = image.resize(self.resized_size(*image.size), self.resample)
        (crop_h, crop_w), (width, height) = self.size, image.size
        if crop_w > width or crop_h > height:
            padded = Image.new("RGB", (max(width, crop_w), max(height, crop_h)))  # black
            padded.paste(image, (max(crop_w - width, 0) // 2, max(crop_h - height, 0) // 2))
            image, (width, height) = padded, padded.size
        top, left = int(round((height - crop_h) / 2)), int(round((width - crop_w) / 2))
        return image.crop((left, top, left + crop_w, top + crop_h))

    def pixels(self, image) -> torch.Tensor:
        """The view as a (3, H, W) uint8 tensor, whatever ``normalize`` says (what eval datasets hold)."""
        return torch.from_numpy(np.asarray(self.crop(image), dtype=np.uint8).copy()).permute(2, 0, 1)

    def __call__(self, image) -> torch.Tensor:
        pixels = self.pixels(image)  # (3, H, W) uint8
        return normalize(pixels[None], self.mean, self.std)[0] if self.normalize else pixels

    def describe(self) -> str:
        """The view in words, as the commands print it."""
        (height, width), (scale_h, scale_w) = self.size, self.scale_size
        resize = f"shorter side to {scale_h}" if scale_h == scale_w else f"to cover {scale_h}x{scale_w}"
        return (
            f"resize {resize} ({self.interpolation}), centre crop {height}x{width} (crop_pct {self.crop_pct}), "
            f"normalise mean {self.mean} std {self.std}"
        )

    def __repr__(self) -> str:
        return f"EvalTransform({self.describe()})"


def create_transform(cfg, train: bool = False, normalize: bool = True) -> EvalTransform:
    """The evaluation view a model or weight tag is evaluated with: ``cfg`` is ``model.pretrained_cfg``,
    ``model.data_config`` or a dict with ``input_size``, ``mean``, ``std``, ``crop_pct`` and ``interpolation``.
    Returns an :class:`EvalTransform`, PIL image -> (3, H, W) float32 normalised (uint8 with ``normalize=False``),
    equal to what timm's ``create_transform(**resolve_data_config(...))`` gives on PIL images.
    """
    if train:
        raise ValueError("create_transform(train=True) is not provided; training augments batched tensors "
                         "(glocal.data.crop_params / resized_crop)")  # fmt: skip
    get = cfg.get if isinstance(cfg, dict) else lambda key: getattr(cfg, key)
    size = tuple(get("input_size"))[-2:]
    return EvalTransform(size, get("crop_pct"), get("interpolation"), get("mean"), get("std"), normalize=normalize)
