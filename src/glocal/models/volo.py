"""VOLO: Vision Outlooker, outlook attention for fine-level features plus a transformer for global context.

Yuan et al., "VOLO: Vision Outlooker for Visual Recognition", arXiv 2106.13112. Faithful to the official code,
sail-sg/volo ``models/volo.py`` (``volo_d1`` .. ``volo_d5``), whose parameter names and shapes timm's ``volo.py`` also
uses, so official and timm checkpoints map 1:1: ``patch_embed.conv.{0,1,3,4,6,7}``, ``patch_embed.proj``,
``network.0.{i}.{norm1, attn.v, attn.attn, attn.proj, norm2, mlp.fc1, mlp.fc2}`` (outlookers), ``network.1.proj``
(patch merging), ``pos_embed`` (1, H/16, W/16, C), ``network.{2,3,4}.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}`` (transformer blocks), ``cls_token``, ``post_network.{0,1}.{norm1, attn.kv, attn.q, attn.proj, norm2,
mlp.fc1, mlp.fc2}`` (class attention), ``norm``, ``head``, ``aux_head``.

Layout: a conv stem (7x7/2 conv, two 3x3 convs, each with BN and ReLU, then a 4x4/4 conv: stride 8); stage 1 of
outlooker blocks on (B, H/8, W/8, C1) channels-last tokens; a 2x2/2 conv (patch merging) to (B, H/16, W/16, C2); the
4-D position embedding added there (after the outlookers, not at the stem); three groups of pre-norm transformer
blocks (the official "four blocks" convention; all three share width and heads; ``qkv_bias=False``); two CaiT class
attention blocks that update only a prepended class token; the final LayerNorm; ``head`` on the class token and
``aux_head`` on every patch token. Every LayerNorm has eps 1e-5 (the official ``norm_layer`` argument is swallowed).

Outlook attention (:class:`OutlookAttention`), with K = 3, padding 1 and stride 2 as in every released model: a
linear layer with bias maps the 2x2-average-pooled input (ceil mode, so an odd map is covered) to K^4 weights per
head at every pooled position, ``softmax(weights * head_dim^-0.5)`` over the K*K gathered positions mixes the values
of the KxK neighbourhood (``v`` is a bias-free linear map of the input) into K*K outputs, and the overlapping outputs
are summed back onto the map (no normalisation by the overlap count). It is written with padding, ``Tensor.unfold``
views (the windows), ``split`` and additions only: no ``nn.Unfold``/``F.fold`` (``im2col``/``col2im``; ONNX has no
``col2im`` before opset 18) and no Python arithmetic on traced shapes (the official ``math.ceil(H / stride)`` freezes
the size in a trace). The logits are stored keys-outermost, (heads, 9, 9, B, h, w), so that the softmax over 9 keys
runs across the long inner axis (40-60x faster than torch's kernel along rows of 9). The official unfold -> matmul ->
fold formulation is kept as :meth:`OutlookAttention.forward_reference`, the numerical reference of the tests and of
``benchmarks/outlook_attention.py``.

Outputs: ``forward`` returns logits in train and eval mode alike, the official evaluation rule
``head(cls) + 0.5 * max_over_tokens(aux_head(tokens))``; the token-labelling training output (class logits, per-token
logits and the MixToken box) comes from :meth:`Volo.forward_train`. ``forward_features`` returns the normed tokens
(B, 1 + N, C) with the class token first; the pyramid is the outlooker stage (reduction 8) and the three transformer
groups (reduction 16) as NCHW maps.

Deliberate deviations from the official code:

* Stochastic depth: the official ``outlooker_blocks`` is called without ``drop_path_rate``, so the outlookers get
  none while the transformer blocks follow the linear schedule counted over all blocks, outlookers included (timm
  keeps both). The config field ``outlooker_drop_path`` (default ``False``, the official behaviour) gives stage 1 its
  share of the schedule instead.
* Any input of at least 15 x 15 works, square or not (the stem's convs give ceil(H / 2) // 4 rows at stride 8,
  patch merging floors them to half at stride 16: 800 x 1333 -> 100 x 166 -> 50 x 83; at multiples of 16 exactly
  H / 8 and H / 16): the position embedding is resampled (bicubic,
  ``align_corners=False``) to the actual grid on the fly, and by :meth:`Volo.adapt_state_dict` for checkpoints stored
  for another size (the official code only adds it at the size it was built for).
* MixToken in :meth:`Volo.forward_train` draws its mixing ratio and box from torch's generator rather than numpy's;
  the box is the official ``rand_bbox`` (rows first, on the stride-16 grid, scaled by 2 on the stride-8 tokens).
  ``forward_train`` always returns the triple (the official ``forward`` returns the evaluation logits in eval mode).
* Only the configuration every released model uses is implemented: outlookers only in the first group, patch merging
  only after it, two class-attention blocks, outlook kernel 3 / padding 1 / stride 2, one MLP ratio for all blocks.
  The official stride-1 outlook branch (unused) and its ``return_mean``/``return_dense`` switches are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glocal.backends.cpu import capturing_graph
from glocal.layers.attention import MultiHeadAttention, attend, attend_logits
from glocal.layers.block import TransformerBlock
from glocal.layers.drop import drop_path_rates
from glocal.layers.heads import head_dim, merge_heads, split_heads
from glocal.layers.mlp import Mlp
from glocal.layers.pos_embed import resample_grid
from glocal.layers.probe import AttentionProbe
from glocal.models._base import Backbone, DataConfig, FeatureInfo, tap
from glocal.registry import PaperFigures, register_model

__all__ = ["ClassAttention", "ClassBlock", "OutlookAttention", "Volo", "VoloConfig"]


def _gather_windows(v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Channels-last values (B, H, W, heads * d) -> (B, heads, h, w, 9, d): the 3x3 neighbourhood (stride 2, zero
    padding 1) of every pooled position, h = ceil(H / 2), w = ceil(W / 2); what ``nn.Unfold(3, padding=1, stride=2)``
    gathers.

    ``Tensor.unfold`` makes the windows a view of the once-padded map (floor((H + 2 - 3) / 2) + 1 = ceil(H / 2) of
    them for either parity, no shape is read); the caller's product copies them once, in its own layout.
    """
    windows = F.pad(v, (0, 0, 1, 1, 1, 1)).unfold(1, 3, 2).unfold(2, 3, 2)  # (B, h, w, C, 3, 3)
    windows = windows.unflatten(3, (num_heads, -1))  # (B, h, w, heads, d, 3, 3)
    return windows.permute(0, 3, 1, 2, 5, 6, 4).flatten(4, 5)  # (B, heads, h, w, 9, d)


