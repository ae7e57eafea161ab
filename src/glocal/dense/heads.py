"""Segmentation heads with mmsegmentation's published defaults.

* :class:`SemanticFPNHead`: Kirillov et al., "Panoptic Feature Pyramid Networks", arXiv 1901.02446, as mmseg's
  ``FPNHead`` in the Twins configs (``configs/_base_/models/twins_pcpvt-s_fpn.py``): on the FPN's four 256-channel
  levels, per level ``max(1, log2(stride / 4))`` 3x3 conv-BN-ReLU (``channels=128``) each followed by a 2x bilinear
  upsampling while above stride 4, summed, dropout 0.1, 1x1 classifier.
* :class:`UPerHead`: Xiao et al., "Unified Perceptual Parsing", arXiv 1807.10221, as mmseg's ``UPerHead``
  (``configs/_base_/models/upernet_r50.py``, ``twins_pcpvt-s_upernet.py``): pyramid pooling (scales 1, 2, 3, 6) on
  the last level, 1x1 laterals, a bilinear top-down pathway, 3x3 output convs, all levels upsampled to stride 4 and
  fused by a 3x3 conv (``channels=512``), dropout 0.1, 1x1 classifier.
* :class:`FCNHead`: UPerNet's auxiliary head on stage 3 (``in_index=2``): one 3x3 conv-BN-ReLU (``channels=256``,
  ``num_convs=1``, ``concat_input=False``), dropout 0.1, 1x1 classifier; its loss weighs 0.4.

BatchNorm stands for mmseg's SyncBN; the segmenter converts it under data-parallel CUDA training.

Deviation (UPerHead, batch 1 only): the pyramid-pooling branch of scale 1 pools to 1x1, so at batch 1 its BatchNorm
sees one value per channel, where torch's (and mmseg's) BatchNorm refuses to train. That branch's norm is a
:class:`PooledBatchNorm2d`: it normalises with its running statistics (and leaves them alone) for such a batch, and is
torch's BatchNorm for any batch with two or more values per channel, so at batch >= 2 the head is mmseg's to the bit
and its state dict is the same. A CPU user fine-tuning at 1024 px can then train at batch 1, the branch acting as a
learned per-channel affine map of its conv; GroupNorm would also train there but would change the published head at
every batch size and its checkpoints' keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from glocal.dense.necks import conv_norm_act

__all__ = ["FCNHead", "PooledBatchNorm2d", "SemanticFPNHead", "UPerHead"]


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises a training batch holding one value per channel (batch 1 of a 1x1 map) with its
    running statistics, without updating them, instead of raising; every other batch is torch's BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class _ClassifierMixin(nn.Module):
    def _make_classifier(self, channels: int, num_classes: int, dropout: float) -> None:
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class SemanticFPNHead(_ClassifierMixin):
    """Four maps at ``strides`` -> logits (B, num_classes, H/4, W/4)."""

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        *,
        strides: tuple[int, ...] = (4, 8, 16, 32),
        channels: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for in_chs, stride in zip(in_channels, strides, strict=True):
            steps = max(1, int(math.log2(stride) - math.log2(strides[0])))
            layers: list[nn.Module] = []
            for k in range(steps):
                layers.append(conv_norm_act(in_chs if k == 0 else channels, channels, 3))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self._make_classifier(channels, num_classes, dropout)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])
        for head, x in zip(self.scale_heads[1:], features[1:], strict=True):
            out = out + _resize(head(x), out.shape[-2:])
        return self.classify(out)


class UPerHead(_ClassifierMixin):
    """Four maps (C_i channels, strides 4..32) -> logits (B, num_classes, H/4, W/4).

    The scale-1 pooling branch normalises with :class:`PooledBatchNorm2d`, so batch 1 trains (mmseg's head cannot);
    from batch 2 on it is mmseg's ``UPerHead`` exactly (tested)."""

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        *,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.pool_scales = pool_scales
        self.psp_modules = nn.ModuleList(
            conv_norm_act(in_channels[-1], channels, 1, norm=PooledBatchNorm2d if s == 1 else "bn") for s in pool_scales
        )  # scale 1: batch 1 trains too (see the module docstring)
        self.bottleneck = conv_norm_act(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(conv_norm_act(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(conv_norm_act(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = conv_norm_act(len(in_channels) * channels, channels, 3)
        self._make_classifier(channels, num_classes, dropout)

    def _psp(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [
            _resize(conv(F.adaptive_avg_pool2d(x, s)), x.shape[-2:])
            for conv, s in zip(self.psp_modules, self.pool_scales, strict=True)
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))  # (B, channels, h, w)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features[:-1], strict=True)]
        laterals.append(self._psp(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = torch.cat([outs[0], *(_resize(x, size) for x in outs[1:])], dim=1)  # (B, 4 * channels, H/4, W/4)
        return self.classify(self.fpn_bottleneck(fused))


class FCNHead(_ClassifierMixin):
    """One map (C channels) -> logits (B, num_classes, h, w) at its own stride."""

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = conv_norm_act(in_channels, channels, 3)
        self._make_classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.convs(x))
