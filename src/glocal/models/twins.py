"""Twins-PCPVT and Twins-SVT: pyramid transformers with global sub-sampled and locally-grouped attention.

Chu et al., "Twins: Revisiting the Design of Spatial Attention in Vision Transformers", NeurIPS 2021,
arXiv 2104.13840. Faithful to the official code, Meituan-AutoML/Twins ``gvt.py`` (``CPVTV2`` for PCPVT, ``ALTGVT``
for SVT); parameter names and shapes are the official ones, which timm's ``twins.py`` also uses, so official and timm
checkpoints map 1:1 (``patch_embeds.{i}.proj/norm``, ``blocks.{i}.{j}.norm1/attn.q/attn.kv/attn.sr/attn.norm/
attn.qkv/attn.proj/norm2/mlp.fc1/fc2``, ``pos_block.{i}.proj.0``, ``norm``, ``head``).

Layout of stage i (reductions 4, 8, 16, 32): a non-overlapping conv patch embedding with LayerNorm (eps 1e-5), the
stage's pre-norm transformer blocks (LayerNorm eps 1e-6), and a PEG (3x3 depth-wise conv plus a residual) right after
the stage's first block. PCPVT uses global sub-sampled attention (GSA) in every block; SVT alternates locally-grouped
attention (LSA, even blocks) and GSA (odd blocks). The head is the final LayerNorm (eps 1e-6), a mean over tokens and a
linear classifier; there is no class token and no absolute position embedding.

Cost of one attention layer on an H x W map (N = HW tokens, C channels), in multiply-accumulates, counted exactly as
:func:`glocal.analysis.analytic.lsa_macs` and :func:`~glocal.analysis.analytic.gsa_macs` do (the paper's Section 3.2
gives the orders):

* LSA with k x k windows: projections ``4 N C^2`` (qkv, proj) plus attention ``2 N k^2 C`` (q k^T and attn v inside
  each window), i.e. O(k1 k2 H W d) in the paper: linear in N at a fixed window. A map that is not a multiple of k is
  padded to Hp x Wp = ceil(H/k) k x ceil(W/k) k and N above becomes Hp Wp.
* GSA with sub-sampling ratio r: projections ``2 N C^2`` (q, proj) + ``N C^2`` (the r x r stride-r conv) +
  ``2 (N / r^2) C^2`` (kv), plus attention ``2 N (N / r^2) C``, i.e. O(H^2 W^2 d / (k1 k2)) with k1 k2 = r^2 in the
  paper: quadratic in N at a fixed ratio. With r = 1 (no sub-sampling) it is global attention, ``2 N^2 C``.

Input sizes: any height and width of at least :attr:`Twins.min_input_size` (32 for all six variants), square or
not, as the official code: every patch embedding and every GSA sub-sampling conv floors (200 x 264 gives stage maps
50 x 66, 25 x 33, 12 x 16 and 6 x 8, and 6 x 8 keys in every GSA), and LSA pads and masks where its window does not
divide the map. The minimum is the smallest side whose floored stage maps still cover every GSA's r x r sub-sampling
conv (stage 1: H/4 >= 8) and leave stage 4 one token; below it the official code fails inside a conv, glocal raises
a ``ValueError``. ``tests/test_twins.py`` checks logits against the official code at 200 x 264 and 224 x 224.

Deliberate deviations from the official code:

* LSA accepts maps that are not multiples of the window (the official ``GroupAttention`` fails, e.g. SVT at 320 x 320
  where stage 4 is 10 x 10): zero padding on the right and bottom plus a ``-inf`` key mask, the variant that the Twins
  port to mmsegmentation (PR #989) calls "more reasonable and accurate" (timm pads without masking). Maps that are
  multiples of the window take exactly the official path in eager mode; traced and exported graphs always pad and
  mask (by zero where nothing is padded), so they hold no branch on the input size. LSA applies its output
  projection per window before the padding is cropped (a per-token linear map, so the real positions are unchanged).
* ``forward_features`` returns the last stage's map (B, C4, H/32, W/32) before the final LayerNorm, and
  ``forward_head`` applies LayerNorm -> mean -> ``head``; the logits are the official ones, and the last pyramid map
  equals ``forward_features`` (a ConvNeXt-style head).
* The official single ``drop_rate`` drives the dropout after each patch embedding, after the attention projection and
  in the MLP, as in the official code; there is no separate head dropout (timm adds one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glocal.backends.cpu import capturing_graph
from glocal.layers.attention import MultiHeadAttention, attend
from glocal.layers.block import TransformerBlock, layer_norm_eps6
from glocal.layers.drop import drop_path_rates
from glocal.layers.heads import head_dim, merge_heads, split_heads
from glocal.layers.patch_embed import PatchEmbed
from glocal.layers.probe import AttentionProbe
from glocal.models._base import Backbone, DataConfig, FeatureInfo, tap
from glocal.registry import PaperFigures, register_model

__all__ = [
    "GlobalSubsampledAttention",
    "LocallyGroupedAttention",
    "PosConv",
    "Twins",
    "TwinsConfig",
]


class LocallyGroupedAttention(MultiHeadAttention):
    """LSA: multi-head self-attention inside non-overlapping ``window_size`` x ``window_size`` windows.

    Tokens (B, H*W, C) in row-major order with their grid size (H, W) -> (B, H*W, C). No relative position bias and
    no shift, as in the official ``GroupAttention``. A grid that is not a multiple of the window is zero-padded on the
    right and bottom and the padded keys are masked out; every window keeps at least one real key (the padding is
    smaller than a window), so no softmax row is fully masked.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        *,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        if window_size < 2:
            raise ValueError(f"LSA needs a window of at least 2 (a window of 1 attends to nothing), got {window_size}")
        self.window_size = window_size
        self.probe = AttentionProbe("lsa", window=window_size)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        H, W = size
        ws = self.window_size
        rows, cols = (H + ws - 1) // ws, (W + ws - 1) // ws  # windows down and across
        Hp, Wp = rows * ws, cols * ws
        pad_h, pad_w = Hp - H, Wp - W
        x = x.reshape(B, H, W, C)  # (B, H, W, C)
        bias = None
        # Traced, scripted and exported graphs always pad and mask (by zero when the map divides, changing nothing),
        # so they hold no branch on the input size; eager code and torch.compile (which guards on the size) skip
        # padding when the map divides, and keep the flash kernel (a mask sends SDPA to a slower one).
        if capturing_graph(size_guards=False) or pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C)
            bias = self._padding_bias(H, W, rows, cols, x.device).repeat(B, 1, 1, 1)  # (B*windows, 1, 1, ws*ws)
        x = x.reshape(B, rows, ws, cols, ws, C).transpose(2, 3)  # (B, rows, cols, ws, ws, C)
        x = x.reshape(B * rows * cols, ws * ws, C)  # (B*windows, ws*ws, C)
        x = super().forward(x, bias)  # (B*windows, ws*ws, C)
        x = x.reshape(B, rows, cols, ws, ws, C).transpose(2, 3)  # (B, rows, ws, cols, ws, C)
        x = x.reshape(B, Hp, Wp, C)[:, :H, :W]  # (B, H, W, C)
        return x.reshape(B, N, C)  # (B, N, C)

    def _padding_bias(self, H: int, W: int, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        """Additive key mask (windows, 1, 1, ws*ws) of the padded map: 0 for real tokens, -inf for padding."""
        ws = self.window_size
        pad_rows = torch.arange(rows * ws, device=device) >= H
        pad_cols = torch.arange(cols * ws, device=device) >= W
        padded = (pad_rows[:, None] | pad_cols[None, :]).reshape(rows, ws, cols, ws).transpose(1, 2)
        # padded: (rows, cols, ws, ws)
        padded = padded.reshape(-1, 1, 1, ws * ws)  # (windows, 1, 1, ws*ws)
        return torch.zeros(padded.shape, device=device).masked_fill(padded, float("-inf"))


class GlobalSubsampledAttention(nn.Module):
    """GSA: every query attends to keys and values sub-sampled by a stride-``sr_ratio`` conv.

    Tokens (B, H*W, C) with their grid size (H, W) -> (B, H*W, C). Queries stay at full resolution. With
    ``sr_ratio > 1`` the map is reduced by a ``sr_ratio`` x ``sr_ratio`` conv of the same stride followed by its own
    LayerNorm (default eps 1e-5, as in the official code); with ``sr_ratio == 1`` neither module exists and this is
    plain global attention (separate ``q`` and ``kv`` projections keep the official parameter names). The conv floors
    as in the official code: a map that is not a multiple of ``sr_ratio`` loses its last rows and columns for the
    keys only; it must be at least ``sr_ratio`` on each side (the model's ``check_input`` guarantees it).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        *,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim(dim, num_heads)
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr = None
            self.norm = None
        self.probe = AttentionProbe("gsa", ratio=sr_ratio)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        q = split_heads(self.q(x), self.num_heads)  # (B, heads, N, head_dim)
        if self.sr is not None:
            x = x.transpose(1, 2).reshape(B, C, size[0], size[1])  # (B, C, H, W)
            x = self.sr(x).flatten(2).transpose(1, 2)  # (B, N / sr^2, C)
            x = self.norm(x)
        k, v = split_heads(self.kv(x), self.num_heads, parts=2).unbind(0)  # each (B, heads, Nk, head_dim)
        x = attend(q, k, v, probe=self.probe, scale=self.scale, dropout_p=self.attn_drop if self.training else 0.0)
        x = merge_heads(x)  # (B, N, C)
        return self.proj_drop(self.proj(x))


class PosConv(nn.Module):
    """PEG (Chu et al., arXiv 2102.10882): tokens (B, H*W, C) -> tokens + depth-wise 3x3 conv of their map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        # A one-element Sequential keeps the official parameter names (``pos_block.{i}.proj.0``).
        self.proj = nn.Sequential(nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B, N, C = x.shape
        fmap = x.transpose(1, 2).reshape(B, C, size[0], size[1])  # (B, C, H, W)
        return (self.proj(fmap) + fmap).flatten(2).transpose(1, 2)  # (B, N, C)


@dataclass(frozen=True)
class TwinsConfig:
    """Architecture of a Twins model; one entry per stage in every tuple. Defaults are Twins-PCPVT-S."""

    embed_dims: tuple[int, ...] = (64, 128, 320, 512)
    # Head dim 64 for PCPVT, 32 for SVT.
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    # GSA key/value sub-sampling per stage: every stage's keys form a 7x7 grid at 224 px.
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    # SVT: LSA window per stage, used in the even blocks of each stage (LSA, GSA, LSA, ...); ``None``: PCPVT,
    # GSA in every block.
    window_sizes: tuple[int, ...] | None = None
    # Stride of the first patch embedding; later stages halve the map with 2x2 patches.
    patch_size: int = 4
    qkv_bias: bool = True
    # The data config's input size (Twins has no size-dependent parameter).
    img_size: int | tuple[int, int] = 224


def _init_weights(module: nn.Module) -> None:
    """The official initialisation: trunc-normal(0.02) linears, unit LayerNorms, He-normal (fan-out) convs."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _min_side(cfg: TwinsConfig) -> int:
    """The smallest image side whose floored stage maps (side // reduction_i) are at least every GSA's sub-sampling
    ratio and 1 at the last stage: max_i(sr_i * reduction_i)."""
    return max(max(sr, 1) * cfg.patch_size * 2**i for i, sr in enumerate(cfg.sr_ratios))


class Twins(Backbone):
    """Twins-PCPVT / Twins-SVT: four stages of conv patch embedding, transformer blocks and a PEG.

    ``forward_features``: (B, in_chans, H, W) -> the last stage's map (B, C4, H/32, W/32), before the final norm.
    ``forward_intermediates``: the stage maps (B, C_i, H/2^(i+2), W/2^(i+2)); ``norm=True`` applies the final
    LayerNorm to the last stage's map (the only stage with a norm).
    """

    first_conv = "patch_embeds.0.proj"
    classifier = ("head",)
    final_norm = "norm"

    def __init__(
        self,
        cfg: TwinsConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(cfg, num_classes=num_classes, in_chans=in_chans)
        num_stages = len(cfg.depths)
        per_stage = {"embed_dims": cfg.embed_dims, "num_heads": cfg.num_heads, "mlp_ratios": cfg.mlp_ratios}
        per_stage["sr_ratios"] = cfg.sr_ratios
        if cfg.window_sizes is not None:
            per_stage["window_sizes"] = cfg.window_sizes
        wrong = {k: v for k, v in per_stage.items() if len(v) != num_stages}
        if wrong:
            raise ValueError(f"every per-stage field needs {num_stages} entries (depths={cfg.depths}), got {wrong}")
        img_size = self.img_size

        reductions = [cfg.patch_size * 2**i for i in range(num_stages)]
        self.min_input_size = _min_side(cfg)
        # Exports: maps that every patch embedding and sub-sampling conv tiles exactly (32 for every variant).
        self.export_divisor = math.lcm(*(r * s for r, s in zip(reductions, cfg.sr_ratios, strict=True)))

        self.patch_embeds = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.pos_block = nn.ModuleList()
        taps = []
        in_chs = in_chans
        rates = drop_path_rates(drop_path_rate, cfg.depths)
        for i, dim in enumerate(cfg.embed_dims):
            patch = cfg.patch_size if i == 0 else 2
            self.patch_embeds.append(PatchEmbed(in_chs, dim, patch, norm_layer=nn.LayerNorm))
            stage = []
            for j in range(cfg.depths[i]):
                if cfg.window_sizes is not None and j % 2 == 0:
                    attn = LocallyGroupedAttention(
                        dim,
                        cfg.num_heads[i],
                        cfg.window_sizes[i],
                        qkv_bias=cfg.qkv_bias,
                        attn_drop=attn_drop_rate,
                        proj_drop=drop_rate,
                    )
                else:
                    attn = GlobalSubsampledAttention(
                        dim,
                        cfg.num_heads[i],
                        cfg.sr_ratios[i],
                        qkv_bias=cfg.qkv_bias,
                        attn_drop=attn_drop_rate,
                        proj_drop=drop_rate,
                    )
                stage.append(
                    TransformerBlock(
                        dim,
                        attn,
                        mlp_ratio=cfg.mlp_ratios[i],
                        drop=drop_rate,
                        drop_path=rates[i][j],
                        norm_layer=layer_norm_eps6,
                    )
                )
            self.blocks.append(nn.ModuleList(stage))
            self.pos_block.append(PosConv(dim))
            taps.append(tap(dim, reductions[i], f"blocks.{i}"))
            in_chs = dim
        self.feature_info = FeatureInfo(taps)
        self.pos_drop = nn.Dropout(drop_rate)

        self.num_features = cfg.embed_dims[-1]
        self.norm = layer_norm_eps6(self.num_features)
        self.head = self._make_head(num_classes)
        self.data_config = DataConfig(input_size=(in_chans, *img_size), crop_pct=0.9, interpolation="bicubic")
        self.apply(_init_weights)

    def _stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_i, H / patch, W / patch) through stage ``index``."""
        x, size = self.patch_embeds[index](x)  # (B, N, C_i)
        x = self.pos_drop(x)
        for j, block in enumerate(self.blocks[index]):
            x = block(x, size)
            if j == 0:
                x = self.pos_block[index](x, size)  # PEG after the first block
        return x.transpose(1, 2).reshape(x.shape[0], -1, size[0], size[1])  # (B, C_i, H_i, W_i)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare_input(x)
        for i in range(len(self.blocks)):
            x = self._stage(i, x)
        return x  # (B, C4, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.flatten(2).transpose(1, 2)).mean(dim=1)  # (B, num_features)
        return x if pre_logits else self.head(x)

    def _intermediates(self, x, taps, *, norm, stop_early):
        """The stage maps; ``norm=True`` applies the final LayerNorm to the last stage's (the only one it fits)."""
        x = self.prepare_input(x)
        last = taps[-1] if stop_early else len(self.blocks) - 1
        maps = []
        for i in range(last + 1):
            x = self._stage(i, x)
            if i in taps:
                if norm and i == len(self.feature_info) - 1:
                    B, C, H, W = x.shape
                    maps.append(self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, H, W))
                else:
                    maps.append(x)
        return x, maps  # x: (B, C_last, H_last, W_last)

    def _prune_after(self, last_tap: int) -> None:
        keep = last_tap + 1
        self.patch_embeds = self.patch_embeds[:keep]
        self.blocks = self.blocks[:keep]
        self.pos_block = self.pos_block[:keep]
        if keep < len(self.feature_info):
            self.norm = nn.Identity()  # the final norm only ever applies to the last stage's map

    def _init_head(self, module: nn.Module) -> None:
        _init_weights(module)

    def no_weight_decay(self) -> set[str]:
        # The official code exempts the PEG convs from weight decay.
        return {f"pos_block.{name}" for name, _ in self.pos_block.named_parameters()}


_PCPVT = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4))
_SRC = (
    "Meituan-AutoML/Twins gvt.py:{fn}; params: official training log n_parameters; top-1: official README; "
    "GMACs: measured with explicit attention on the official code (reference table)"
)