def _fold_windows(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, heads, h, w, 9, d) -> (B, H, W, heads * d): the overlapping 3x3 windows summed back onto the map, what
    ``F.fold(3, padding=1, stride=2)`` does, with ``F.pad`` and in-place additions of slices.

    On the padded axis of length 2(h + 1), window i's entries 0 and 1 land on pair i and its entry 2 on the first slot
    of pair i + 1; the pairs flatten into positions, and the leading padding and any overhang are cropped.
    """
    y = y.unflatten(4, (3, 3))  # (B, heads, h, w, 3, 3, d)
    pairs = F.pad(y[:, :, :, :, :2], (0, 0) * 4 + (0, 1))  # rows: (B, heads, h + 1, w, 2, 3, d), entries 0, 1
    pairs[:, :, 1:, :, 0] += y[:, :, :, :, 2]  # entry 2 goes to slot 0 of pair i + 1
    y = pairs
    pairs = F.pad(y[:, :, :, :, :, :2], (0, 0) * 3 + (0, 1))  # columns: (B, heads, h + 1, w + 1, 2, 2, d)
    pairs[:, :, :, 1:, :, 0] += y[:, :, :, :, :, 2]
    y = pairs.permute(0, 2, 4, 3, 5, 1, 6).flatten(5, 6)  # (B, h + 1, 2, w + 1, 2, C)
    y = y.flatten(3, 4).flatten(1, 2)  # (B, 2h + 2, 2w + 2, C), padded coordinates
    return y[:, 1:, 1:][:, : size[0], : size[1]]  # (B, H, W, C)


class _GatherWindows(torch.autograd.Function):
    """:func:`_gather_windows` with :func:`_fold_windows` as its backward, and the reverse for :class:`_FoldWindows`.

    Gathering the windows and summing them back onto the map are adjoint linear maps, so each one's gradient is the
    other applied to the incoming gradient: two passes over the windows instead of autograd's ``unfold_backward``
    and the zero-filled slice and pad gradients of the fold (an outlooker's training step 1.3x faster, 1 thread).
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, num_heads: int) -> torch.Tensor:
        ctx.size = (v.shape[1], v.shape[2])
        return _gather_windows(v, num_heads).contiguous()  # (B, heads, h, w, 9, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _FoldWindows.apply(grad, ctx.size), None


