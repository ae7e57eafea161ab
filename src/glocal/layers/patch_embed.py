"""Non-overlapping patch embedding: a conv with kernel = stride = patch size, optionally followed by a norm."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PatchEmbed"]


class PatchEmbed(nn.Module):
    """(B, C_in, H, W) -> tokens (B, H/p * W/p, C) in row-major order, and the grid size (H/p, W/p).

    ``norm_layer`` (e.g. Twins' LayerNorm) applies to the tokens. The caller checks divisibility (the model's
    ``check_input``); a size that is not a multiple of the patch would silently drop border pixels otherwise.
    """

    def __init__(
        self, in_chans: int, embed_dim: int, patch_size: int, *, norm_layer: type[nn.Module] | None = None
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)  # (B, C, H/p, W/p)
        size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), size  # (B, N, C)
