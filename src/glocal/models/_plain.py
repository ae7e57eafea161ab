"""The plain (single-resolution) token backbone ViT and T2T-ViT share: class token, blocks, final norm, head.

Its taps are chosen blocks (``feature_blocks``, by default four evenly spaced ones, the last included) as
(B, C, H / stride, W / stride) maps of the patch tokens; ``features_only`` takes timm's default, the last three.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from glocal.layers.attention import MultiHeadAttention
from glocal.layers.block import TransformerBlock
from glocal.layers.drop import drop_path_rates
from glocal.models._base import Backbone, FeatureInfo, tap

__all__ = ["GLOBAL_POOLS", "PlainTransformer", "even_feature_blocks", "init_linear"]

GLOBAL_POOLS = ("token", "avg")


def even_feature_blocks(depth: int, num_taps: int = 4) -> tuple[int, ...]:
    """``num_taps`` evenly spaced block indices ending with the last block: depth 12 -> (2, 5, 8, 11)."""
    num_taps = min(num_taps, depth)
    return tuple((i + 1) * depth // num_taps - 1 for i in range(num_taps))


class PlainTransformer(Backbone):
    """A single-resolution token backbone: embedding (with class token) -> blocks -> norm -> head.

    Subclasses record their token grid with :meth:`_init_grid`, build ``self.blocks`` (a ``ModuleList``
    of :class:`~glocal.layers.block.TransformerBlock`), ``self.norm`` and ``self.head`` with :meth:`_build_encoder`
    and implement :meth:`embed`. This class provides the rest of the contract: pooling and head, the block-tap
    pyramid and its pruning.
    """

    global_pool: str
    feature_blocks: tuple[int, ...]
    final_norm = "norm"
    default_out_indices = 3  # timm's plain transformers: the last three taps
    # One patchifying conv (ViT) or unfold (T2T) before the tokens: the channels-last image gains nothing there.
    memory_format = torch.contiguous_format

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, in_chans, H, W) -> tokens (B, 1 + h*w, C) with class token and positions, and the grid (h, w)."""
        raise NotImplementedError

    def _init_grid(self, stride: int) -> tuple[int, int]:
        """Record the token stride; returns the configured (H, W) and sets ``grid_size``."""
        self.stride = stride
        self.min_input_size = stride
        img_size = self.img_size
        if img_size[0] % stride or img_size[1] % stride:
            raise ValueError(f"img_size {img_size} must be a multiple of {stride}")
        self.grid_size = (img_size[0] // stride, img_size[1] // stride)
        return img_size

    def _build_encoder(
        self,
        norm_layer: type[nn.Module] | functools.partial,
        num_classes: int,
        feature_blocks: tuple[int, ...] | list[int] | None,
        drop_rate: float,
        attn_drop_rate: float,
        drop_path_rate: float,
    ) -> None:
        """Blocks, final norm, head and taps from ``self.cfg`` (embed_dim, depth, num_heads, mlp_ratio, qkv_bias,
        global_pool)."""
        cfg = self.cfg
        embed_dim, depth, global_pool = cfg.embed_dim, cfg.depth, cfg.global_pool
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        feature_blocks = tuple(feature_blocks) if feature_blocks is not None else even_feature_blocks(depth)
        if (
            not feature_blocks
            or any(not 0 <= b < depth for b in feature_blocks)
            or list(feature_blocks) != sorted(set(feature_blocks))
        ):
            raise ValueError(f"feature_blocks must be increasing block indices in 0..{depth - 1}, got {feature_blocks}")
        self.global_pool = global_pool
        self.feature_blocks = feature_blocks
        self.num_features = embed_dim
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                embed_dim,
                MultiHeadAttention(
                    embed_dim,
                    cfg.num_heads,
                    qkv_bias=cfg.qkv_bias,
                    attn_drop=attn_drop_rate,
                    proj_drop=drop_rate,
                    prefix_tokens=1,
                ),
                mlp_ratio=cfg.mlp_ratio,
                drop=drop_rate,
                drop_path=rates[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.head = self._make_head(num_classes)
        self.feature_info = FeatureInfo([tap(embed_dim, self.stride, f"blocks.{b}") for b in feature_blocks])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> normed tokens (B, 1 + H/16 * W/16, C), the class token first."""
        x, _ = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]  # (B, C)
        return x if pre_logits else self.head(x)

    def _intermediates(self, x, taps, *, norm, stop_early):
        """The patch tokens after the chosen taps' blocks as (B, C, h, w) maps, reshaped by the real grid; ``final``
        is the normed token sequence (B, 1 + h*w, C) after the last block run."""
        tap_blocks = [self.feature_blocks[i] for i in taps]
        last = tap_blocks[-1] if stop_early else len(self.blocks) - 1
        x, (h, w) = self.embed(x)
        maps = []
        for i, block in enumerate(self.blocks[: last + 1]):
            x = block(x)
            if i in tap_blocks:
                y = self.norm(x) if norm else x
                B, _, C = y.shape
                maps.append(y[:, 1:].transpose(1, 2).reshape(B, C, h, w))  # (B, C, h, w)
        return self.norm(x), maps

    def _prune_after(self, last_tap: int) -> None:
        self.blocks = self.blocks[: self.feature_blocks[last_tap] + 1]

    def _init_head(self, module: nn.Module) -> None:
        init_linear(module)

    def _init_linear_and_norm(self) -> None:
        """timm's ViT init: truncated normal 0.02 for every linear weight, zero biases, unit LayerNorms."""
        for m in self.modules():
            init_linear(m)
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def init_linear(module: nn.Module) -> None:
    """timm's ViT init of a linear layer: truncated normal 0.02, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
