"""Attention figures as PNG: overlay grids of maps on their image, and GCNet's query-independence plot.

matplotlib is imported inside the functions, so that importing glocal stays light; files are written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from glocal.weights.io import atomic_path

__all__ = ["overlay_grid", "plot_query_independence"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def overlay_grid(
    image: torch.Tensor,
    panels: Sequence[tuple[str, torch.Tensor]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    marker: tuple[float, float] | None = None,
    columns: int = 4,
) -> Path:
    """Save the image, then one panel per (name, map) with the map over the image, its colour bar and name.

    image: (3, H, W) uint8; each map (H, W) at the image's resolution. ``marker``: the query pixel (row, col).
    """
    plt = _pyplot()
    picture = image.permute(1, 2, 0).cpu().numpy()
    count = len(panels) + 1
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(picture)
    axes.flat[0].set_title("image", fontsize=8)
    for ax, (name, grid_map) in zip(axes.flat[1:], panels, strict=False):
        ax.imshow(picture)
        shown = ax.imshow(grid_map.cpu().float().numpy(), cmap="inferno", alpha=0.6)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        ax.set_title(name, fontsize=7)
    if marker is not None:
        for ax in axes.flat[:count]:
            ax.plot(marker[1], marker[0], marker="+", color="cyan", markersize=10, markeredgewidth=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_query_independence(table: dict, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Bar chart of the statistic per attention layer, coloured by kind, in model order (GCNet Figure 2's reading)."""
    plt = _pyplot()
    rows = table["layers"]
    kinds = sorted({row["kind"] for row in rows})
    colours = {kind: plt.get_cmap("tab10")(i) for i, kind in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * len(rows) + 1.5), 3.2))
    ax.bar(
        range(len(rows)),
        [row["query_independence"] for row in rows],
        color=[colours[row["kind"]] for row in rows],
    )
    ax.set_xticks(range(len(rows)), [row["layer"] for row in rows], rotation=90, fontsize=6)
    ax.set_ylabel("cosine distance between queries' maps", fontsize=7)
    ax.set_ylim(0, max([row["query_independence"] for row in rows] + [0.05]) * 1.1)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[kind]) for kind in kinds]
    ax.legend(handles, kinds, fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    plt = _pyplot()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path
