"""BoTNet's multi-head self-attention over a 2-D map (Srinivas et al., arXiv 2101.11605), in two versions.

:class:`MHSA2d` as the official TF gist's ``relpos_self_attention``: q, k, v from 1x1 projections without bias
(init N(0, 0.01)), logits ``q k^T + q r^T`` with q pre-scaled by d^-1/2 for both terms and 2-D relative position
logits, softmax over all H*W keys, heads concatenated, and no output projection (the bottleneck's BN and 1x1 conv
follow).

:class:`AbsPosMHSA2d` as leaderj1001/BottleneckTransformers ``model.py`` ``MHSA``, the PyTorch code BoTNet write-ups
point to: three biased 1x1 convs, per-head absolute row and column embeddings and no scale (see the class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glocal.layers.attention import attend
from glocal.layers.heads import head_dim
from glocal.layers.probe import AttentionProbe
from glocal.layers.rel_pos import RelPosLogits

__all__ = ["AbsPosMHSA2d", "MHSA2d"]


class MHSA2d(nn.Module):
    """(B, C, H, W) -> (B, C, H, W) all-to-all attention with relative position logits."""

    def __init__(self, dim: int, num_heads: int, feat_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim(dim, num_heads)
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
        factors = self.rel_pos.factors((q * scale).reshape(B, self.num_heads, H, W, self.head_dim))
        out = attend(q, k, v, probe=self.probe, bias_factors=factors, scale=scale)  # (B, heads, HW, d)
        return out.transpose(-2, -1).reshape(B, C, H, W)


class AbsPosMHSA2d(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): leaderj1001/BottleneckTransformers' MHSA, its parameter names kept.

    Biased 1x1 ``query``, ``key`` and ``value`` convs; learned absolute embeddings per head, ``rel_w``
    (1, heads, d, H0, 1) over rows and ``rel_h`` (1, heads, d, 1, W0) over columns (the original calls the height
    "width"), summed to one position vector ``p_i`` per map position; logits ``q_i . k_j + p_i . q_j`` for query i
    and key j (the content-position term pairs the *query's* position with the *key's* content, as the original's
    ``matmul(pos, q)``), no d^-0.5 scale, softmax over the keys. At a map size other than (H0, W0) the embeddings
    are resampled linearly along their axis (``align_corners=False``); the original fails there.
    """

    def __init__(self, dim: int, num_heads: int, feat_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim(dim, num_heads)
        self.query = nn.Conv2d(dim, dim, kernel_size=1)
        self.key = nn.Conv2d(dim, dim, kernel_size=1)
        self.value = nn.Conv2d(dim, dim, kernel_size=1)
        height, width = feat_size
        self.rel_h = nn.Parameter(torch.randn(1, num_heads, self.head_dim, 1, width))
        self.rel_w = nn.Parameter(torch.randn(1, num_heads, self.head_dim, height, 1))
        self.probe = AttentionProbe("bot")

    def init_weights(self) -> None:
        """The original's: standard-normal embeddings (the convs keep the model's conv initialisation)."""
        nn.init.normal_(self.rel_h)
        nn.init.normal_(self.rel_w)

    def position(self, height: int, width: int) -> torch.Tensor:
        """Position vectors (1, heads, H*W, d) of an H x W map, row-major."""
        rel_h, rel_w = self.rel_h, self.rel_w
        if rel_h.shape[-1] != width:
            rel_h = F.interpolate(rel_h.flatten(1, 2), size=(1, width), mode="bilinear", align_corners=False)
            rel_h = rel_h.unflatten(1, (self.num_heads, self.head_dim))  # (1, heads, d, 1, W)
        if rel_w.shape[-2] != height:
            rel_w = F.interpolate(rel_w.flatten(1, 2), size=(height, 1), mode="bilinear", align_corners=False)
            rel_w = rel_w.unflatten(1, (self.num_heads, self.head_dim))  # (1, heads, d, H, 1)
        return (rel_h + rel_w).flatten(3).transpose(-2, -1)  # (1, heads, H*W, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = (
            proj(x).reshape(B, self.num_heads, self.head_dim, H * W).transpose(-2, -1)  # (B, heads, HW, d)
            for proj in (self.query, self.key, self.value)
        )
        # p_i . q_j as bias factors (position of query i, content of key j), never an HW x HW map
        out = attend(q, k, v, probe=self.probe, bias_factors=(self.position(H, W), q), scale=1.0)  # (B, heads, HW, d)
        return out.transpose(-2, -1).reshape(B, C, H, W)
