"""``features_only`` models: a backbone cut down to its pyramid taps, for FPN/UPerNet-style heads."""

from __future__ import annotations

import torch
from torch import nn

from glocal.models._base import Backbone, FeatureInfo

__all__ = ["FeaturePyramid"]


class FeaturePyramid(nn.Module):
    """(B, C, H, W) -> list of NCHW maps at the chosen taps.

    The wrapped backbone is pruned: modules the taps do not need (classifier, final norm, later stages) are removed,
    so every remaining parameter receives a gradient and DistributedDataParallel needs no ``find_unused_parameters``.
    ``norm=True`` keeps the final norm and applies it to the maps (plain transformers' "normed" taps).
    """

    def __init__(self, backbone: Backbone, out_indices=None, *, norm: bool = False) -> None:
        super().__init__()
        all_info = backbone.feature_info
        self.out_indices = backbone.prune_intermediate_layers(out_indices, prune_norm=not norm)
        self.backbone = backbone
        self.norm = norm
        self.feature_info: list[FeatureInfo] = [all_info[i] for i in self.out_indices]

    @property
    def channels(self) -> list[int]:
        return [f.num_chs for f in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        return [f.reduction for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_intermediates(x, self.out_indices, norm=self.norm)
