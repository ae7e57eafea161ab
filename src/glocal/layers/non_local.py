"""Non-local block, embedded Gaussian (Wang et al., arXiv 1711.07971), as facebookresearch/video-nonlocal-net.

``z = x + BN(W_out y)``, ``y = softmax(theta(x)^T phi(x) / sqrt(C')) g(x)`` with C' = C * ratio (C/2): theta, phi and
g are 1x1 convs with bias initialised N(0, 0.01); the scale 1/sqrt(C') is the official code's ``USE_SCALE`` (the
paper's equation has none); the output BN's gamma starts at zero so the block starts as the identity. ``subsample``
max-pools phi and g by 2x2 (the video code's ``USE_MAXPOOL``); GCNet's image comparison runs without it.
"""

from __future__ import annotations

import torch
from torch import nn

from glocal.layers.attention import attend
from glocal.layers.probe import AttentionProbe

__all__ = ["NonLocal2d"]


class NonLocal2d(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): every position attends over all positions (query-dependent)."""

    def __init__(self, channels: int, ratio: float = 0.5, *, subsample: bool = False) -> None:
        super().__init__()
        inner = int(channels * ratio)
        if inner < 1:
            raise ValueError(f"non-local inner width int({channels} * {ratio}) must be at least 1")
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.scale = inner**-0.5  # the official USE_SCALE (mmcv NonLocal2d use_scale=True): 1 / sqrt(C')
        self.pool = nn.MaxPool2d(2, 2) if subsample else nn.Identity()
        self.out = nn.Conv2d(inner, channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(channels)
        self.probe = AttentionProbe("nl", ratio=2 if subsample else 1)
        self.init_weights()

    def init_weights(self) -> None:
        for conv in (self.theta, self.phi, self.g, self.out):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, C')
        pooled = self.pool(x)
        k = self.phi(pooled).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, hw, C')
        v = self.g(pooled).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, hw, C')
        y = attend(q, k, v, probe=self.probe, scale=self.scale)  # (B, 1, HW, C')
        y = y.squeeze(1).transpose(1, 2).reshape(B, -1, H, W)  # (B, C', H, W)
        return x + self.norm(self.out(y))
