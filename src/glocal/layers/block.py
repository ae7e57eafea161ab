"""The pre-norm transformer block shared by ViT, T2T-ViT, VOLO and Twins.

``x = x + drop_path1(attn(norm1(x), *args))`` then ``x = x + drop_path2(mlp(norm2(x)))``. The token mixer is
injected (global multi-head attention, Twins' LSA/GSA, VOLO's outlook attention), so one block serves every family;
extra positional arguments of ``forward`` (a feature size) pass through to the mixer. Module names (``norm1``,
``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) are the official repositories' and timm's. In eval mode with the
CPU backend on (and no hook on ``mlp``) the second residual addition is handed to the MLP, which may fuse it into
``fc2``'s product.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from glocal.backends import cpu as cpu_backend
from glocal.layers.drop import DropPath
from glocal.layers.mlp import Mlp

__all__ = ["TransformerBlock", "layer_norm_eps6"]

layer_norm_eps6 = functools.partial(nn.LayerNorm, eps=1e-6)


class TransformerBlock(nn.Module):
    """(B, N, C) -> (B, N, C)."""

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        *,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] | functools.partial = layer_norm_eps6,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), *args))
        if not self.training and cpu_backend.fusable(self.mlp):  # the addition may fuse into mlp.fc2
            return self.mlp(self.norm2(x), residual=x)
        return x + self.drop_path2(self.mlp(self.norm2(x)))
