"""BoTNet's multi-head self-attention over a 2-D map (Srinivas et al., arXiv 2101.11605).

As the official TF gist's ``relpos_self_attention``: q, k, v from 1x1 projections without bias (init N(0, 0.01)),
logits ``q k^T + q r^T`` with q pre-scaled by d^-1/2 for both terms and 2-D relative position logits, softmax over all
H*W keys, heads concatenated, and no output projection (the bottleneck's BN and 1x1 conv follow).
"""

from __future__ import annotations

import torch
from torch import nn

from glocal.layers.attention import attend
from glocal.layers.probe import AttentionProbe
from glocal.layers.rel_pos import RelPosLogits

__all__ = ["MHSA2d"]


class MHSA2d(nn.Module):
    """(B, C, H, W) -> (B, C, H, W) all-to-all attention with relative position logits."""

    def __init__(self, dim: int, num_heads: int, feat_size: tuple[int, int]) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"MHSA width {dim} must be divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Conv2d(dim, 3 * dim, kernel_size=1, bias=False)
        self.rel_pos = RelPosLogits(feat_size, self.head_dim)
        self.probe = AttentionProbe("bot")
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.qkv.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(x).reshape(B, 3, self.num_heads, self.head_dim, H * W).transpose(-2, -1)
        q, k, v = qkv.unbind(1)  # each (B, heads, HW, d)
        scale = self.head_dim**-0.5
        bias = self.rel_pos((q * scale).reshape(B, self.num_heads, H, W, self.head_dim))  # (B, heads, HW, HW)
        out = attend(q, k, v, probe=self.probe, bias=bias, scale=scale)  # (B, heads, HW, d)
        return out.transpose(-2, -1).reshape(B, C, H, W)
