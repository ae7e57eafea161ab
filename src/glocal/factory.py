"""``create_model``: a registered name plus overrides -> a model, optionally cut down to its feature pyramid."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from typing import Any

from torch import nn

from glocal.models._features import FeaturePyramid
from glocal.registry import get_entry
from glocal.weights import is_glocal_checkpoint, load_checkpoint, read_glocal_config

__all__ = ["create_model"]

_CONTRACT_KWARGS = ("num_classes", "in_chans")

_log = logging.getLogger(__name__)


def _runtime_kwargs(model_cls: type) -> list[str]:
    params = inspect.signature(model_cls.__init__).parameters
    return [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in _CONTRACT_KWARGS]


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    features_only: bool = False,
    out_indices: int | list[int] | tuple[int, ...] | None = None,
    checkpoint: str | os.PathLike | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    ``overrides`` naming fields of the family's config change the architecture (``depths=(2, 2, 2, 2)``,
    ``block_attn="gc"``); the model's run-time keyword arguments (``drop_path_rate``, ``img_size``...) pass through.
    Anything else raises ``TypeError`` listing the valid names. ``features_only`` returns a
    :class:`~glocal.models._features.FeaturePyramid` over ``out_indices`` (default: every tap).

    ``checkpoint`` loads weights (:func:`glocal.weights.load_checkpoint`): a glocal folder, or an official or timm
    file of any supported layout. A glocal folder also supplies the defaults it was saved with (its config overrides,
    ``num_classes``, ``in_chans``, input size); arguments given here take precedence. Otherwise ``num_classes``
    defaults to 1000 and ``in_chans`` to 3; a checkpoint with other values has its classifier re-initialised or its
    first layer adapted, and says so in the log.
    """
    entry = get_entry(name)
    cfg = entry.config()
    saved = read_glocal_config(checkpoint) if checkpoint is not None and is_glocal_checkpoint(checkpoint) else {}
    if saved.get("model_name") not in (None, name):
        _log.warning("%s was saved from %r; building %r with its own defaults", checkpoint, saved["model_name"], name)
        saved = {}
    if saved:
        saved_cfg = saved.get("config") or {}
        known = {f.name for f in dataclasses.fields(cfg)}
        cfg = dataclasses.replace(cfg, **{k: _as_tuples(v) for k, v in saved_cfg.items() if k in known})
        if "img_size" in _runtime_kwargs(entry.model_cls) and "img_size" not in overrides and saved.get("data_config"):
            height, width = saved["data_config"]["input_size"][1:]
            overrides = {**overrides, "img_size": height if height == width else (height, width)}
    num_classes = num_classes if num_classes is not None else saved.get("num_classes", 1000)
    in_chans = in_chans if in_chans is not None else saved.get("in_chans", 3)
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
        load_checkpoint(model, checkpoint)
    if features_only:
        return FeaturePyramid(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices applies to features_only=True models only")
    return model


def _as_tuples(value: Any) -> Any:
    """JSON lists back to the tuples frozen configs hold."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value
