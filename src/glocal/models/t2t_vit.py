"""T2T-ViT: a tokens-to-token module in front of a deep-narrow ViT backbone.

Yuan et al., "Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet", arXiv 2101.11986.
Faithful to yitu-opensource/T2T-ViT (``models/t2t_vit.py``, ``models/token_transformer.py``,
``models/token_performer.py``, ``models/transformer_block.py``), whose key names glocal keeps:
``tokens_to_token.{attention1, attention2, project}``, ``cls_token``, ``pos_embed``,
``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``.

Tokens-to-token module (for an H x W input; ``token_dim`` = 64)::

    soft split  Unfold(7, stride 4, pad 2)   -> (B, H/4 * W/4, C_in*49)
    T2T layer   attention1 (C_in*49 -> 64)   -> re-structurize to (B, 64, H/4, W/4)
    soft split  Unfold(3, stride 2, pad 1)   -> (B, H/8 * W/8, 576)
    T2T layer   attention2 (576 -> 64)       -> re-structurize to (B, 64, H/8, W/8)
    soft split  Unfold(3, stride 2, pad 1)   -> (B, H/16 * W/16, 576)
    project     nn.Linear(576, embed_dim)       -> tokens at stride 16

A T2T layer changes the token width, so its attention residual is the value projection ``v`` rather than the input:
``x = v + proj(attn(norm1(x)))`` then ``x = x + mlp(norm2(x))``. :class:`TokenTransformer` (the ``_t`` variants) is
single-head softmax attention whose scale is the *input* width's ``dim_in ** -0.5`` (147 and 576), as the official
code computes ``head_dim`` from the input width; it goes through :func:`~glocal.layers.attention.attend` and its
probe. :class:`TokenPerformer` (the other variants) replaces the softmax kernel by Performer positive orthogonal
random features (Choromanski et al., arXiv 2009.14794): it never forms an attention map, so it has no probe and
analyses do not see it. Its random features ``w`` are fixed: a frozen parameter, saved with the weights (official
checkpoints carry theirs) and drawn from ``random_feature_seed``, independently of the global RNG.

The backbone is a ViT (:class:`~glocal.models._plain.PlainTransformer`): class token, a **fixed sinusoidal** position
table (a frozen parameter over the class token and the flattened patch index, as the official code), pre-norm
blocks without qkv bias, LayerNorm eps 1e-5, the class token into the head.

The official constructors set ``qk_scale = embed_dim ** -0.5`` when ``pretrained=True``, but the released weights
were trained and evaluated with ``pretrained=False`` (head_dim ** -0.5 = 1/8): glocal always uses head_dim ** -0.5,
and nothing but the config changes the numerics.

Deliberate deviations:

* Re-structurization reshapes to the soft splits' real grids computed from the input size, so any H, W >= 3 runs
  (:class:`T2TViT`); the official code takes the square root of the token count, so it only accepts square inputs
  (where it runs, the grids are the same).
* At a grid other than the configured one the sinusoidal table is built for that grid (1 + h*w positions), as the
  official code does when constructed for that size; its ``resize_pos_embed`` utility interpolates the stored table
  instead. :meth:`T2TViT.adapt_state_dict` rebuilds a checkpoint's table for the configured grid.
* The Performer's feed-forward is the shared :class:`~glocal.layers.mlp.Mlp` (``mlp.fc1``/``mlp.fc2``); the
  official code's ``nn.Sequential`` names them ``mlp.0``/``mlp.2``, which a checkpoint converter renames. Its
  hard-coded dropouts (0.1 after ``proj`` and after the feed-forward) are the run-time ``performer_drop_rate``.
* The Performer computes in the input dtype; the official code casts the random-feature products to float32 (under
  autocast both run the matrix products in the autocast dtype).
* The token transformer's unused drop path (always 0 in the official T2T module) is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from glocal.backends import capturing_graph
from glocal.layers.attention import attend
from glocal.layers.heads import split_heads
from glocal.layers.mlp import Mlp
from glocal.layers.probe import AttentionProbe
from glocal.models._base import DataConfig
from glocal.models._plain import PlainTransformer
from glocal.registry import PaperFigures, register_model

__all__ = [
    "T2TConfig",
    "T2TViT",
    "TokenPerformer",
    "TokenTransformer",
    "TokensToToken",
    "orthogonal_random_features",
    "sinusoid_table",
]

T2T_STRIDE = 16  # soft splits of stride 4, 2, 2


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The Transformer's sinusoidal table (1, num_positions, dim): sin at even, cos at odd channels.

    Computed in float64 on the CPU like the official numpy code, then returned in float32.
    """
    position = torch.arange(num_positions, dtype=torch.float64, device="cpu")[:, None]  # (P, 1)
    channel = torch.arange(dim, device="cpu")
    angle = position / torch.pow(10000.0, (2 * (channel // 2)).double() / dim)  # (P, dim)
    table = torch.where(channel % 2 == 0, angle.sin(), angle.cos())  # (P, dim)
    return table.float().unsqueeze(0)  # (1, P, dim)


def orthogonal_random_features(num_features: int, dim: int, seed: int) -> torch.Tensor:
    """(num_features, dim) orthonormal rows scaled by sqrt(num_features), drawn from ``seed`` alone.

    The distribution of the official ``nn.init.orthogonal_(randn(m, dim)) * sqrt(m)``: QR of a Gaussian matrix with
    the signs of R's diagonal folded into Q.
    """
    if num_features > dim:
        raise ValueError(f"at most {dim} orthogonal features in {dim} dimensions, asked for {num_features}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    gaussian = torch.randn(dim, num_features, generator=generator, device="cpu")  # (dim, m)
    q, r = torch.linalg.qr(gaussian)  # q: (dim, m) with orthonormal columns
    q = q * torch.sign(torch.diagonal(r))  # (dim, m)
    return q.t() * math.sqrt(num_features)  # (m, dim)


class TokenAttention(nn.Module):
    """Single-head softmax attention changing the width (B, N, dim) -> (B, N, out_dim), residual on ``v``.

    The scale is ``dim ** -0.5`` with ``dim`` the input width (the official ``head_dim = dim // num_heads``).
    """

    def __init__(self, dim: int, out_dim: int, *, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.scale = dim**-0.5
        self.qkv = nn.Linear(dim, out_dim * 3, bias=False)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(out_dim, out_dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.probe = AttentionProbe()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = split_heads(self.qkv(x), 1, parts=3).unbind(0)  # each (B, 1, N, out_dim)
        y = attend(
            q, k, v, probe=self.probe, scale=self.scale, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B, 1, N, out_dim)
        y = self.proj_drop(self.proj(y.squeeze(1)))  # (B, N, out_dim)
        return v.squeeze(1) + y


class TokenTransformer(nn.Module):
    """T2T layer of the ``_t`` variants (official ``Token_transformer``): (B, N, dim) -> (B, N, out_dim)."""

    def __init__(self, dim: int, out_dim: int, *, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class TokenPerformer(nn.Module):
    """T2T layer with Performer attention (official ``Token_performer``): (B, N, dim) -> (B, N, out_dim).

    ``softmax(q k^T) v`` is approximated by ``phi(q) (phi(k)^T v) / (phi(q) sum_n phi(k_n))`` with positive random
    features ``phi(x) = exp(w x - |x|^2 / 2) / sqrt(m)``, m = ``out_dim * kernel_ratio``: linear in N, no attention
    map, no probe. The fused projection is split in the official order k, q, v.
    """

    def __init__(self, dim: int, out_dim: int, *, kernel_ratio: float = 0.5, drop: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.kqv = nn.Linear(dim, 3 * out_dim)
        self.drop = nn.Dropout(drop)
        self.proj = nn.Linear(out_dim, out_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, out_dim, drop=(0.0, drop))
        self.num_random_features = int(out_dim * kernel_ratio)
        self.seed = seed
        self.w = nn.Parameter(torch.empty(self.num_random_features, out_dim), requires_grad=False)
        self.reset_random_features()

    @torch.no_grad()
    def reset_random_features(self) -> None:
        """Redraw ``w`` from ``seed`` (the same matrix every time)."""
        self.w.copy_(orthogonal_random_features(self.num_random_features, self.out_dim, self.seed))

    def random_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, out_dim) -> positive features (B, N, m)."""
        half_sq_norm = x.square().sum(dim=-1, keepdim=True) / 2  # (B, N, 1)
        return torch.exp(x @ self.w.t() - half_sq_norm) / math.sqrt(self.num_random_features)  # (B, N, m)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(x).split(self.out_dim, dim=-1)  # each (B, N, out_dim)
        kp, qp = self.random_features(k), self.random_features(q)  # each (B, N, m)
        kv = kp.transpose(1, 2) @ v  # (B, m, out_dim)
        normaliser = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, N, 1)
        y = (qp @ kv) / (normaliser + 1e-8)  # (B, N, out_dim)
        return v + self.drop(self.proj(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class TokensToToken(nn.Module):
    """(B, in_chans, H, W) -> tokens (B, H/16 * W/16, embed_dim) and their grid (H/16, W/16)."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        *,
        token_dim: int = 64,
        tokens_type: str = "performer",
        performer_drop_rate: float = 0.1,
        random_feature_seed: int = 0,
    ) -> None:
        super().__init__()
        self.soft_split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        if tokens_type == "performer":
            # Each Performer draws its own features: seeds s and s + 1.
            self.attention1 = TokenPerformer(
                in_chans * 7 * 7, token_dim, drop=performer_drop_rate, seed=random_feature_seed
            )
            self.attention2 = TokenPerformer(
                token_dim * 3 * 3, token_dim, drop=performer_drop_rate, seed=random_feature_seed + 1
            )
        elif tokens_type == "transformer":
            self.attention1 = TokenTransformer(in_chans * 7 * 7, token_dim)
            self.attention2 = TokenTransformer(token_dim * 3 * 3, token_dim)
        else:
            raise ValueError(f"tokens_type must be 'performer' or 'transformer', got {tokens_type!r}")
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        B, _, H, W = x.shape
        # The soft splits' output grids: (H - 3) // 4 + 1, then ceil(h / 2) twice (H / 4, 8, 16 at multiples of 16).
        h4, w4 = (H - 3) // 4 + 1, (W - 3) // 4 + 1
        h8, w8 = (h4 + 1) // 2, (w4 + 1) // 2
        x = self.soft_split0(x).transpose(1, 2)  # (B, h4 * w4, C_in*49)
        x = self.attention1(x)  # (B, h4 * w4, token_dim)
        x = x.transpose(1, 2).reshape(B, -1, h4, w4)  # (B, token_dim, h4, w4)
        x = self.soft_split1(x).transpose(1, 2)  # (B, h8 * w8, token_dim*9)
        x = self.attention2(x)  # (B, h8 * w8, token_dim)
        x = x.transpose(1, 2).reshape(B, -1, h8, w8)  # (B, token_dim, h8, w8)
        x = self.soft_split2(x).transpose(1, 2)  # (B, h16 * w16, token_dim*9)
        return self.project(x), ((h8 + 1) // 2, (w8 + 1) // 2)  # (B, h16 * w16, embed_dim)


@dataclass(frozen=True)
class T2TConfig:
    """Architecture of a T2T-ViT; the defaults are T2T-ViT-14 (official ``t2t_vit_14``)."""

    # 'performer' (T2T-ViT-N) or 'transformer' (T2T-ViT_t-N): the T2T layers' attention.
    tokens_type: str = "performer"
    # Width of the tokens inside the T2T module (official token_dim).
    token_dim: int = 64
    embed_dim: int = 384
    depth: int = 14
    num_heads: int = 6
    mlp_ratio: float = 3.0
    qkv_bias: bool = False  # official T2T_ViT default
    # The grid the stored sinusoidal table covers (img_size / 16 per side); other grids build their own table.
    img_size: int | tuple[int, int] = 224
    # Seed of the Performers' fixed random features (the first T2T layer uses it, the second seed + 1).
    random_feature_seed: int = 0
    # 'token': the class token feeds the head (the paper); 'avg': the mean of the patch tokens.
    global_pool: str = "token"


class T2TViT(PlainTransformer):
    """T2T-ViT: (B, in_chans, H, W) -> logits (B, num_classes); any H, W >= 3 (one 7x7 soft-split window).

    The soft splits' grids are (H - 3) // 4 + 1, then rounded-up halves (the padded stride-2 unfolds): H / 16 at
    multiples of 16, 84 x 84 tokens at 1333 x 1333."""

    classifier = ("head",)

    def __init__(
        self,
        cfg: T2TConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        performer_drop_rate: float = 0.1,
        feature_blocks: tuple[int, ...] | list[int] | None = None,
    ) -> None:
        super().__init__(cfg, num_classes=num_classes, in_chans=in_chans)
        img_size = self._init_grid(T2T_STRIDE)
        self.min_input_size = 3  # one 7x7 soft-split window (padding 2)
        self.tokens_to_token = TokensToToken(
            in_chans,
            cfg.embed_dim,
            token_dim=cfg.token_dim,
            tokens_type=cfg.tokens_type,
            performer_drop_rate=performer_drop_rate,
            random_feature_seed=cfg.random_feature_seed,
        )
        # No convolution sees the image: the first weight over its channels is the first T2T layer's projection, a
        # linear over unfolded channel-major 7x7 patches (its norm1 spans them too).
        attention1 = "kqv" if cfg.tokens_type == "performer" else "attn.qkv"
        self.first_conv = f"tokens_to_token.attention1.{attention1}"
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        num_positions = 1 + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.empty(1, num_positions, cfg.embed_dim), requires_grad=False)
        self.pos_drop = nn.Dropout(drop_rate)
        self._build_encoder(nn.LayerNorm, num_classes, feature_blocks, drop_rate, attn_drop_rate, drop_path_rate)
        self.data_config = DataConfig(input_size=(in_chans, *img_size), crop_pct=0.9, interpolation="bicubic")
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """The official init: truncated normal 0.02 for linear weights and the class token; fixed tables."""
        self._init_linear_and_norm()
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_embed.copy_(sinusoid_table(self.pos_embed.shape[1], self.pos_embed.shape[2]))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.prepare_input(x)
        x, size = self.tokens_to_token(x)  # (B, h*w, C)
        # Traced, scripted and exported graphs always build the table (equal to the stored one at the configured
        # grid), so they are not frozen to the traced grid; torch.compile guards on the size and takes the stored one.
        if size == self.grid_size and not capturing_graph(size_guards=False):
            pos = self.pos_embed  # (1, 1 + h*w, C)
        else:
            pos = sinusoid_table(1 + size[0] * size[1], x.shape[-1]).to(x)  # (1, 1 + h*w, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos  # (B, 1 + h*w, C)
        return self.pos_drop(x), size

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rebuild a checkpoint's fixed sinusoidal ``pos_embed`` for the configured grid."""
        pos = state_dict.get("pos_embed")
        if pos is None or pos.shape == self.pos_embed.shape:
            return state_dict
        return {**state_dict, "pos_embed": sinusoid_table(self.pos_embed.shape[1], self.pos_embed.shape[2]).to(pos)}

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}


_T2T = "yitu-opensource/T2T-ViT README (params, GFLOPs = GMACs, top-1); params counted on the official code"


def _t2t(**kwargs) -> PaperFigures:
    return PaperFigures(source=_T2T, **kwargs)


@register_model(T2TViT, family="t2t_vit", paper=_t2t(params=4_310_222, exact_params=True, gmacs=1.15, top1=71.7))
def t2t_vit_7() -> T2TConfig:
    return T2TConfig(embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0)


@register_model(T2TViT, family="t2t_vit", paper=_t2t(params=5_889_230, exact_params=True, gmacs=1.52, top1=75.2))
def t2t_vit_10() -> T2TConfig:
    return T2TConfig(embed_dim=256, depth=10, num_heads=4, mlp_ratio=2.0)


@register_model(T2TViT, family="t2t_vit", paper=_t2t(params=6_941_902, exact_params=True, gmacs=1.76, top1=76.5))
def t2t_vit_12() -> T2TConfig:
    return T2TConfig(embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0)


@register_model(T2TViT, family="t2t_vit", paper=_t2t(params=21_545_550, exact_params=True, gmacs=4.78, top1=81.5))
def t2t_vit_14() -> T2TConfig:
    return T2TConfig(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0)


@register_model(T2TViT, family="t2t_vit", paper=_t2t(params=39_177_422, exact_params=True, gmacs=8.48, top1=81.9))
def t2t_vit_19() -> T2TConfig:
    return T2TConfig(embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0)


@register_model(T2TViT, family="t2t_vit", paper=_t2t(params=64_105_934, exact_params=True, gmacs=13.66, top1=82.3))
def t2t_vit_24() -> T2TConfig:
    return T2TConfig(embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0)


@register_model(T2TViT, family="t2t_vit", paper=_t2t(params=21_541_070, exact_params=True, gmacs=6.09, top1=81.7))
def t2t_vit_t_14() -> T2TConfig:
    return T2TConfig(tokens_type="transformer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0)


@register_model(T2TViT, family="t2t_vit", paper=_t2t(params=39_172_942, exact_params=True, gmacs=9.79, top1=82.4))
def t2t_vit_t_19() -> T2TConfig:
    return T2TConfig(tokens_type="transformer", embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0)


@register_model(T2TViT, family="t2t_vit", paper=_t2t(params=64_101_454, exact_params=True, gmacs=14.97, top1=82.6))
def t2t_vit_t_24() -> T2TConfig:
    return T2TConfig(tokens_type="transformer", embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0)
