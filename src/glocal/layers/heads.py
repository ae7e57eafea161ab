"""Multi-head bookkeeping: the head width check and the two reshapes every attention module writes."""

from __future__ import annotations

import torch

__all__ = ["head_dim", "merge_heads", "split_heads"]


def head_dim(dim: int, num_heads: int) -> int:
    """``dim // num_heads``; ``ValueError`` when the heads do not split the width evenly."""
    if dim % num_heads != 0:
        raise ValueError(f"attention width {dim} must be divisible by its {num_heads} heads")
    return dim // num_heads


def split_heads(x: torch.Tensor, num_heads: int, parts: int = 1) -> torch.Tensor:
    """Tokens (B, N, parts * heads * d) -> (B, heads, N, d), or (parts, B, heads, N, d) for fused projections
    (``parts=2``: k, v; ``3``: q, k, v), the parts outermost in the channel order as ``nn.Linear`` lays them out."""
    x = x.unflatten(-1, (parts, num_heads, -1))  # (B, N, parts, heads, d)
    x = x.permute(2, 0, 3, 1, 4)  # (parts, B, heads, N, d)
    return x[0] if parts == 1 else x


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> tokens (B, N, heads * d), the heads concatenated."""
    return x.transpose(1, 2).flatten(2)  # (B, N, heads * d)