class _FoldWindows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        ctx.num_heads = y.shape[1]
        return _fold_windows(y, size)  # (B, H, W, C)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _GatherWindows.apply(grad, ctx.num_heads), None


class OutlookAttention(nn.Module):
    """Outlook attention over channels-last tokens, (B, H, W, C) -> (B, H, W, C); any H, W >= 1.

    The softmax goes through :func:`~glocal.layers.attention.attend_logits`; the probe sees the per-window maps
    (B, heads, h, w, 9, 9) with h = ceil(H / 2), w = ceil(W / 2): for every pooled position, the weights of the 9
    gathered values (last axis) for each of its 9 outputs.
    """

    kernel_size = 3  # K: windows of 3x3 positions at stride 2, padding 1, in every released VOLO

    def __init__(
        self, dim: int, num_heads: int, *, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        k2 = self.kernel_size**2
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn = nn.Linear(dim, k2 * k2 * num_heads)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # ceil_mode: an odd side gets a last, narrower window, averaged over its real positions only.
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.probe = AttentionProbe("outlook", window=self.kernel_size, window_stride=2)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The attention logits (B, heads, h, w, 9, 9) from the 2x2-pooled input, stored keys-outermost.

        The layout (heads, 9, 9, B, h, w) puts the pooled positions innermost, where the softmax over the 9 keys
        runs 40-60x faster than along rows of 9 (see ``_softmax_in_memory_order`` in ``glocal.layers.attention``).
        """
        k2 = self.kernel_size**2
        pooled = self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, h, w, C)
        logits = self.attn(pooled).unflatten(-1, (self.num_heads, k2, k2))  # (B, h, w, heads, 9, 9)
        logits = (logits * self.scale).permute(3, 4, 5, 0, 1, 2).contiguous()  # (heads, 9, 9, B, h, w)
        return logits.permute(3, 0, 4, 5, 1, 2)  # (B, heads, h, w, 9, 9), a view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[1], x.shape[2])
        if torch.is_grad_enabled() and not capturing_graph():  # the adjoint backward; graphs hold plain operators
            gather, fold = _GatherWindows.apply, _FoldWindows.apply
        else:
            gather, fold = _gather_windows, _fold_windows
        y = attend_logits(
            self._logits(x),
            gather(self.v(x), self.num_heads),
            probe=self.probe,
            dropout_p=self.attn_drop if self.training else 0.0,
        )  # (B, heads, h, w, 9, head_dim)
        y = fold(y, size)  # (B, H, W, C)
        return self.proj_drop(self.proj(y))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The official formulation, unfold -> matmul -> fold (``im2col``/``col2im``): same numbers, not exportable."""
        B, H, W, C = x.shape
        k2 = self.kernel_size**2
        pooled = self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, h, w, C)
        h, w = pooled.shape[1], pooled.shape[2]
        logits = self.attn(pooled).reshape(B, h * w, self.num_heads, k2, k2).transpose(1, 2)  # (B, heads, hw, 9, 9)
        v = F.unfold(self.v(x).permute(0, 3, 1, 2), 3, padding=1, stride=2)  # (B, C * 9, h * w)
        v = v.reshape(B, self.num_heads, self.head_dim, k2, h * w).permute(0, 1, 4, 3, 2)  # (B, heads, hw, 9, hd)
        y = (logits * self.scale).softmax(dim=-1) @ v  # (B, heads, h * w, 9, head_dim)
        y = y.permute(0, 1, 4, 3, 2).reshape(B, C * k2, h * w)  # (B, C * 9, h * w)
        y = F.fold(y, (H, W), 3, padding=1, stride=2)  # (B, C, H, W)
        return self.proj_drop(self.proj(y.permute(0, 2, 3, 1)))  # (B, H, W, C)


