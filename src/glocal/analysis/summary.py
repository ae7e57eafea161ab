"""Per-model summaries: our parameter count and MACs next to the paper's, pyramid taps, a non-square forward."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from glocal.analysis.complexity import count_macs, count_params
from glocal.factory import create_model
from glocal.registry import get_entry

__all__ = ["ModelSummary", "summarize"]


@dataclass(frozen=True)
class ModelSummary:
    name: str
    family: str
    params: int
    paper_params: int
    gmacs: float
    paper_gmacs: float | None
    top1: float | None
    input_size: tuple[int, int, int]
    taps: list[tuple[int, int]]  # (channels, reduction) per pyramid tap
    config: dict
    source: str
    forward_size: tuple[int, int] | None = None
    forward_shape: tuple[int, ...] | None = None

    @property
    def params_ratio(self) -> float:
        return self.params / self.paper_params


def _non_square_size(model) -> tuple[int, int]:
    div = max(model.export_divisor, 32)
    h = max(model.min_input_size, 128)
    h = -(-h // div) * div
    return h, h + 2 * div


def summarize(name: str, *, forward: bool = False) -> ModelSummary:
    """Count parameters and MACs on the meta device (no memory, no compute); ``forward`` also runs a real
    non-square forward pass at the smallest convenient size and records the logits' shape."""
    entry = get_entry(name)
    with torch.device("meta"):
        meta_model = create_model(name)
    summary = ModelSummary(
        name=name,
        family=entry.family,
        params=count_params(meta_model),
        paper_params=entry.paper.params,
        gmacs=count_macs(meta_model, entry.input_size) / 1e9,
        paper_gmacs=entry.paper.gmacs,
        top1=entry.paper.top1,
        input_size=entry.input_size,
        taps=list(zip(meta_model.feature_info.channels(), meta_model.feature_info.reduction(), strict=True)),
        config=dataclasses.asdict(meta_model.cfg),
        source=entry.paper.source,
    )
    if not forward:
        return summary
    model = create_model(name).eval()
    size = _non_square_size(model)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    if not torch.isfinite(logits).all():
        raise RuntimeError(f"{name}: non-finite logits at {size[0]}x{size[1]}")
    return dataclasses.replace(summary, forward_size=size, forward_shape=tuple(logits.shape))
