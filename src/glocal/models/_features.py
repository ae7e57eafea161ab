"""``features_only`` models: a backbone cut down to its pyramid taps, for FPN/UPerNet-style heads."""

from __future__ import annotations

import torch
from torch import nn

from glocal.models._base import Backbone, FeatureInfo

__all__ = ["FeaturePyramid"]


class FeaturePyramid(nn.Module):
    """(B, C, H, W) -> list of NCHW maps at the chosen taps, as timm's ``features_only`` models.

    ``out_indices`` are tap indices of the backbone's :attr:`~glocal.models.Backbone.feature_info` (negative ones
    count from the end, an int n means the last n); ``None`` takes the family's default, timm's. ``feature_info``
    is a :class:`~glocal.models.FeatureInfo` answering for the chosen taps (``channels()``, ``reduction()``...).

    The wrapped backbone is pruned: modules the taps do not need (classifier, final norm, later stages) are removed,
    so every remaining parameter receives a gradient and DistributedDataParallel needs no ``find_unused_parameters``.
    ``norm=True`` keeps the final norm and applies it to the maps (plain transformers' "normed" taps).
    """

    def __init__(self, backbone: Backbone, out_indices=None, *, norm: bool = False) -> None:
        super().__init__()
        if out_indices is None:
            out_indices = backbone.default_out_indices
        self.out_indices = backbone.prune_intermediate_layers(out_indices, prune_norm=not norm, prune_head=True)
        self.backbone = backbone
        self.norm = norm
        self.feature_info: FeatureInfo = backbone.feature_info.from_other(self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_intermediates(x, self.out_indices, norm=self.norm, intermediates_only=True)
