"""Stochastic depth (Huang et al., 2016): drop a residual branch per sample, and its linear depth schedule."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath", "drop_path_rates"]


class DropPath(nn.Module):
    """Zeroes the whole branch of a sample with probability ``p`` in training and rescales the rest by 1/(1-p)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, depths: int | list[int] | tuple[int, ...]) -> list[float] | list[list[float]]:
    """The linear stochastic-depth schedule from 0 to ``rate`` over all blocks.

    Given a total depth, a flat list; given per-stage depths, one list per stage (the same schedule split).
    """
    if isinstance(depths, int):
        return [rate * i / max(depths - 1, 1) for i in range(depths)]
    flat = drop_path_rates(rate, sum(depths))
    out, start = [], 0
    for d in depths:
        out.append(flat[start : start + d])
        start += d
    return out