class ClassAttention(nn.Module):
    """CaiT class attention, (B, 1 + N, C) -> (B, 1, C): the class token (first) queries every token."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = False, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim(dim, num_heads)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.probe = AttentionProbe("class", prefix_tokens=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, v = split_heads(self.kv(x), self.num_heads, parts=2).unbind(0)  # each (B, heads, 1 + N, head_dim)
        q = split_heads(self.q(x[:, :1]), self.num_heads)  # (B, heads, 1, hd)
        y = attend(q, k, v, probe=self.probe, dropout_p=self.attn_drop if self.training else 0.0)  # (B, heads, 1, hd)
        return self.proj(merge_heads(y))  # (B, 1, C)


class ClassBlock(nn.Module):
    """(B, 1 + N, C) -> (B, 1 + N, C): only the class token (first) changes; no stochastic depth (official)."""

    def __init__(
        self, dim: int, num_heads: int, *, mlp_ratio: float, qkv_bias: bool = False, attn_drop: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1]  # (B, 1, C)
        cls = cls + self.attn(self.norm1(x))
        cls = cls + self.mlp(self.norm2(cls))
        return torch.cat([cls, x[:, 1:]], dim=1)  # (B, 1 + N, C)


class ConvStem(nn.Module):
    """(B, in_chans, H, W) -> (B, C1, H/8, W/8): three conv-BN-ReLU (the first 7x7 stride 2), then a 4x4/4 conv."""

    def __init__(self, in_chans: int, hidden_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden_dim, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Conv2d(hidden_dim, embed_dim, kernel_size=4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x))


class PatchMerging(nn.Module):
    """Channels-last (B, H, W, C_in) -> (B, H/2, W/2, C_out) by a 2x2 stride-2 conv (the official ``Downsample``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, H/2, W/2, C_out)


@dataclass(frozen=True)
class VoloConfig:
    """Architecture of a VOLO; the official ``layers``, ``embed_dims`` and ``num_heads`` lists, one entry per group.

    Group 0 is the outlooker stage (stride 8), followed by patch merging; groups 1-3 are transformer blocks at stride
    16 that share one width and head count (there is no projection between them).
    """

    depths: tuple[int, ...] = (4, 4, 8, 2)
    embed_dims: tuple[int, ...] = (192, 384, 384, 384)
    # Head dim 32 everywhere in the released models.
    num_heads: tuple[int, ...] = (6, 12, 12, 12)
    mlp_ratio: float = 3.0
    # Width of the conv stem before its 4x4 projection: 64 for D1-D4, 128 for D5.
    stem_hidden_dim: int = 64
    # CaiT class-attention blocks after the transformer groups ("post_layers = ['ca', 'ca']").
    num_class_blocks: int = 2
    qkv_bias: bool = False
    # The official code gives the outlookers no stochastic depth (see the module docstring); True gives them their
    # share of the linear schedule.
    outlooker_drop_path: bool = False
    # The grid the position embedding is stored for is img_size / 16 per side; other sizes resample it.
    img_size: int | tuple[int, int] = 224
    # Evaluation crop of the released checkpoints (timm's default configs).
    crop_pct: float = 0.96


