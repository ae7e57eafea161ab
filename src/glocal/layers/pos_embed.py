"""Absolute position embeddings on a grid, resampled for another (possibly non-square) grid.

One helper for ViT, T2T-ViT and VOLO, used on the fly in ``forward`` and when loading checkpoints trained at another
resolution. Resampling is bicubic with ``align_corners=False`` and no antialiasing, DeiT's choice for fine-tuning at
384 (timm's on-the-fly path antialiases, a different kernel that also changes upsampled values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["resample_grid", "resample_tokens"]


def resample_grid(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, H0, W0, C) -> (1, H, W, C).

    Always interpolates, also at the same size (where bicubic returns the input exactly): a shape comparison here
    would be frozen into traced and exported graphs, which then fail at every other size.
    """
    x = grid.permute(0, 3, 1, 2).float()  # (1, C, H0, W0)
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(grid.dtype)  # (1, H, W, C)


def resample_tokens(
    pos: torch.Tensor, old_size: tuple[int, int], new_size: tuple[int, int], num_prefix: int = 0
) -> torch.Tensor:
    """(1, prefix + H0*W0, C) -> (1, prefix + H*W, C): the grid part resampled, prefix (class token) rows kept."""
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    C = grid.shape[-1]
    if grid.shape[1] != old_size[0] * old_size[1]:
        raise ValueError(
            f"position embedding has {grid.shape[1]} grid tokens, not {old_size[0]}x{old_size[1]} = "
            f"{old_size[0] * old_size[1]}"
        )
    grid = resample_grid(grid.reshape(1, old_size[0], old_size[1], C), new_size)
    return torch.cat([prefix, grid.reshape(1, new_size[0] * new_size[1], C)], dim=1)
