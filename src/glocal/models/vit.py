"""Vision Transformer (ViT-Ti/S/B/L, patch 16) on the plain token backbone it shares with T2T-ViT (``_plain.py``).

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", arXiv 2010.11929.
Faithful to google-research/vision_transformer (``vit_jax/models_vit.py``; ``get_{ti,s,b,l}16_config`` in
``vit_jax/configs/models.py``) in the PyTorch layout of DeiT (Touvron et al., arXiv 2012.12877) and timm's
``vision_transformer.py``, whose key names glocal keeps: ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``.

Architecture: a 16x16/16 conv patch embedding, a class token (prepended), a learned position embedding over the
class token and the patch grid, pre-norm blocks ``x + MHA(LN(x))``, ``x + MLP(LN(x))`` with qkv bias and GELU,
LayerNorm eps 1e-6 (flax's default), a final LayerNorm, then the class token (or, with ``global_pool="avg"``, the
mean of the patch tokens) into a linear head.

Feature pyramid: the outputs of chosen blocks (``feature_blocks``; by default four evenly spaced blocks, the last
included) as (B, C, H/16, W/16) maps of the patch tokens, optionally after the final norm.

Deliberate deviations:

* GELU is the exact erf form (PyTorch, DeiT, timm); flax's ``nn.gelu`` defaults to the tanh approximation. Google's
  JAX checkpoints differ by at most ~1e-3 per activation for it.
* Initialisation follows timm (truncated normal 0.02 for linear weights and the position embedding, 1e-6 normal for
  the class token); the JAX code zero-initialises the head and the class token. Only training from scratch sees it.
* No ``pre_logits`` (Dense + tanh) layer: only the original ImageNet-21k checkpoints carry one.
* ``global_pool="avg"`` pools the patch tokens after the final norm (the contract's ``forward_features`` ends with
  it); timm's ``avg`` models instead drop the final norm for a norm after pooling (``fc_norm``).
* Any input of at least one patch runs (see :class:`VisionTransformer`); the official code accepts only its
  configured size. The position embedding is resampled (bicubic, non-square, class-token row kept) on the fly for
  any grid other than the configured one, and by :meth:`VisionTransformer.adapt_state_dict` for checkpoints
  stored at another size.
* Data config: ImageNet mean/std and bicubic resizing (DeiT's ImageNet-1k recipe); Google's checkpoints expect
  mean = std = 0.5, which a checkpoint's own data config must state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from glocal.layers.block import layer_norm_eps6
from glocal.layers.patch_embed import PatchEmbed
from glocal.layers.pos_embed import resample_tokens
from glocal.models._base import DataConfig
from glocal.models._plain import PlainTransformer
from glocal.registry import PaperFigures, register_model

__all__ = ["ViTConfig", "VisionTransformer"]


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a ViT; the defaults are ViT-B/16 (``get_b16_config``)."""

    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True  # flax MultiHeadDotProductAttention has q/k/v biases
    # The grid the learned position embedding is stored for (img_size / patch_size per side); other sizes resample it.
    img_size: int | tuple[int, int] = 224
    # 'token': the class token feeds the head (the paper); 'avg': the mean of the patch tokens.
    global_pool: str = "token"


