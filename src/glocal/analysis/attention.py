"""Attention recording and GCNet's query-independence statistic.

:func:`record_attention` hooks every :class:`~glocal.layers.probe.AttentionProbe` of a model, which switches those
modules to the explicit attention path for the duration, and collects the maps: no model is edited or rebuilt.

:func:`query_independence` is the measurement behind GCNet's observation (arXiv 1904.11492, Section 3.2, Table 1):
the average cosine distance between the attention maps of different query positions. Near 0, every query attends to
the same places, so a single query-independent map (GC/SNL pooling) loses nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from glocal.layers.probe import AttentionProbe

__all__ = ["record_attention", "query_independence", "mean_cosine_distance"]


@contextlib.contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the context, every attention map the model computes is appended to ``maps[module_name]``.

    Maps are (B, heads, queries, keys), detached; names are the attention modules' (the probe's parent).
    """
    maps: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, AttentionProbe):
            owner = name.rsplit(".", 1)[0] if "." in name else name

            def hook(_module, _inputs, output, owner=owner):
                maps.setdefault(owner, []).append(output.detach())

            handles.append(module.register_forward_hook(hook))
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def mean_cosine_distance(rows: torch.Tensor) -> torch.Tensor:
    """(..., M, D) -> (...): mean of 1 - cos over all ordered pairs of distinct rows; 0 when M < 2."""
    M = rows.shape[-2]
    if M < 2:
        return rows.new_zeros(rows.shape[:-2])
    unit = nn.functional.normalize(rows.float(), dim=-1)
    cos = unit @ unit.transpose(-2, -1)  # (..., M, M)
    off_diagonal = cos.sum(dim=(-2, -1)) - cos.diagonal(dim1=-2, dim2=-1).sum(-1)
    return 1.0 - off_diagonal / (M * (M - 1))


def query_independence(attn: torch.Tensor) -> float:
    """Average cosine distance between the attention maps of different queries, (B, heads, Nq, Nk) -> float.

    GCNet reports it per NL block; a query-independent block (GC, SNL: one query) scores 0 by construction.
    """
    if attn.ndim != 4:
        raise ValueError(f"expected attention maps (B, heads, queries, keys), got shape {tuple(attn.shape)}")
    return mean_cosine_distance(attn).mean().item()
