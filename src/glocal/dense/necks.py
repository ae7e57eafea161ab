"""Necks: FPN (Lin et al., arXiv 1612.03144) and ViTDet's simple feature pyramid (Li et al., arXiv 2203.16527).

* :class:`FPN` follows mmdetection's ``FPN`` as the Mask R-CNN / RetinaNet configs of the BoTNet, GCNet and Twins
  papers use it: a 1x1 lateral conv per input level, a nearest-neighbour top-down pathway added level by level, a
  3x3 output conv per level, plain convs (no norm). ``extra_levels="maxpool"`` adds Mask R-CNN's P6 (stride-2 max
  pool of P5, ``num_outs=5``); ``extra_levels="conv"`` adds RetinaNet's P6/P7 (3x3 stride-2 convs, the first on C5:
  ``add_extra_convs='on_input'``). mmdetection's RetinaNet config (``retinanet_r50_fpn.py``) feeds C3-C5
  (``start_level=1``: pass the last three maps) and has no ReLU before P7 (``relu_before_extra_convs=False``);
  ``relu_before_extra=True`` adds it, as the RetinaNet paper (Lin et al., arXiv 1708.02002) and torchvision's
  ``LastLevelP6P7`` do.
* :class:`SimpleFeaturePyramid` turns one plain-transformer map (ViT, T2T-ViT, VOLO: stride 16) into strides
  4/8/16/32 as ViTDet does: two 2x2 deconvs (LayerNorm + GELU between) for x4, one for x2, identity, 2x2 max pool
  for x0.5, each followed by a 1x1 and a 3x3 conv with LayerNorm (detectron2's ``SimpleFeaturePyramid``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPN", "LayerNorm2d", "SimpleFeaturePyramid", "conv_norm_act"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


def conv_norm_act(
    in_chs: int, out_chs: int, kernel_size: int, *, norm: str | type[nn.Module] | None = "bn", act: bool = True
):
    """mmcv's ``ConvModule``: conv (bias only without a norm), then BatchNorm / LayerNorm (or ``norm(out_chs)``,
    a norm class), then ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=norm is None),
    ]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(out_chs))
    elif norm == "ln":
        layers.append(LayerNorm2d(out_chs))
    elif isinstance(norm, type) and issubclass(norm, nn.Module):
        layers.append(norm(out_chs))
    elif norm is not None:
        raise ValueError(f"norm must be 'bn', 'ln', a norm class or None, got {norm!r}")
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FPN(nn.Module):
    """A list of maps at increasing strides (C_i channels) -> as many maps of ``out_channels`` (+ 1 or 2 extra).

    ``extra_levels``: None, ``"maxpool"`` (P6 = max pool of P5, Mask R-CNN) or ``"conv"`` (P6, P7 from C5, RetinaNet);
    ``relu_before_extra``: ReLU on P6 before the conv that makes P7 (``"conv"`` only).
    """

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int = 256,
        *,
        extra_levels: str | None = None,
        relu_before_extra: bool = False,
    ) -> None:
        super().__init__()
        if extra_levels not in (None, "maxpool", "conv"):
            raise ValueError(f"extra_levels must be None, 'maxpool' or 'conv', got {extra_levels!r}")
        if relu_before_extra and extra_levels != "conv":
            raise ValueError(f"relu_before_extra applies to extra_levels='conv', got extra_levels={extra_levels!r}")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.extra_levels = extra_levels
        self.relu_before_extra = relu_before_extra
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra_convs = nn.ModuleList()
        if extra_levels == "conv":
            self.extra_convs.append(nn.Conv2d(in_channels[-1], out_channels, 3, stride=2, padding=1))
            self.extra_convs.append(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_outs(self) -> int:
        return len(self.in_channels) + {None: 0, "maxpool": 1, "conv": 2}[self.extra_levels]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"FPN was built for {len(self.in_channels)} levels, got {len(features)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]
        if self.extra_levels == "maxpool":
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        elif self.extra_levels == "conv":
            p6 = self.extra_convs[0](features[-1])
            outs += [p6, self.extra_convs[1](F.relu(p6) if self.relu_before_extra else p6)]
        return outs


class SimpleFeaturePyramid(nn.Module):
    """(B, C, H/s, W/s) -> maps of ``out_channels`` at ``strides`` (default 4, 8, 16, 32) from one map of stride s."""

    def __init__(
        self, in_channels: int, in_stride: int, out_channels: int = 256, strides: tuple[int, ...] = (4, 8, 16, 32)
    ) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.out_channels = out_channels
        self.stages = nn.ModuleList()
        for stride in self.strides:
            scale = in_stride / stride
            steps = math.log2(scale)
            if steps != int(steps):
                raise ValueError(f"stride {stride} is not a power-of-two rescaling of the input stride {in_stride}")
            layers: list[nn.Module] = []
            dim = in_channels
            for k in range(int(steps)):
                if k:
                    layers += [LayerNorm2d(dim), nn.GELU()]
                layers.append(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2))
                dim //= 2
            if scale < 1:
                layers.append(nn.MaxPool2d(int(1 / scale), int(1 / scale)))
            layers += [conv_norm_act(dim, out_channels, 1, norm="ln", act=False)]
            layers += [conv_norm_act(out_channels, out_channels, 3, norm="ln", act=False)]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [stage(x) for stage in self.stages]
