"""Attention recording, maps on the image grid, attention rollout and GCNet's query-independence statistic.

:func:`record_attention` hooks every :class:`~glocal.layers.probe.AttentionProbe` of a model, which switches those
modules to the explicit attention path for the duration, and collects each map with its
:class:`~glocal.layers.probe.AttentionLayout` (kind, query and key grids, strides, window and padding, heads): no
model is edited or rebuilt. Grids come from the attention module's input (maps, or Twins' ``size`` argument); token
sequences (global and class attention) have no grid in their input, so theirs is the factorisation of the token
count whose aspect ratio is closest to the image's (exact for every patch embedding glocal has).

:func:`image_map` turns any kind into "attention of one query over the feature grid" (B, heads, H, W), each cell one
position of the layer's grid, ``layout.stride`` input pixels a side; :func:`to_pixels` resizes it to the input:

* global, BoT, NL: the query's row, prefix (class) keys dropped;
* class attention: the class token's row over the grid tokens;
* LSA: the query's window row placed back at its window on the map (padded keys carry no weight);
* GSA: each sub-sampled key's weight spread evenly over the r x r positions it summarises;
* outlook: every K x K window that contains the query contributes its row for that output, scattered to the window's
  positions; the map is the mean over those windows (the operator sums them), so it is a distribution too, up to the
  weight the window puts on zero padding at the border;
* GC / SNL pooling: the one pooling map (no query).

:func:`query_independence` is the measurement behind GCNet's observation (arXiv 1904.11492, Section 3.2, Figure 2 /
Table 1): the mean cosine distance between the attention maps of different query positions. Near 0, every query
attends to the same places, so a single query-independent map (GC/SNL pooling) loses nothing. For local attention
(LSA, outlook) the maps compared are those of the queries sharing one window's keys, over those keys, averaged over
windows: queries of different windows see disjoint keys and would be trivially far apart.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glocal.layers.probe import AttentionLayout, AttentionProbe, ProbeSpec

__all__ = [
    "AttentionRecord",
    "attention_rollout",
    "image_map",
    "mean_cosine_distance",
    "query_independence",
    "query_independence_table",
    "record_attention",
    "to_pixels",
]


@dataclass(frozen=True)
class AttentionRecord:
    """One attention map (detached, as the probe saw it) with where it lives."""

    name: str
    attn: torch.Tensor
    layout: AttentionLayout


@contextlib.contextmanager
def record_attention(model: nn.Module, layers: str | None = None) -> Iterator[dict[str, list[AttentionRecord]]]:
    """Within the context, every attention map the model computes is appended to ``records[module_name]``.

    Names are the attention modules' (the probe's parent); ``layers`` is a glob on them (``"blocks.1*"``).
    """
    records: dict[str, list[AttentionRecord]] = {}
    image: dict[str, tuple[int, int]] = {}
    inputs: dict[str, tuple] = {}
    handles = [model.register_forward_pre_hook(lambda _m, args: image.update(size=tuple(args[0].shape[-2:])))]
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not isinstance(module, AttentionProbe):
            continue
        owner = name.rsplit(".", 1)[0] if "." in name else name
        if layers is not None and not fnmatch.fnmatchcase(owner, layers):
            continue

        def remember(_module, args, owner=owner):
            inputs[owner] = args

        def hook(probe, _inputs, output, owner=owner):
            layout = _layout(probe.spec, output, image.get("size"), inputs.get(owner, ()))
            records.setdefault(owner, []).append(AttentionRecord(owner, output.detach(), layout))

        handles.append(modules[owner].register_forward_pre_hook(remember))
        handles.append(module.register_forward_hook(hook))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _token_grid(n: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) with h * w == n whose aspect ratio is closest to the image's."""
    aspect = math.log(image_size[0] / image_size[1])
    divisors = [h for h in range(1, n + 1) if n % h == 0]
    h = min(divisors, key=lambda d: abs(math.log(d / (n // d)) - aspect))
    return h, n // h


def _layout(spec: ProbeSpec, attn: torch.Tensor, image_size: tuple[int, int] | None, args: tuple) -> AttentionLayout:
    if image_size is None:
        raise ValueError("record_attention needs the model called with an image batch (B, C, H, W)")
    kind, heads, P = spec.kind, attn.shape[1], spec.prefix_tokens
    padding = (0, 0)
    if kind == "global":
        query = _token_grid(attn.shape[-2] - P, image_size)
        key = _token_grid(attn.shape[-1] - P, image_size)
    elif kind == "class":
        query, key = None, _token_grid(attn.shape[-1] - P, image_size)
    elif kind in ("lsa", "gsa"):
        query = tuple(int(s) for s in args[1])
        key = query if kind == "lsa" else (query[0] // spec.ratio, query[1] // spec.ratio)
        if kind == "lsa":
            ws = spec.window
            padding = (-query[0] % ws, -query[1] % ws)
    elif kind == "outlook":
        query = key = tuple(args[0].shape[1:3])  # input (B, H, W, C)
    else:  # bot, nl, pool: input (B, C, H, W)
        grid = tuple(args[0].shape[-2:])
        query = None if kind == "pool" else grid
        key = (grid[0] // spec.ratio, grid[1] // spec.ratio)
    reference = query or key
    return AttentionLayout(
        kind=kind,
        heads=heads,
        image_size=tuple(image_size),
        query_grid=query,
        key_grid=key,
        stride=(image_size[0] / reference[0], image_size[1] / reference[1]),
        key_stride=(image_size[0] / key[0], image_size[1] / key[1]),
        prefix_tokens=P,
        window=spec.window,
        window_stride=spec.window_stride,
        padding=padding,
    )


def _query_cell(layout: AttentionLayout, query: tuple[float, float]) -> tuple[int, int]:
    """Input pixel (row, col) -> the query grid cell containing it."""
    H, W = layout.query_grid
    i = min(max(int(query[0] // layout.stride[0]), 0), H - 1)
    j = min(max(int(query[1] // layout.stride[1]), 0), W - 1)
    return i, j


def image_map(record: AttentionRecord, query: tuple[float, float] | None = None) -> torch.Tensor:
    """The attention of one query over the image, (B, heads, H, W) on the layer's grid (see the module docstring).

    ``query`` is an input pixel (row, col); ``None`` means the class token (global attention with a prefix, class
    attention) or the pooling map (GC / SNL), and the image centre for every other kind.
    """
    layout, attn = record.layout, record.attn.float()
    B, heads, P = attn.shape[0], layout.heads, layout.prefix_tokens
    Hk, Wk = layout.key_grid
    if layout.kind in ("class", "pool"):
        return attn[:, :, 0, P:].reshape(B, heads, Hk, Wk)
    if query is None and layout.kind == "global" and P > 0:
        return attn[:, :, 0, P:].reshape(B, heads, Hk, Wk)
    if query is None:
        query = (layout.image_size[0] / 2, layout.image_size[1] / 2)
    i, j = _query_cell(layout, query)
    H, W = layout.query_grid
    if layout.kind == "lsa":
        return _lsa_row(attn, layout, i, j)
    if layout.kind == "outlook":
        return _outlook_row(attn, layout, i, j)
    row = attn[:, :, P + i * W + j, P:].reshape(B, heads, Hk, Wk)
    if layout.kind == "gsa" and (Hk, Wk) != (H, W):
        r = H // Hk
        row = row.repeat_interleave(r, dim=2).repeat_interleave(r, dim=3) / (r * r)
    return row


def _lsa_row(attn: torch.Tensor, layout: AttentionLayout, i: int, j: int) -> torch.Tensor:
    ws, (H, W) = layout.window, layout.query_grid
    rows, cols = (H + layout.padding[0]) // ws, (W + layout.padding[1]) // ws
    windows = attn.reshape(-1, rows * cols, layout.heads, ws * ws, ws * ws)  # (B, windows, heads, ws^2, ws^2)
    a, b = i // ws, j // ws
    row = windows[:, a * cols + b, :, (i % ws) * ws + j % ws].reshape(-1, layout.heads, ws, ws)  # (B, heads, ws, ws)
    canvas = row.new_zeros(row.shape[0], layout.heads, rows * ws, cols * ws)
    canvas[:, :, a * ws : (a + 1) * ws, b * ws : (b + 1) * ws] = row
    return canvas[:, :, :H, :W]


def _outlook_row(attn: torch.Tensor, layout: AttentionLayout, i: int, j: int) -> torch.Tensor:
    K, s, (H, W) = layout.window, layout.window_stride, layout.query_grid
    pad = K // 2
    h, w = attn.shape[2], attn.shape[3]
    canvas = attn.new_zeros(attn.shape[0], layout.heads, H + 2 * pad + K, W + 2 * pad + K)
    covering = 0
    for a in range(h):
        u = i + pad - s * a  # the query's row inside window a
        if not 0 <= u < K:
            continue
        for b in range(w):
            v = j + pad - s * b
            if not 0 <= v < K:
                continue
            weights = attn[:, :, a, b, u * K + v].reshape(-1, layout.heads, K, K)  # (B, heads, K, K)
            canvas[:, :, s * a : s * a + K, s * b : s * b + K] += weights  # padded coordinates
            covering += 1
    return canvas[:, :, pad : pad + H, pad : pad + W] / covering


def to_pixels(grid_map: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) grid map -> (..., image H, image W), each cell repeated over the pixels it covers (nearest)."""
    lead = grid_map.shape[:-2]
    flat = grid_map.reshape(-1, 1, *grid_map.shape[-2:]).float()
    return F.interpolate(flat, size=tuple(image_size), mode="nearest").reshape(*lead, *image_size)


def attention_rollout(records: Iterable[AttentionRecord], discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, arXiv 2005.00928) of a ViT / T2T-ViT encoder, (B, H, W).

    Over the encoder's global attention with a class token, in order: each layer's head-mean map with the residual
    added, ``0.5 A + 0.5 I``, rows renormalised, multiplied through the layers; returns the class token's row over
    the grid tokens. ``discard_ratio`` zeroes that fraction of each layer's smallest weights first (a common
    variant; 0 is the paper's).
    """
    layers = [r for r in records if r.layout.kind == "global" and r.layout.prefix_tokens > 0]
    if not layers:
        raise ValueError("attention rollout needs global attention with a class token (ViT, T2T-ViT encoders)")
    rollout = None
    for record in layers:
        a = record.attn.float().mean(dim=1)  # (B, N, N)
        if discard_ratio > 0:
            threshold = a.flatten(1).quantile(discard_ratio, dim=1)[:, None, None]
            a = torch.where(a < threshold, torch.zeros_like(a), a)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    layout = layers[-1].layout
    return rollout[:, 0, layout.prefix_tokens :].reshape(-1, *layout.key_grid)


def mean_cosine_distance(rows: torch.Tensor) -> torch.Tensor:
    """(..., M, D) -> (...): mean of 1 - cos over all ordered pairs of distinct rows; 0 when M < 2."""
    M = rows.shape[-2]
    if M < 2:
        return rows.new_zeros(rows.shape[:-2])
    unit = nn.functional.normalize(rows.float(), dim=-1)
    cos = unit @ unit.transpose(-2, -1)  # (..., M, M)
    off_diagonal = cos.sum(dim=(-2, -1)) - cos.diagonal(dim1=-2, dim2=-1).sum(-1)
    return 1.0 - off_diagonal / (M * (M - 1))


def query_independence(attn: torch.Tensor | AttentionRecord) -> float:
    """Average cosine distance between the attention maps of different queries (GCNet's statistic).

    A record is measured by its kind (prefix tokens dropped; local attention within windows, see the module
    docstring); a bare tensor must be (B, heads, queries, keys). A query-independent block (GC, SNL pooling, class
    attention: one query) scores 0 by construction.
    """
    if isinstance(attn, AttentionRecord):
        P = attn.layout.prefix_tokens
        maps = attn.attn[:, :, P:, P:] if attn.layout.kind == "global" else attn.attn
        return mean_cosine_distance(maps).mean().item()
    if attn.ndim != 4:
        raise ValueError(f"expected attention maps (B, heads, queries, keys), got shape {tuple(attn.shape)}")
    return mean_cosine_distance(attn).mean().item()


def query_independence_table(
    model: nn.Module, batches: Iterable[torch.Tensor], layers: str | None = None
) -> dict[str, list[dict]]:
    """GCNet's statistic per attention layer and per stage, averaged over images.

    ``batches``: normalised image batches (B, C, H, W). Returns ``{"layers": [...], "stages": [...]}``: a layer row
    has its name, kind, query stride and value (mean over calls and images); a stage row averages the layers of one
    kind at one stride (kinds apart: class attention and pooling score 0 by construction).
    """
    sums: dict[str, list] = {}
    with torch.inference_mode(), record_attention(model, layers) as records:
        for batch in batches:
            model(batch)
            for name, calls in records.items():
                for record in calls:
                    entry = sums.setdefault(name, [record.layout, 0.0, 0])
                    entry[1] += query_independence(record) * record.attn.shape[0]
                    entry[2] += record.attn.shape[0]
            records.clear()
    rows = [
        {"layer": name, "kind": layout.kind, "stride": _stride(layout), "query_independence": total / count}
        for name, (layout, total, count) in sums.items()
    ]
    stages: dict[tuple[int, str], list[dict]] = {}
    for row in rows:
        stages.setdefault((row["stride"], row["kind"]), []).append(row)
    stage_rows = [
        {
            "stride": stride,
            "kind": kind,
            "layers": len(members),
            "query_independence": sum(r["query_independence"] for r in members) / len(members),
        }
        for (stride, kind), members in sorted(stages.items())
    ]
    return {"layers": rows, "stages": stage_rows}


def _stride(layout: AttentionLayout) -> int:
    return round(max(layout.stride))
