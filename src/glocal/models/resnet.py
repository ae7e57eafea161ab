"""ResNet and its attention-augmented variants: SE, GC, non-local, simplified non-local and BoTNet.

Papers and the code each variant is faithful to:

* ResNet, He et al., arXiv 1512.03385; layout of torchvision's ``resnet50/101`` (stride on the 3x3, "v1.5").
* SE-ResNet, Hu et al., arXiv 1709.01507; hujie-frank/SENet ``SE-ResNet-{50,101}.prototxt`` (stride on the first
  1x1, 3x3/2 max-pool without padding in ceil mode, r=16, biased 1x1 convs in the SE unit).
* GCNet, Cao et al., arXiv 1904.11492; xvjiarui/GCNet ``ContextBlock`` with ``stage_with_gcb=(F, T, T, T)``: a GC
  block after conv3+bn3 and before the residual add of every block of c3-c5, ratio 1/16.
* Non-local, Wang et al., arXiv 1711.07971; facebookresearch/video-nonlocal-net's embedded Gaussian block, placed as
  in GCNet's comparison: one block in c4, after its second-to-last residual block (before the last one).
* Simplified NL, GCNet Section 3.3: at the same place as the NL block.
* BoTNet, Srinivas et al., arXiv 2101.11605; the authors' TF gist (BoT50): the three 3x3 convs of c5 become MHSA with
  4 heads and 2-D relative position logits; the first c5 block attends at stride 16 and then average-pools 2x2.
* ``botnet50_lj``: leaderj1001/BottleneckTransformers ``model.py`` ``ResNet50``, the PyTorch code BoTNet write-ups
  point to, whose MHSA differs from the paper (:class:`~glocal.layers.bot.AbsPosMHSA2d`: biased q/k/v convs,
  per-head absolute row/column embeddings in a content-position term, no d^-0.5 scale) and whose projection
  shortcuts carry a bias. 20,875,560 parameters and its logits under its state dict (layout
  ``bottleneck-transformers-lj``, loadable by ``checkpoint=``). Deviations: any input size (its embeddings are
  resampled to the map seen; the original only runs at the size it was built for); its ``Dropout(0.3)`` before
  ``fc`` is the run-time ``drop_rate`` (default 0; pass ``drop_rate=0.3`` for its recipe); convs start from glocal's
  He-normal init rather than PyTorch's default.

Block attention is data: ``block_attn`` ('se' | 'gc' | 'nl' | 'snl') with stages, blocks, position, ratio,
pooling, fusion and norm as config fields, each ``None`` meaning the paper's choice for that block (see
:data:`BLOCK_ATTN_DEFAULTS`). So GCNet's Table 2 ablations are one-liners, e.g.
``create_model("resnet50", block_attn="gc", attn_pooling="avg", attn_fusion="scale")``.

Deliberate deviations:

* BoTNet's relative-position tables are built for ``img_size`` (224 -> 27 rows for the 14x14 block, 13 for 7x7) and
  linearly resampled over relative offsets when a forward pass sees another size; the gist supports one fixed size.
* The simplified NL block's transform starts at zero (identity block), following GC's last-zero init; the paper
  gives no initialisation for it.
* BoTNet's strided MHSA block pools 2x2 rounding up (the official gist's ``AvgPool2D`` at odd maps would not
  match its shortcut), so any input size works; at even stride-16 maps (every multiple of 32) it is the plain pool.
* BoTNet's 1x1 shortcut is the torchvision projection (1x1 conv with stride, BN), the attention being the only change.
* The official SENet takes BGR Caffe inputs with mean subtraction only; glocal's data config uses RGB with ImageNet
  mean/std like timm's port of the same weights.
* SE, GC and SNL share one implementation (:class:`~glocal.layers.context.GlobalContext`), the framework of GCNet
  Section 4.1; their parameters and outputs equal the separate official modules'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glocal.layers.bot import AbsPosMHSA2d, MHSA2d
from glocal.layers.context import GlobalContext
from glocal.layers.non_local import NonLocal2d
from glocal.layers.rel_pos import resample_table
from glocal.models._base import Backbone, DataConfig, FeatureInfo, tap
from glocal.registry import PaperFigures, register_model

__all__ = ["BLOCK_ATTN_DEFAULTS", "Bottleneck", "ResNet", "ResNetConfig"]


@dataclass(frozen=True)
class ResNetConfig:
    """Architecture of a bottleneck ResNet and the attention it carries.

    Stages are numbered as the papers do: c2..c5 are ``layer1``..``layer4`` (strides 4, 8, 16, 32).
    """

    depths: tuple[int, ...] = (3, 4, 6, 3)
    # Bottleneck widths; each stage outputs 4x its width (256, 512, 1024, 2048).
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem_width: int = 64
    # Caffe ResNet/SENet stride on the first 1x1 ("v1"); torchvision on the 3x3 ("v1.5", +0.23 GMACs, +0.5% top-1).
    stride_in_1x1: bool = False
    # SENet's Caffe max-pool: 3x3/2 without padding, rounding up; torchvision pads by 1. Both give 56x56 at 224.
    stem_pool_ceil: bool = False
    # Block attention: None | 'se' | 'gc' | 'nl' | 'snl'; the attn_* fields below default to the paper's choice.
    block_attn: str | None = None
    attn_stages: tuple[int, ...] | None = None
    # Block indices within each chosen stage (negative counts from the end); None means every block.
    attn_blocks: tuple[int, ...] | None = None
    # 'after_conv3': after conv3+bn3, before the residual add (SE, GC); 'after_add': on the block's output after the
    # residual add and ReLU (NL, SNL: a block inserted between residual blocks).
    attn_position: str | None = None
    # Bottleneck ratio as a fraction: 1/16 for SE and GC, 1/2 (inner width C/2) for NL.
    attn_ratio: float | None = None
    attn_pooling: str | None = None  # 'att' (attention pooling) | 'avg' (SE/GC only)
    attn_fusion: str | None = None  # 'add' | 'scale' (SE/GC only)
    attn_norm: bool | None = None  # LayerNorm in the bottleneck transform (SE/GC only)
    # NL only: 2x2 max-pool for phi and g, as the video recipe; GCNet's image comparison runs without it.
    nl_subsample: bool = False
    # Stages whose 3x3 convs become multi-head self-attention (BoTNet: (5,)).
    bot_stages: tuple[int, ...] = ()
    bot_heads: int = 4
    # 'relative': the paper's MHSA (TF gist, 2-D relative logits); 'absolute': leaderj1001/BottleneckTransformers'.
    bot_mhsa: str = "relative"
    # Biased 1x1 projection shortcuts (leaderj1001's code); torchvision's have no bias (a BN follows).
    shortcut_bias: bool = False
    # Zero-init the last BN of every block (Goyal et al.); BoTNet's blocks start so.
    zero_init_last: bool = False
    # The input size BoTNet's position tables are built for (other sizes resample them) and the data config's.
    img_size: int | tuple[int, int] = 224


# The paper's choice for every unset attn_* field, per block kind.
BLOCK_ATTN_DEFAULTS: dict[str, dict] = {
    "se": dict(stages=(2, 3, 4, 5), blocks=None, position="after_conv3", ratio=1 / 16, pooling="avg", fusion="scale",
               norm=False),
    "gc": dict(stages=(3, 4, 5), blocks=None, position="after_conv3", ratio=1 / 16, pooling="att", fusion="add",
               norm=True),
    "nl": dict(stages=(4,), blocks=(-2,), position="after_add", ratio=1 / 2),
    "snl": dict(stages=(4,), blocks=(-2,), position="after_add"),
}  # fmt: skip


@dataclass(frozen=True)
class _BlockAttn:
    """The resolved block-attention settings, every field set."""

    kind: str
    stages: tuple[int, ...]
    blocks: tuple[int, ...] | None
    position: str
    ratio: float | None
    pooling: str | None
    fusion: str | None
    norm: bool | None
    subsample: bool

    def make(self, channels: int) -> nn.Module:
        if self.kind == "nl":
            return NonLocal2d(channels, self.ratio, subsample=self.subsample)
        if self.kind == "snl":
            return GlobalContext(channels, hidden=None, pooling="att", fusion="add")
        return GlobalContext(
            channels,
            hidden=int(channels * self.ratio),
            pooling=self.pooling,
            fusion=self.fusion,
            norm=self.norm,
            zero_init_last=self.fusion == "add",
        )

    def applies_to(self, stage: int, block: int, depth: int) -> bool:
        if stage not in self.stages:
            return False
        return self.blocks is None or block in {b % depth for b in self.blocks}


def _resolve_block_attn(cfg: ResNetConfig) -> _BlockAttn | None:
    given = dict(
        stages=cfg.attn_stages,
        blocks=cfg.attn_blocks,
        position=cfg.attn_position,
        ratio=cfg.attn_ratio,
        pooling=cfg.attn_pooling,
        fusion=cfg.attn_fusion,
        norm=cfg.attn_norm,
    )
    if cfg.block_attn is None:
        set_fields = [f"attn_{k}" for k, v in given.items() if v is not None]
        if set_fields:
            raise ValueError(f"{', '.join(set_fields)} given without block_attn ('se', 'gc', 'nl' or 'snl')")
        return None
    if cfg.block_attn not in BLOCK_ATTN_DEFAULTS:
        raise ValueError(f"block_attn must be one of {sorted(BLOCK_ATTN_DEFAULTS)}, got {cfg.block_attn!r}")
    defaults = BLOCK_ATTN_DEFAULTS[cfg.block_attn]
    not_applicable = [f"attn_{k}" for k, v in given.items() if v is not None and k not in defaults]
    if not_applicable:
        raise ValueError(f"{', '.join(not_applicable)} do not apply to block_attn={cfg.block_attn!r}")
    resolved = {k: (given[k] if given[k] is not None else defaults.get(k)) for k in given}
    if not set(resolved["stages"]) <= {2, 3, 4, 5}:
        raise ValueError(f"attn_stages are numbered 2..5 (c2..c5), got {resolved['stages']}")
    if resolved["position"] not in ("after_conv3", "after_add"):
        raise ValueError(f"attn_position must be 'after_conv3' or 'after_add', got {resolved['position']!r}")
    return _BlockAttn(kind=cfg.block_attn, subsample=cfg.nl_subsample, **resolved)


def _conv_bn(
    in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, bias: bool = False
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)
    return conv, nn.BatchNorm2d(out_chs)


class CeilMaxPool(nn.Module):
    """The Caffe SENet stem's 3x3 stride-2 max-pool with ``ceil_mode=True``, written as a ``-inf`` pad of one row and
    column (bottom, right) and a floor-mode pool: the same windows and values at every size (``ceil((H - 3) / 2) + 1
    == floor((H - 2) / 2) + 1``; the padded row is in a window only where ceil mode adds a partial one), but
    exportable with dynamic sizes, which ``ceil_mode`` is not (``torch.export`` asserts on its size formula)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), kernel_size=3, stride=2)


