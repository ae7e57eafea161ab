"""``create_model``: a registered name plus overrides -> a model, optionally cut down to its feature pyramid."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from torch import nn

from glocal.models._features import FeaturePyramid
from glocal.registry import get_entry

__all__ = ["create_model"]

_CONTRACT_KWARGS = ("num_classes", "in_chans")


def _runtime_kwargs(model_cls: type) -> list[str]:
    params = inspect.signature(model_cls.__init__).parameters
    return [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in _CONTRACT_KWARGS]


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices: int | list[int] | tuple[int, ...] | None = None,
    checkpoint: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    ``overrides`` naming fields of the family's config change the architecture (``depths=(2, 2, 2, 2)``,
    ``block_attn="gc"``); the model's run-time keyword arguments (``drop_path_rate``, ``img_size``...) pass through.
    Anything else raises ``TypeError`` listing the valid names. ``features_only`` returns a
    :class:`~glocal.models._features.FeaturePyramid` over ``out_indices`` (default: every tap).
    """
    entry = get_entry(name)
    cfg = entry.config()
    cfg_fields = [f.name for f in dataclasses.fields(cfg)]
    runtime = _runtime_kwargs(entry.model_cls)
    unknown = sorted(set(overrides) - set(cfg_fields) - set(runtime))
    if unknown:
        raise TypeError(
            f"create_model({name!r}) got unknown keyword argument(s) {unknown}. "
            f"Config fields: {cfg_fields}. Run-time options: {runtime}."
        )
    cfg_overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if k in cfg_fields}
    cfg = dataclasses.replace(cfg, **cfg_overrides)
    runtime_overrides = {k: v for k, v in overrides.items() if k not in cfg_fields}
    model = entry.model_cls(cfg, num_classes=num_classes, in_chans=in_chans, **runtime_overrides)
    model.model_name = name
    if checkpoint is not None:
        raise NotImplementedError("loading checkpoints through create_model(checkpoint=...) is not available yet")
    if features_only:
        return FeaturePyramid(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices applies to features_only=True models only")
    return model
