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
    """q (B, heads, H, W, d) -> relative logits (B, heads, H*W, H*W), queries and keys in row-major order.

    The logits factor through one-hot key coordinates: ``logit[i, j] = L_h[i, y_j] + L_w[i, x_j]`` with
    ``L_h = q . R_h`` over the H key rows and ``L_w`` over the W key columns, so ``logits = a b^T`` with
    a = [L_h, L_w] (B, heads, HW, H + W) and b = [onehot(y_j), onehot(x_j)] (HW, H + W). :meth:`factors` returns
    (a, b) for :func:`~glocal.layers.attention.attend`'s ``bias_factors`` (never the HW x HW map); the product is
    exactly the sum of the two terms (every other product is a zero).
    """

    def __init__(self, feat_size: tuple[int, int], head_dim: int) -> None:
        super().__init__()
        height, width = feat_size
        self.height = nn.Parameter(torch.randn(2 * height - 1, head_dim) * head_dim**-0.5)
        self.width = nn.Parameter(torch.randn(2 * width - 1, head_dim) * head_dim**-0.5)

    def factors(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a (B, heads, HW, H + W), b (1, 1, HW, H + W)) with ``a b^T`` the relative logits."""
        B, heads, H, W, _ = q.shape
        rel_h = _relative_rows(resample_table(self.height, H), H)  # (Hq, Hk, d)
        rel_w = _relative_rows(resample_table(self.width, W), W)  # (Wq, Wk, d)
        logits_h = torch.einsum("bnyxd,ykd->bnyxk", q, rel_h)  # (B, heads, Hq, Wq, Hk)
        logits_w = torch.einsum("bnyxd,xkd->bnyxk", q, rel_w)  # (B, heads, Hq, Wq, Wk)
        a = torch.cat([logits_h, logits_w], dim=-1).reshape(B, heads, H * W, H + W)  # (B, heads, HW, H + W)
        onehot_rows = torch.eye(H, dtype=q.dtype, device=q.device).repeat_interleave(W, dim=0)  # (HW, H): y_j
        onehot_cols = torch.eye(W, dtype=q.dtype, device=q.device).repeat(H, 1)  # (HW, W): x_j
        b = torch.cat([onehot_rows, onehot_cols], dim=-1)  # (HW, H + W)
        return a, b[None, None]

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        a, b = self.factors(q)
        return a @ b.transpose(-2, -1)  # (B, heads, HW, HW)