@register_model(Twins, family="twins", paper=PaperFigures(24_106_216, exact_params=True, gmacs=3.81, top1=81.2,
                source=_SRC.format(fn="pcpvt_small_v0")))  # fmt: skip
def twins_pcpvt_small() -> TwinsConfig:
    return TwinsConfig(**_PCPVT, depths=(3, 4, 6, 3))


@register_model(Twins, family="twins", paper=PaperFigures(43_828_456, exact_params=True, gmacs=6.65, top1=82.7,
                source=_SRC.format(fn="pcpvt_base_v0")))  # fmt: skip
def twins_pcpvt_base() -> TwinsConfig:
    return TwinsConfig(**_PCPVT, depths=(3, 4, 18, 3))


@register_model(Twins, family="twins", paper=PaperFigures(60_989_672, exact_params=True, gmacs=9.81, top1=83.1,
                source=_SRC.format(fn="pcpvt_large_v0")))  # fmt: skip
def twins_pcpvt_large() -> TwinsConfig:
    return TwinsConfig(**_PCPVT, depths=(3, 8, 27, 3))


@register_model(Twins, family="twins", paper=PaperFigures(24_060_776, exact_params=True, gmacs=2.93, top1=81.7,
                source=_SRC.format(fn="alt_gvt_small")))  # fmt: skip
