"""Attention probes: the one place where attention maps become observable.

Every attention module owns an :class:`AttentionProbe`. The attention core (:func:`glocal.layers.attention.attend`)
runs the fused kernel while nobody observes and switches to the explicit path, which materialises the softmax and
passes it through the probe, as soon as a forward hook is registered on the probe or :func:`explicit_attention` is
active. The choice happens at call time, so an analysis records maps of any model without editing or rebuilding it.

A probe also carries what its module knows statically about the map (:class:`ProbeSpec`: the kind of attention, its
window, sub-sampling ratio or prefix tokens); :mod:`glocal.analysis.attention` combines it with the sizes seen at
run time into an :class:`AttentionLayout` (grids, strides, window padding, heads) for every recorded map.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ATTENTION_KINDS",
    "AttentionLayout",
    "AttentionProbe",
    "ProbeSpec",
    "explicit_attention",
    "explicit_attention_enabled",
    "is_observed",
]

_EXPLICIT: contextvars.ContextVar[bool] = contextvars.ContextVar("glocal_explicit_attention", default=False)

# kind -> (what the probe sees, in words); the shapes are what each module hands to its probe.
ATTENTION_KINDS = {
    "global": "global multi-head self-attention over tokens (ViT, T2T-ViT, VOLO, Twins GSA at ratio 1): "
    "(B, heads, P + N, P + N), P prefix (class) tokens first",
    "class": "class attention (VOLO, CaiT): the class token queries every token, (B, heads, 1, 1 + N)",
    "lsa": "Twins locally-grouped attention inside ws x ws windows, (B * windows, heads, ws^2, ws^2), windows in "
    "row-major order over the right/bottom zero-padded map",
    "gsa": "Twins global sub-sampled attention: full-resolution queries over keys of a stride-r conv, (B, heads, HW, "
    "HW / r^2)",
    "outlook": "VOLO outlook attention: per pooled position (stride 2) the K^2 x K^2 weights of its K x K "
    "neighbourhood (padding K // 2), (B, heads, h, w, K^2, K^2)",
    "bot": "BoTNet multi-head self-attention with 2-D relative position logits, (B, heads, HW, HW)",
    "nl": "non-local block (embedded Gaussian), (B, 1, HW, hw), keys max-pooled by r when sub-sampled",
    "pool": "GC / simplified-NL attention pooling: one query-independent map, (B, 1, 1, HW)",
}


@dataclass(frozen=True)
class ProbeSpec:
    """What an attention module knows about its map before it runs.

    ``prefix_tokens``: tokens before the grid (class token) in global and class attention; ``window``: LSA's window
    side or outlook's kernel K; ``ratio``: GSA's / NL's key sub-sampling; ``window_stride``: outlook's stride.
    """

    kind: str = "global"
    prefix_tokens: int = 0
    window: int | None = None
    ratio: int = 1
    window_stride: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {self.kind!r}; known: {', '.join(ATTENTION_KINDS)}")


@dataclass(frozen=True)
class AttentionLayout:
    """Where a recorded map lives: ``query_grid`` / ``key_grid`` are (H, W) of the positions on the feature map
    (``None`` for the class token's and pooling's single query), ``stride`` the input pixels per query (or key)
    position, ``padding`` the (bottom, right) zero padding LSA adds to fill its windows."""

    kind: str
    heads: int
    image_size: tuple[int, int]
    query_grid: tuple[int, int] | None
    key_grid: tuple[int, int]
    stride: tuple[float, float]
    key_stride: tuple[float, float]
    prefix_tokens: int = 0
    window: int | None = None
    window_stride: int | None = None
    padding: tuple[int, int] = (0, 0)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class AttentionProbe(nn.Module):
    """Identity on an attention map; hook it to read the map. ``spec`` says what kind of map it is."""

    def __init__(self, kind: str = "global", **spec) -> None:
        super().__init__()
        self.spec = ProbeSpec(kind, **spec)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return attn

    def extra_repr(self) -> str:
        return self.spec.kind


@contextlib.contextmanager
def explicit_attention(enabled: bool = True) -> Iterator[None]:
    """Within this context every attention call takes the explicit (materialised softmax) path."""
    token = _EXPLICIT.set(enabled)
    try:
        yield
    finally:
        _EXPLICIT.reset(token)


def explicit_attention_enabled() -> bool:
    return _EXPLICIT.get()


def is_observed(probe: AttentionProbe | None) -> bool:
    """True when the explicit path must run: forced by context, or someone hooked the probe. A graph being compiled
    reads no context (dynamo cannot trace ``ContextVar.get``: every attention call would break the graph)."""
    if not torch.compiler.is_compiling() and _EXPLICIT.get():
        return True
    return probe is not None and bool(probe._forward_hooks or probe._forward_pre_hooks)