class CeilAvgPool2x2(nn.Module):
    """2x2 stride-2 average pooling that rounds up, as the strided 1x1 shortcut does (``ceil(H / 2)``): a replicated
    last row and column, then a floor-mode pool. Where ``ceil_mode=True`` adds a partial window (its divisor being
    the in-bounds count) the copies average to the same value; an even map drops the pad unused, so it equals
    ``nn.AvgPool2d(2, 2)`` there. A static pad keeps graphs with dynamic sizes free of a branch on the parity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), kernel_size=2, stride=2)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (or MHSA) -> 1x1 residual block, (B, in_chs, H, W) -> (B, 4 * width, H / stride, W / stride).

    ``context`` is an optional block attention applied after conv3+bn3 (``context_after_add=False``) or to the
    block's output (``True``). With ``mhsa_heads`` the 3x3 conv (still named ``conv2``, the position it replaces) is
    BoTNet's MHSA at the input resolution, followed by 2x2 average pooling when the block strides.
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        width: int,
        stride: int = 1,
        *,
        stride_in_1x1: bool = False,
        context: nn.Module | None = None,
        context_after_add: bool = False,
        mhsa_heads: int | None = None,
        mhsa_layer: type[nn.Module] = MHSA2d,
        feat_size: tuple[int, int] = (14, 14),
        shortcut_bias: bool = False,
    ) -> None:
        super().__init__()
        out_chs = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 and mhsa_heads is None else (1, stride)
        self.conv1, self.bn1 = _conv_bn(in_chs, width, 1, stride_1x1)
        if mhsa_heads is None:
            self.conv2, self.bn2 = _conv_bn(width, width, 3, stride_3x3)
            self.pool = nn.Identity()
        else:
            self.conv2 = mhsa_layer(width, mhsa_heads, feat_size)
            self.pool = CeilAvgPool2x2() if stride_3x3 == 2 else nn.Identity()
            self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = _conv_bn(width, out_chs, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(*_conv_bn(in_chs, out_chs, 1, stride, bias=shortcut_bias))
            if stride != 1 or in_chs != out_chs
            else None
        )
        self.context = context
        self.context_after_add = context_after_add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.pool(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        if self.context is not None and not self.context_after_add:
            out = self.context(out)
        out += shortcut  # in place, as timm: one activation-sized allocation less per block (about 8% of a step)
        out = self.relu(out)
        if self.context is not None and self.context_after_add:
            out = self.context(out)
        return out


class ResNet(Backbone):
    """Bottleneck ResNet with pluggable block attention; torchvision's module names (``layer1``..``layer4``, ``fc``).

    Input sizes: any H, W >= 1 (>= 3 with SENet's unpadded 3x3 stem pool), square or not: each stride-2 conv and
    pool rounds up, as torchvision's (the SENet stem's ceil-mode pool too), so stage i's map is ``ceil(H / 2^(i+1))``.
    BoTNet's strided MHSA block pools 2x2 rounding up like its shortcut (:class:`CeilAvgPool2x2`), and its relative
    tables are resampled to the map seen.
    """

    first_conv = "conv1"
    classifier = ("fc",)

    def __init__(
        self,
        cfg: ResNetConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(cfg, num_classes=num_classes, in_chans=in_chans)
        if len(cfg.depths) != 4 or len(cfg.widths) != 4:
            raise ValueError(f"a ResNet has 4 stages: got depths={cfg.depths}, widths={cfg.widths}")
        if not set(cfg.bot_stages) <= {2, 3, 4, 5}:
            raise ValueError(f"bot_stages are numbered 2..5 (c2..c5), got {cfg.bot_stages}")
        mhsa_layers = {"relative": MHSA2d, "absolute": AbsPosMHSA2d}
        if cfg.bot_mhsa not in mhsa_layers:
            raise ValueError(f"bot_mhsa must be one of {sorted(mhsa_layers)}, got {cfg.bot_mhsa!r}")
        img_size = self.img_size
        block_attn = _resolve_block_attn(cfg)

        self.conv1 = nn.Conv2d(in_chans, cfg.stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.min_input_size = 3 if cfg.stem_pool_ceil else 1
        self.export_divisor = 32 if cfg.bot_stages else 1  # BoT's tables are sized for an even stride-16 map
        if cfg.stem_pool_ceil:
            self.maxpool = CeilMaxPool()
        else:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_chs, reduction = cfg.stem_width, 4
        # timm's taps: the stem's activation (stride 2), then c2..c5.
        taps = [tap(cfg.stem_width, 2, "relu")]
        for index, (depth, width) in enumerate(zip(cfg.depths, cfg.widths, strict=True)):
            stage = index + 2
            stride = 1 if index == 0 else 2
            blocks = []
            for b in range(depth):
                block_stride = stride if b == 0 else 1
                # A BoT block attends at its input resolution (before its own downsampling).
                feat_size = (
                    (img_size[0] // reduction, img_size[1] // reduction)
                    if b == 0
                    else (img_size[0] // (reduction * stride), img_size[1] // (reduction * stride))
                )
                context = None
                if block_attn is not None and block_attn.applies_to(stage, b, depth):
                    context = block_attn.make(width * Bottleneck.expansion)
                blocks.append(
                    Bottleneck(
                        in_chs,
                        width,
                        block_stride,
                        stride_in_1x1=cfg.stride_in_1x1,
                        context=context,
                        context_after_add=block_attn is not None and block_attn.position == "after_add",
                        mhsa_heads=cfg.bot_heads if stage in cfg.bot_stages else None,
                        mhsa_layer=mhsa_layers[cfg.bot_mhsa],
                        feat_size=feat_size,
                        shortcut_bias=cfg.shortcut_bias,
                    )
                )
                in_chs = width * Bottleneck.expansion
            reduction *= stride
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            taps.append(tap(in_chs, reduction, f"layer{index + 1}"))
        self.feature_info = FeatureInfo(taps)

        self.num_features = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = self._make_head(num_classes)
        self.data_config = DataConfig(input_size=(in_chans, *img_size), interpolation="bilinear")
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Bottleneck) and self.cfg.zero_init_last:
                nn.init.zeros_(m.bn3.weight)
            if isinstance(m, (GlobalContext, NonLocal2d, MHSA2d, AbsPosMHSA2d)):
                m.init_weights()

    @property
    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i}") for i in range(1, 5) if hasattr(self, f"layer{i}")]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare_input(x)
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x  # (B, 2048, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.global_pool(x).flatten(1))  # (B, num_features)
        return x if pre_logits else self.fc(x)

    def _intermediates(self, x, taps, *, norm, stop_early):
        """Taps: 0 the stem's activation (B, 64, H/2, W/2), 1..4 the stages c2..c5; ``norm`` has nothing to apply."""
        x = self.relu(self.bn1(self.conv1(self.prepare_input(x))))  # (B, 64, H/2, W/2)
        maps = [x] if 0 in taps else []
        last = taps[-1] if stop_early else len(self.feature_info) - 1
        if last > 0:
            x = self.maxpool(x)  # (B, 64, H/4, W/4)
        for i, stage in enumerate(self.stages[:last], start=1):
            x = stage(x)
            if i in taps:
                maps.append(x)
        return x, maps

    def _prune_after(self, last_tap: int) -> None:
        for i in range(last_tap + 1, 5):
            delattr(self, f"layer{i}")

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resample BoTNet position tables saved for another input size to this model's tables: relative tables
        over offsets, leaderj1001's absolute ``rel_h`` (columns) and ``rel_w`` (rows) linearly along their axis."""
        own = self.state_dict()
        out = dict(state_dict)
        for key, value in state_dict.items():
            if key not in own or value.shape == own[key].shape:
                continue
            if key.endswith((".rel_pos.height", ".rel_pos.width")):
                out[key] = resample_table(value, (own[key].shape[0] + 1) // 2)
            elif key.endswith((".conv2.rel_h", ".conv2.rel_w")):
                size = own[key].shape[-2:]
                out[key] = F.interpolate(value.flatten(1, 2), size=size, mode="bilinear", align_corners=False).reshape(
                    own[key].shape
                )
        return out


_R50 = (3, 4, 6, 3)
_R101 = (3, 4, 23, 3)
_TV = "torchvision resnet; He et al. 2016 README (1-crop top-1); GMACs measured v1.5"
_SE = "hujie-frank/SENet README (retrained top-1); params/GMACs measured on the official prototxt layout"
_GC = "GCNet paper Table 1 (77.70 top-1, 4.13 GFLOPs, 28.08M); official ContextBlock, stage_with_gcb=(F,T,T,T)"
_NL = "video-nonlocal-net embedded Gaussian, 1 block before the last c4 block (GCNet's setting); measured figures"
_LJ = (
    "leaderj1001/BottleneckTransformers model.py ResNet50; params and GMACs (torch FlopCounter, 224) counted on it; "
    "no released weights or top-1"
)
_BOT = "BoTNet paper (BoT50, 20.8M); official TF gist, measured 4.03 GMACs; no ImageNet top-1 for BoT50 at 224"


@register_model(ResNet, family="resnet", paper=PaperFigures(25_557_032, exact_params=True, gmacs=4.09, top1=76.13,
                source=_TV))  # fmt: skip
def resnet50() -> ResNetConfig:
    return ResNetConfig(depths=_R50)


@register_model(ResNet, family="resnet", paper=PaperFigures(44_549_160, exact_params=True, gmacs=7.80, top1=77.37,
                source=_TV))  # fmt: skip
def resnet101() -> ResNetConfig:
    return ResNetConfig(depths=_R101)


@register_model(ResNet, family="resnet", paper=PaperFigures(28_088_024, exact_params=True, gmacs=3.86, top1=77.63,
                source=_SE))  # fmt: skip
def seresnet50() -> ResNetConfig:
    return ResNetConfig(depths=_R50, stride_in_1x1=True, stem_pool_ceil=True, block_attn="se")


@register_model(ResNet, family="resnet", paper=PaperFigures(49_326_872, exact_params=True, gmacs=7.575, top1=78.25,
                source=_SE))  # fmt: skip
def seresnet101() -> ResNetConfig:
    return ResNetConfig(depths=_R101, stride_in_1x1=True, stem_pool_ceil=True, block_attn="se")


@register_model(ResNet, family="resnet", paper=PaperFigures(28_080_000, gmacs=4.10, top1=77.70, source=_GC),
                pinned_params=28_078_773)  # fmt: skip
def gcresnet50() -> ResNetConfig:
    return ResNetConfig(depths=_R50, block_attn="gc")


@register_model(ResNet, family="resnet", paper=PaperFigures(49_340_000, gmacs=7.82, source=_GC),
                pinned_params=49_337_222)  # fmt: skip
def gcresnet101() -> ResNetConfig:
    return ResNetConfig(depths=_R101, block_attn="gc")


@register_model(ResNet, family="resnet", paper=PaperFigures(27_660_000, gmacs=4.54, source=_NL),
                pinned_params=27_658_792)  # fmt: skip
def nlresnet50() -> ResNetConfig:
    return ResNetConfig(depths=_R50, block_attn="nl")


@register_model(ResNet, family="resnet", paper=PaperFigures(26_610_000, gmacs=4.09, source=_NL),
                pinned_params=26_607_657)  # fmt: skip
def snlresnet50() -> ResNetConfig:
    return ResNetConfig(depths=_R50, block_attn="snl")


@register_model(ResNet, family="resnet", paper=PaperFigures(20_800_000, gmacs=4.03, source=_BOT),
                pinned_params=20_852_008)  # fmt: skip
def botnet50() -> ResNetConfig:
    return ResNetConfig(depths=_R50, bot_stages=(5,), zero_init_last=True)


@register_model(ResNet, family="resnet", paper=PaperFigures(20_875_560, exact_params=True, gmacs=4.04, source=_LJ))
def botnet50_lj() -> ResNetConfig:
    return ResNetConfig(depths=_R50, bot_stages=(5,), bot_mhsa="absolute", shortcut_bias=True)
