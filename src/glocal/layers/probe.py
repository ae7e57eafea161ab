"""Attention probes: the one place where attention maps become observable.

Every attention module owns an :class:`AttentionProbe`. The attention core (:func:`glocal.layers.attention.attend`)
runs the fused kernel while nobody observes and switches to the explicit path, which materialises the softmax and
passes it through the probe, as soon as a forward hook is registered on the probe or :func:`explicit_attention` is
active. The choice happens at call time, so an analysis records maps of any model without editing or rebuilding it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["AttentionProbe", "explicit_attention", "explicit_attention_enabled", "is_observed"]

_EXPLICIT: contextvars.ContextVar[bool] = contextvars.ContextVar("glocal_explicit_attention", default=False)


class AttentionProbe(nn.Module):
    """Identity on an attention map of shape (B, heads, queries, keys); hook it to read the map."""

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        return attn


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
    """True when the explicit path must run: forced by context, or someone hooked the probe."""
    if _EXPLICIT.get():
        return True
    return probe is not None and bool(probe._forward_hooks or probe._forward_pre_hooks)