class Volo(Backbone):
    """VOLO classifier and backbone; module names are the official ones (see the module docstring)."""

    first_conv = "patch_embed.conv.0"
    classifier = ("head", "aux_head")
    final_norm = "norm"
    default_out_indices = 3  # timm's VOLO: the last three taps (the transformer groups)
    # Any H, W >= 15: the stem gives ceil(H / 2) // 4 rows at stride 8 (outlook attention takes odd maps), patch
    # merging floors to half of that at stride 16, which needs one row.
    min_input_size = 15
    export_divisor = 16
    # network index of each pyramid tap: the outlookers, then the three transformer groups (network.1 is merging).
    _TAP_MODULES = (0, 2, 3, 4)

    def __init__(
        self,
        cfg: VoloConfig,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        mix_token: bool = True,
    ) -> None:
        """``drop_rate`` is the dropout after adding the position embedding (the official ``pos_drop``);
        ``mix_token`` enables MixToken in :meth:`forward_train` (training mode only)."""
        super().__init__(cfg, num_classes=num_classes, in_chans=in_chans)
        if not len(cfg.depths) == len(cfg.embed_dims) == len(cfg.num_heads) == 4:
            raise ValueError(
                f"VOLO has an outlooker group and three transformer groups: got depths={cfg.depths}, "
                f"embed_dims={cfg.embed_dims}, num_heads={cfg.num_heads}"
            )
        if len(set(cfg.embed_dims[1:])) != 1 or len(set(cfg.num_heads[1:])) != 1:
            raise ValueError(
                f"the transformer groups share one width and head count, got embed_dims={cfg.embed_dims}, "
                f"num_heads={cfg.num_heads}"
            )
        img_size = self.img_size
        if img_size[0] % 16 or img_size[1] % 16:
            raise ValueError(
                f"img_size {img_size} must be a multiple of 16 (the stored position grid is img_size / 16)"
            )
        self.mix_token = mix_token
        outlook_dim, dim = cfg.embed_dims[0], cfg.embed_dims[1]
        self.num_features = dim
        self.grid_size = (img_size[0] // 16, img_size[1] // 16)

        self.patch_embed = ConvStem(in_chans, cfg.stem_hidden_dim, outlook_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *self.grid_size, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, cfg.depths)
        outlooker_rates = rates[0] if cfg.outlooker_drop_path else [0.0] * cfg.depths[0]
        outlookers = [
            TransformerBlock(
                outlook_dim,
                OutlookAttention(outlook_dim, cfg.num_heads[0], qkv_bias=cfg.qkv_bias, attn_drop=attn_drop_rate),
                mlp_ratio=cfg.mlp_ratio,
                drop_path=rate,
                norm_layer=nn.LayerNorm,
            )
            for rate in outlooker_rates
        ]
        network: list[nn.Module] = [nn.Sequential(*outlookers), PatchMerging(outlook_dim, dim)]
        for depth_rates, heads in zip(rates[1:], cfg.num_heads[1:], strict=True):
            blocks = [
                TransformerBlock(
                    dim,
                    MultiHeadAttention(dim, heads, qkv_bias=cfg.qkv_bias, attn_drop=attn_drop_rate),
                    mlp_ratio=cfg.mlp_ratio,
                    drop_path=rate,
                    norm_layer=nn.LayerNorm,
                )
                for rate in depth_rates
            ]
            network.append(nn.Sequential(*blocks))
        self.network = nn.ModuleList(network)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.post_network = nn.ModuleList(
            ClassBlock(dim, cfg.num_heads[-1], mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, attn_drop=attn_drop_rate)
            for _ in range(cfg.num_class_blocks)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = self._make_head(num_classes)
        self.aux_head = self._make_head(num_classes)

        self.feature_info = FeatureInfo(
            [tap(outlook_dim, 8, "network.0"), *(tap(dim, 16, f"network.{i}") for i in self._TAP_MODULES[1:])]
        )
        self.data_config = DataConfig(
            input_size=(in_chans, *img_size), crop_pct=cfg.crop_pct, interpolation="bicubic", dynamic_size=True
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated normal (std 0.02) for linear weights, the position embedding and the class token; zero biases.
        Convs, BN and LayerNorm keep PyTorch's defaults, as in the official code."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_linear)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare_input(x)
        return self.patch_embed(x).permute(0, 2, 3, 1)  # (B, H/8, W/8, C1)

    def _network(
        self, x: torch.Tensor, taps: tuple[int, ...] = (), norm: bool = False, stop_early: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stem tokens (B, H/8, W/8, C1) -> the last group's tokens (B, N, C) and the NCHW maps at ``taps``
        (``stop_early``: the tokens of the last tapped group)."""
        tap_modules = [self._TAP_MODULES[i] for i in taps]
        maps = []
        for idx, module in enumerate(self.network):
            if idx == 2:
                grid = (x.shape[1], x.shape[2])
                x = self.pos_drop(x + resample_grid(self.pos_embed, grid)).flatten(1, 2)  # (B, N, C)
            x = module(x)
            if idx in tap_modules:
                if idx == 0:
                    maps.append(x.permute(0, 3, 1, 2))  # (B, C1, H/8, W/8)
                else:
                    tokens = self.norm(x) if norm else x
                    maps.append(tokens.unflatten(1, grid).permute(0, 3, 1, 2))  # (B, C, H/16, W/16)
                if stop_early and idx == tap_modules[-1]:
                    break
        return x, maps

    def _class_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, 1 + N, C): class token prepended, class attention, final norm."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, C)
        for block in self.post_network:
            x = block(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> normed tokens (B, 1 + H/16 * W/16, C), the class token first."""
        x, _ = self._network(self._stem(x))
        return self._class_tokens(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, 1 + N, C) -> logits ``head(cls) + 0.5 * max_n aux_head(token_n)`` (the official evaluation rule).

        ``pre_logits=True`` returns the class token (B, C), what ``head`` sees; the auxiliary branch has no pooled
        feature (its max is taken over logits). With ``num_classes=0`` the class token is returned as well.
        """
        cls = x[:, 0]  # (B, C)
        if pre_logits or self.num_classes == 0:
            return cls
        return self.head(cls) + 0.5 * self.aux_head(x[:, 1:]).amax(dim=1)

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int, int]]:
        """Token-labelling output: class logits (B, classes), per-token logits (B, N, classes) and the MixToken box.

        In training mode with ``mix_token``, a box (rows r1:r2, cols c1:c2 of the H/16 x W/16 grid, area about
        1 - lam with lam ~ Beta(1, 1)) of every image's stem tokens is replaced by that of the image at the mirrored
        batch index (``flip(0)``), and the per-token logits are swapped back inside the box, so that they line up with
        each image's own token labels; the loss mixes the class targets by the box's actual area. Otherwise the box is
        (0, 0, 0, 0). Not meant for export (Python arithmetic on sizes, data-dependent slicing).
        """
        x = self._stem(x)  # (B, H/8, W/8, C1)
        box = (0, 0, 0, 0)
        if self.training and self.mix_token:
            box = _rand_box(x.shape[1] // 2, x.shape[2] // 2)
            r1, c1, r2, c2 = box
            x = x.clone()
            x[:, 2 * r1 : 2 * r2, 2 * c1 : 2 * c2] = x.flip(0)[:, 2 * r1 : 2 * r2, 2 * c1 : 2 * c2]
        grid = (x.shape[1] // 2, x.shape[2] // 2)
        tokens = self._class_tokens(self._network(x)[0])  # (B, 1 + N, C)
        cls_logits = self.head(tokens[:, 0])  # (B, classes)
        aux = self.aux_head(tokens[:, 1:])  # (B, N, classes)
        if box != (0, 0, 0, 0):
            r1, c1, r2, c2 = box
            aux = aux.unflatten(1, grid).clone()  # (B, H/16, W/16, classes)
            aux[:, r1:r2, c1:c2] = aux.flip(0)[:, r1:r2, c1:c2]
            aux = aux.flatten(1, 2)  # (B, N, classes)
        return cls_logits, aux, box

    def _intermediates(self, x, taps, *, norm, stop_early):
        """NCHW maps: the outlooker stage (B, C1, H/8, W/8), then each transformer group (B, C, H/16, W/16).

        ``norm=True`` applies the final LayerNorm to the transformer groups' tokens (the outlooker map has another
        width and is returned as is). ``final`` is ``forward_features``' normed tokens; when stopped early (or once
        the class attention is pruned) the tokens of the last group run, (B, N, C), or the outlooker stage's
        (B, H/8, W/8, C1)."""
        x, maps = self._network(self._stem(x), tuple(taps), norm, stop_early)
        if not stop_early and self.cls_token is not None:
            x = self._class_tokens(x)
        return x, maps

    def _prune_after(self, last_tap: int) -> None:
        last = self._TAP_MODULES[last_tap]
        self.network = self.network[: last + 1]
        if last < 2:
            self.pos_embed = None

    def _prune_head(self) -> None:
        """The class token, class attention and both heads: nothing a tap uses."""
        self.cls_token = None
        self.post_network = nn.ModuleList()
        super()._prune_head()

    def _init_head(self, module: nn.Module) -> None:
        _init_linear(module)

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resample a checkpoint's 4-D ``pos_embed`` (1, h0, w0, C) to this model's grid (bicubic)."""
        pos = state_dict.get("pos_embed")
        if pos is None or self.pos_embed is None or pos.shape == self.pos_embed.shape:
            return state_dict
        if pos.ndim != 4:
            raise ValueError(f"VOLO's pos_embed is (1, h, w, C), got shape {tuple(pos.shape)}")
        return {**state_dict, "pos_embed": resample_grid(pos, self.grid_size)}

    def no_weight_decay(self) -> set[str]:
        return {name for name in ("pos_embed", "cls_token") if getattr(self, name) is not None}


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _rand_box(rows: int, cols: int) -> tuple[int, int, int, int]:
    """The official ``rand_bbox``: a box of relative area about 1 - lam centred uniformly, clipped to the grid."""
    lam = torch.distributions.Beta(1.0, 1.0).sample().item()
    cut = (1.0 - lam) ** 0.5
    cut_rows, cut_cols = int(rows * cut), int(cols * cut)
    centre_row = int(torch.randint(rows, ()).item())
    centre_col = int(torch.randint(cols, ()).item())
    r1 = min(max(centre_row - cut_rows // 2, 0), rows)
    c1 = min(max(centre_col - cut_cols // 2, 0), cols)
    r2 = min(max(centre_row + cut_rows // 2, 0), rows)
    c2 = min(max(centre_col + cut_cols // 2, 0), cols)
    return r1, c1, r2, c2


_SRC = "sail-sg/volo models/volo.py:{fn}; top-1 official README; params/GMACs measured on the official code"


def _hires(fn: str, size: int, paper_gflops: float | None = None) -> str:
    grid = size // 16
    paper = f"; paper {paper_gflops} GFLOPs" if paper_gflops else ""
    return (
        f"sail-sg/volo models/volo.py:{fn} at img_size={size} (pos_embed {grid}x{grid}), the released fine-tuned "
        f"checkpoint; top-1 official README; params counted on that structure, GMACs measured here{paper}"
    )


_D1 = dict(depths=(4, 4, 8, 2), embed_dims=(192, 384, 384, 384), num_heads=(6, 12, 12, 12))
_D2 = dict(depths=(6, 4, 10, 4), embed_dims=(256, 512, 512, 512), num_heads=(8, 16, 16, 16))
_D3 = dict(depths=(8, 8, 16, 4), embed_dims=(256, 512, 512, 512), num_heads=(8, 16, 16, 16))
_D4 = dict(depths=(8, 8, 16, 4), embed_dims=(384, 768, 768, 768), num_heads=(12, 16, 16, 16))
_D5 = dict(depths=(12, 12, 20, 4), embed_dims=(384, 768, 768, 768), num_heads=(12, 16, 16, 16), mlp_ratio=4.0,
           stem_hidden_dim=128)  # fmt: skip


@register_model(Volo, family="volo", paper=PaperFigures(26_632_040, exact_params=True, gmacs=6.92, top1=84.2,
                source=_SRC.format(fn="volo_d1")))  # fmt: skip
def volo_d1_224() -> VoloConfig:
    return VoloConfig(**_D1)


@register_model(Volo, family="volo", paper=PaperFigures(26_777_960, exact_params=True, gmacs=22.68, top1=85.2,
                source=_hires("volo_d1", 384, 22.8)), input_size=(3, 384, 384))  # fmt: skip
def volo_d1_384() -> VoloConfig:
    return VoloConfig(**_D1, img_size=384, crop_pct=1.0)


@register_model(Volo, family="volo", paper=PaperFigures(58_678_336, exact_params=True, gmacs=14.31, top1=85.2,
                source=_SRC.format(fn="volo_d2")))  # fmt: skip
def volo_d2_224() -> VoloConfig:
    return VoloConfig(**_D2)


@register_model(Volo, family="volo", paper=PaperFigures(58_872_896, exact_params=True, gmacs=46.06, top1=86.0,
                source=_hires("volo_d2", 384)), input_size=(3, 384, 384))  # fmt: skip
def volo_d2_384() -> VoloConfig:
    return VoloConfig(**_D2, img_size=384, crop_pct=1.0)


@register_model(Volo, family="volo", paper=PaperFigures(86_325_072, exact_params=True, gmacs=20.73, top1=85.4,
                source=_SRC.format(fn="volo_d3")))  # fmt: skip
def volo_d3_224() -> VoloConfig:
    return VoloConfig(**_D3)


@register_model(Volo, family="volo", paper=PaperFigures(86_626_128, exact_params=True, gmacs=96.13, top1=86.3,
                source=_hires("volo_d3", 448)), input_size=(3, 448, 448))  # fmt: skip
def volo_d3_448() -> VoloConfig:
    return VoloConfig(**_D3, img_size=448, crop_pct=1.0)


@register_model(Volo, family="volo", paper=PaperFigures(192_961_520, exact_params=True, gmacs=44.26, top1=85.7,
                source=_SRC.format(fn="volo_d4")))  # fmt: skip
def volo_d4_224() -> VoloConfig:
    return VoloConfig(**_D4)


@register_model(Volo, family="volo", paper=PaperFigures(193_413_104, exact_params=True, gmacs=196.84, top1=86.8,
                source=_hires("volo_d4", 448)), input_size=(3, 448, 448))  # fmt: skip
def volo_d4_448() -> VoloConfig:
    return VoloConfig(**_D4, img_size=448, crop_pct=1.15)


@register_model(Volo, family="volo", paper=PaperFigures(295_455_584, exact_params=True, gmacs=72.30, top1=86.1,
                source=_SRC.format(fn="volo_d5")))  # fmt: skip
def volo_d5_224() -> VoloConfig:
    return VoloConfig(**_D5)


@register_model(Volo, family="volo", paper=PaperFigures(295_907_168, exact_params=True, gmacs=314.65, top1=87.0,
                source=_hires("volo_d5", 448, 304)), input_size=(3, 448, 448))  # fmt: skip
def volo_d5_448() -> VoloConfig:
    return VoloConfig(**_D5, img_size=448, crop_pct=1.15)


@register_model(Volo, family="volo", paper=PaperFigures(296_091_488, exact_params=True, gmacs=424.56, top1=87.1,
                source=_hires("volo_d5", 512, 412)), input_size=(3, 512, 512))  # fmt: skip
def volo_d5_512() -> VoloConfig:
    return VoloConfig(**_D5, img_size=512, crop_pct=1.15)