class VisionTransformer(PlainTransformer):
    """ViT: (B, in_chans, H, W) -> logits (B, num_classes); any H, W of at least the patch size.

    The patch embedding is a stride-p conv, which floors: the grid is (H // p, W // p) and the last H % p rows and
    W % p columns, which no patch covers, are not seen (800 x 1333 -> 50 x 83 patches, as the conv of the official
    code and timm compute it); the position embedding is resampled to that grid."""

    first_conv = "patch_embed.proj"
    classifier = ("head",)

    def __init__(
        self,
        cfg: ViTConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        feature_blocks: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        super().__init__(cfg, num_classes=num_classes, in_chans=in_chans)
        img_size = self._init_grid(cfg.patch_size)
        self.patch_embed = PatchEmbed(in_chans, cfg.embed_dim, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], cfg.embed_dim))
        # Google's config dropout_rate acts after the position embedding, in the MLP and after attention.
        self.pos_drop = nn.Dropout(drop_rate)
        self._build_encoder(layer_norm_eps6, num_classes, feature_blocks, drop_rate, attn_drop_rate, drop_path_rate)
        self.data_config = DataConfig(
            input_size=(in_chans, *img_size),
            crop_pct=0.875 if max(img_size) <= 224 else 1.0,
            interpolation="bicubic",
        )
        self._init_weights()

    def _init_weights(self) -> None:
        self._init_linear_and_norm()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.prepare_input(x)
        x, size = self.patch_embed(x)  # (B, h*w, C)
        pos = resample_tokens(self.pos_embed, self.grid_size, size, num_prefix=1)  # (1, 1 + h*w, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos  # (B, 1 + h*w, C)
        return self.pos_drop(x), size

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resample a checkpoint's ``pos_embed`` (a square grid plus the class token) to the configured grid."""
        pos = state_dict.get("pos_embed")
        if pos is None or pos.shape == self.pos_embed.shape:
            return state_dict
        side = math.isqrt(pos.shape[1] - 1)
        if side * side != pos.shape[1] - 1:
            raise ValueError(
                f"cannot infer the grid of a checkpoint pos_embed of shape {tuple(pos.shape)}: "
                "expected one class-token row and a square grid"
            )
        return {**state_dict, "pos_embed": resample_tokens(pos, (side, side), self.grid_size, num_prefix=1)}

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


_GOOGLE = "google-research/vision_transformer"
_MEASURED = "params and GMACs (explicit attention) measured on timm's layout of the official model"


def _vit(config: str, top1: float, top1_source: str, **kwargs) -> PaperFigures:
    return PaperFigures(
        exact_params=True, top1=top1, source=f"{_GOOGLE} {config}; {_MEASURED}; top-1 {top1_source}", **kwargs
    )


_DEIT = "DeiT README (ImageNet-1k only, 224)"


@register_model(
    VisionTransformer, family="vit", paper=_vit("get_ti16_config", 72.2, _DEIT, params=5_717_416, gmacs=1.25)
)
def vit_tiny_patch16_224() -> ViTConfig:
    return ViTConfig(embed_dim=192, depth=12, num_heads=3)


@register_model(
    VisionTransformer, family="vit", paper=_vit("get_s16_config", 79.9, _DEIT, params=22_050_664, gmacs=4.60)
)
def vit_small_patch16_224() -> ViTConfig:
    return ViTConfig(embed_dim=384, depth=12, num_heads=6)


@register_model(
    VisionTransformer, family="vit", paper=_vit("get_b16_config", 81.8, _DEIT, params=86_567_656, gmacs=17.56)
)
def vit_base_patch16_224() -> ViTConfig:
    return ViTConfig(embed_dim=768, depth=12, num_heads=12)


@register_model(
    VisionTransformer,
    family="vit",
    paper=_vit("get_l16_config", 85.15, "ViT paper (ImageNet-21k -> 1k)", params=304_326_632, gmacs=61.56),
)
def vit_large_patch16_224() -> ViTConfig:
    return ViTConfig(embed_dim=1024, depth=24, num_heads=16)


# GMACs at 384: timm benchmark CSV (55.5); top-1: ViT paper Table 5, ImageNet-1k only, fine-tuned at 384.
@register_model(
    VisionTransformer,
    family="vit",
    input_size=(3, 384, 384),
    paper=_vit("get_b16_config at 384", 77.91, "ViT paper Table 5", params=86_859_496, gmacs=55.5),
)
def vit_base_patch16_384() -> ViTConfig:
    return ViTConfig(embed_dim=768, depth=12, num_heads=12, img_size=384)
