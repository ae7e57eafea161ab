"""2-D relative position logits (BoTNet, after Shaw et al. and Bello et al.'s attention augmentation).

Each axis has a table of (2L - 1) embeddings of the head width d, shared across heads, indexed by
``key_pos - query_pos + (L - 1)``. For a query at (y, x) and a key at (y', x') the logit is
``q . (R_h[y' - y] + R_w[x' - x])``: the content-position term added to q k^T, as the official BoTNet gist's
``relative_logits``. Tables are built for one feature size; another size linearly resamples them over relative
offsets (endpoints aligned), so any input size runs and the built size reproduces the tables exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RelPosLogits", "resample_table"]


def resample_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """(2L0-1, d) -> (2L-1, d), resampled when the feature length differs from the built one."""
    rows = 2 * length - 1
    if table.shape[0] == rows:
        return table
    resized = F.interpolate(table.t().unsqueeze(0), size=rows, mode="linear", align_corners=True)
    return resized.squeeze(0).t()


def _relative_rows(table: torch.Tensor, length: int) -> torch.Tensor:
    """(2L-1, d) -> (L_query, L_key, d) with row key - query + L - 1."""
    pos = torch.arange(length, device=table.device)
    index = pos[None, :] - pos[:, None] + (length - 1)  # (Lq, Lk)
    return table[index]


class RelPosLogits(nn.Module):
    """q (B, heads, H, W, d) -> relative logits (B, heads, H*W, H*W), queries and keys in row-major order."""

    def __init__(self, feat_size: tuple[int, int], head_dim: int) -> None:
        super().__init__()
        height, width = feat_size
        self.height = nn.Parameter(torch.randn(2 * height - 1, head_dim) * head_dim**-0.5)
        self.width = nn.Parameter(torch.randn(2 * width - 1, head_dim) * head_dim**-0.5)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        B, heads, H, W, _ = q.shape
        rel_h = _relative_rows(resample_table(self.height, H), H)  # (Hq, Hk, d)
        rel_w = _relative_rows(resample_table(self.width, W), W)  # (Wq, Wk, d)
        logits_h = torch.einsum("bnyxd,ykd->bnyxk", q, rel_h)  # (B, heads, Hq, Wq, Hk)
        logits_w = torch.einsum("bnyxd,xkd->bnyxk", q, rel_w)  # (B, heads, Hq, Wq, Wk)
        logits = logits_h.unsqueeze(-1) + logits_w.unsqueeze(-2)  # (B, heads, Hq, Wq, Hk, Wk)
        return logits.reshape(B, heads, H * W, H * W)
