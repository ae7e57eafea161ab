"""Global context modelling, GCNet's unified framework (arXiv 1904.11492, Section 4.1).

One module covers the three query-independent designs the paper compares, because they differ only in the choice of
each of its three steps:

* context modelling: attention pooling (a 1x1 conv C->1, softmax over H*W, weighted sum) or global average pooling;
* transform: a bottleneck (1x1 conv C->C*ratio, optional LayerNorm, ReLU, 1x1 conv back to C) or one 1x1 conv C->C;
* fusion: broadcast addition, or multiplication by the sigmoid of the transform (channel scaling).

======================  ==========  ===========================  =======  ================
design                  pooling     transform                    fusion   starts as
======================  ==========  ===========================  =======  ================
GC block (GCNet)        attention   bottleneck 1/16 + LayerNorm  add      identity (last conv zero)
SE block (SENet)        average     bottleneck 1/16, no norm     scale    x * 0.5-ish (default init)
simplified NL (GCNet)   attention   one 1x1 conv C->C            add      identity (conv zero)
======================  ==========  ===========================  =======  ================

The LayerNorm in the bottleneck eases optimisation of the two-layer transform (GCNet Table 2d). Its affine
parameters have shape (C*ratio, 1, 1), normalising over all channels of the (B, C*ratio, 1, 1) context, as the
official ``ContextBlock``. The hidden width is ``int(C * ratio)`` as the official code (ratio is a fraction).
"""

from __future__ import annotations

import torch
from torch import nn

from glocal.layers.attention import attend_logits
from glocal.layers.probe import AttentionProbe

__all__ = ["GlobalContext", "gc_block", "se_block", "snl_block"]


class GlobalContext(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): x fused with a transform of one global context vector per image.

    ``hidden=None`` makes the transform a single C->C conv (the simplified NL block); otherwise the bottleneck
    ``transform`` is ``[conv C->hidden, LayerNorm or Identity, ReLU, conv hidden->C]`` (indices as the official
    ``channel_add_conv``, so checkpoints map by position).
    """

    def __init__(
        self,
        channels: int,
        *,
        hidden: int | None,
        pooling: str = "att",
        fusion: str = "add",
        norm: bool = True,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in ("att", "avg"):
            raise ValueError(f"pooling must be 'att' or 'avg', got {pooling!r}")
        if fusion not in ("add", "scale"):
            raise ValueError(f"fusion must be 'add' or 'scale', got {fusion!r}")
        if hidden is not None and hidden < 1:
            raise ValueError(f"the bottleneck width must be at least 1, got {hidden} for {channels} channels")
        self.pooling = pooling
        self.fusion = fusion
        self.zero_init_last = zero_init_last
        if pooling == "att":
            self.attn_pool = nn.Conv2d(channels, 1, kernel_size=1)
            self.probe = AttentionProbe("pool")
        if hidden is None:
            self.transform = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=1))
        else:
            self.transform = nn.Sequential(
                nn.Conv2d(channels, hidden, kernel_size=1),
                nn.LayerNorm([hidden, 1, 1]) if norm else nn.Identity(),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, channels, kernel_size=1),
            )
        self.init_weights()

    def init_weights(self) -> None:
        if self.pooling == "att":
            nn.init.kaiming_normal_(self.attn_pool.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.attn_pool.bias)
        if self.zero_init_last:
            nn.init.zeros_(self.transform[-1].weight)
            nn.init.zeros_(self.transform[-1].bias)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The global context vector, (B, C, H, W) -> (B, C, 1, 1)."""
        B, C = x.shape[:2]
        if self.pooling == "avg":
            return x.mean(dim=(2, 3), keepdim=True)
        logits = self.attn_pool(x).flatten(2).unsqueeze(1)  # (B, 1, 1, HW)
        values = x.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, C)
        pooled = attend_logits(logits, values, probe=self.probe)  # (B, 1, 1, C)
        return pooled.reshape(B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        term = self.transform(self.context(x))  # (B, C, 1, 1)
        if self.fusion == "scale":
            return x * term.sigmoid()
        return x + term


def gc_block(channels: int, ratio: float = 1 / 16, *, norm: bool = True) -> GlobalContext:
    """GCNet's global context block: attention pooling, LayerNorm bottleneck, additive fusion."""
    return GlobalContext(channels, hidden=int(channels * ratio), pooling="att", fusion="add", norm=norm)


def se_block(channels: int, ratio: float = 1 / 16) -> GlobalContext:
    """SENet's squeeze-excitation: average pooling, ReLU bottleneck with biases, sigmoid channel scaling."""
    return GlobalContext(
        channels, hidden=int(channels * ratio), pooling="avg", fusion="scale", norm=False, zero_init_last=False
    )


def snl_block(channels: int) -> GlobalContext:
    """GCNet's simplified non-local block: attention pooling, one 1x1 conv C->C, additive fusion."""
    return GlobalContext(channels, hidden=None, pooling="att", fusion="add")