def twins_svt_small() -> TwinsConfig:
    return TwinsConfig(
        embed_dims=(64, 128, 256, 512),
        num_heads=(2, 4, 8, 16),
        mlp_ratios=(4, 4, 4, 4),
        depths=(2, 2, 10, 4),
        window_sizes=(7, 7, 7, 7),
    )


@register_model(Twins, family="twins", paper=PaperFigures(56_070_952, exact_params=True, gmacs=8.56, top1=83.2,
                source=_SRC.format(fn="alt_gvt_base")))  # fmt: skip
def twins_svt_base() -> TwinsConfig:
    return TwinsConfig(
        embed_dims=(96, 192, 384, 768),
        num_heads=(3, 6, 12, 24),
        mlp_ratios=(4, 4, 4, 4),
        depths=(2, 2, 18, 2),
        window_sizes=(7, 7, 7, 7),
    )


@register_model(Twins, family="twins", paper=PaperFigures(99_271_400, exact_params=True, gmacs=15.11, top1=83.7,
                source=_SRC.format(fn="alt_gvt_large")))  # fmt: skip
def twins_svt_large() -> TwinsConfig:
    return TwinsConfig(
        embed_dims=(128, 256, 512, 1024),
        num_heads=(4, 8, 16, 32),
        mlp_ratios=(4, 4, 4, 4),
        depths=(2, 2, 18, 2),
        window_sizes=(7, 7, 7, 7),
    )
