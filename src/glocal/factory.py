"""``create_model``: a registered name plus overrides -> a model, optionally cut down to its feature pyramid."""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

import torch
from torch import nn

from glocal.models._base import DataConfig
from glocal.models._features import FeaturePyramid
from glocal.pretrained import get_pretrained, pretrained_file
from glocal.registry import get_entry
from glocal.validate import check_count, check_fields
from glocal.weights import Checkpoint, import_state_dict, load_checkpoint, open_checkpoint, resolve_model_name
from glocal.weights.io import CheckpointError

__all__ = ["create_model"]

_CONTRACT_KWARGS = ("num_classes", "in_chans")


def _runtime_kwargs(model_cls: type) -> list[str]:
    params = inspect.signature(model_cls.__init__).parameters
    return [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in _CONTRACT_KWARGS]


def create_model(
    name: str | None = None,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    features_only: bool = False,
    out_indices: int | list[int] | tuple[int, ...] | None = None,
    checkpoint: str | os.PathLike | Checkpoint | None = None,
    layout: str | None = None,
    ema: bool = False,
    new_classifier: bool = True,
    pretrained: bool | str = False,
    revision: str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model.

    ``overrides`` naming fields of the family's config change the architecture (``depths=(2, 2, 2, 2)``,
    ``block_attn="gc"``); the model's run-time keyword arguments (``drop_path_rate``, ``img_size``...) pass through.
    Anything else raises ``TypeError`` listing the valid names. ``features_only`` returns a
    :class:`~glocal.models._features.FeaturePyramid` over ``out_indices`` (default: the family's, as timm's).

    ``checkpoint`` loads weights: a glocal folder, a training state (``last.pt``), an official or timm file of any
    supported layout (``layout`` names one instead of detecting it), or a :class:`~glocal.weights.Checkpoint` from
    :func:`~glocal.weights.open_checkpoint`. What the checkpoint says about itself is the default: its model
    (``name`` may then be left out, and must not contradict it), architecture overrides, ``num_classes`` (for a
    foreign file: the size of its classifier), ``in_chans``, input size and preprocessing (``model.data_config``);
    arguments given here take precedence. A ``num_classes`` other than the checkpoint's re-initialises the classifier
    (logged), unless ``new_classifier=False``, which refuses; another ``in_chans`` adapts the first layer. ``ema``
    takes the EMA weights of files holding both.

    ``pretrained=True`` (the model's default tag, or the tag of a ``model.tag`` name: timm's convention) or
    ``pretrained=TAG`` loads a public release (:mod:`glocal.pretrained`); a tagged name, with or without
    ``pretrained``, sets ``model.data_config`` and ``model.pretrained_cfg`` to the preprocessing the tag was
    evaluated with, and its input size (``img_size``, unless given: ``t2t_vit_14.official_in1k_384`` builds at 384,
    as the source evaluated it). Neither changes the architecture. ``revision`` pins a Hugging Face tag to a commit
    of its repository (default: the recorded revision, or ``$GLOCAL_HF_REVISION``).

    ``dtype`` casts parameters and buffers after loading (``torch.bfloat16``: on CPUs with AVX512-BF16/AMX the fast
    inference path; see docs/benchmarks.md); feed inputs of the same dtype. For inference,
    :func:`glocal.optimize.optimize_for_inference` (``dtype=``) also folds BN.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
    record = None
    if revision is not None and not pretrained:
        raise ValueError("revision= applies to pretrained=True|TAG (a Hugging Face tag's commit)")
    if pretrained or (name is not None and "." in name):
        if pretrained and checkpoint is not None:
            raise ValueError("pass either pretrained=True|TAG or checkpoint=PATH, not both")
        record = get_pretrained(name, pretrained if isinstance(pretrained, str) else True, revision=revision)
        name = record.model
        if pretrained:
            checkpoint, layout, ema = pretrained_file(record), layout or record.layout, ema or record.ema
    ckpt = (
        checkpoint if isinstance(checkpoint, Checkpoint) or checkpoint is None else open_checkpoint(checkpoint, ema=ema)
    )
    if ckpt is not None:
        ckpt.refuse_segmenter("glocal.create_model and the commands built on it (predict, export, convert, attention)")
    name = resolve_model_name(name, ckpt)
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
    if record is not None and "img_size" in cfg_fields:
        overrides.setdefault("img_size", record.input_size[-1])  # the size the tag was evaluated at
    overrides = check_fields(type(cfg), overrides, where=f"create_model({name!r})", bounded=True)
    if ckpt is not None:
        saved = {k: _as_tuples(v) for k, v in ckpt.config.items() if k in cfg_fields or k in runtime}
        try:
            saved = check_fields(type(cfg), saved, where=f"the config saved in {ckpt.path}", bounded=True)
        except (TypeError, ValueError) as err:
            raise CheckpointError(str(err)) from err
        if ckpt.input_size is not None and "img_size" in (*cfg_fields, *runtime):
            height, width = ckpt.input_size
            saved["img_size"] = height if height == width else (height, width)
        overrides = {**saved, **overrides}
        in_chans = in_chans if in_chans is not None else ckpt.in_chans
    cfg_overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if k in cfg_fields}
    cfg = dataclasses.replace(cfg, **cfg_overrides)
    runtime_overrides = {k: v for k, v in overrides.items() if k not in cfg_fields}
    if num_classes is None and ckpt is not None:
        num_classes = ckpt.num_classes
        if num_classes is None:
            with torch.device("meta"):
                probe = entry.model_cls(cfg, **runtime_overrides)
            num_classes = _classifier_size(probe, name, ckpt, layout)
    num_classes = check_count(num_classes if num_classes is not None else 1000, "num_classes", minimum=0)
    in_chans = check_count(in_chans if in_chans is not None else 3, "in_chans", minimum=1)
    model = entry.model_cls(cfg, num_classes=num_classes, in_chans=in_chans, **runtime_overrides)
    model.model_name = name
    size = tuple(model.data_config.input_size[-2:])
    if min(size) < model.min_input_size:  # refused here, not at the first forward
        raise ValueError(
            f"{name} takes heights and widths of at least {model.min_input_size}, so it cannot be built for "
            f"img_size {size[0]}x{size[1]}"
        )
    if record is not None:
        # Before loading: a layout that converts inputs (augreg's mean = std = 0.5) converts to the tag's own view.
        # The input size stays the one the model is built at (the tag's, unless img_size says otherwise).
        view = {k: v for k, v in record.data_config.items() if k != "input_size"}
        model.data_config = dataclasses.replace(model.data_config, **view)
        model.pretrained_cfg = record
    if ckpt is not None:
        if ckpt.data_config:
            model.data_config = _saved_preprocessing(model.data_config, ckpt.data_config)
        load_checkpoint(model, ckpt, layout=layout, new_classifier=new_classifier)
    if dtype is not None:
        model.to(dtype)
    if features_only:
        ints = out_indices if isinstance(out_indices, (list, tuple)) else [out_indices]
        if out_indices is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in ints):
            raise TypeError(f"out_indices must be an integer or a list of integers (tap indices), got {out_indices!r}")
        return FeaturePyramid(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices applies to features_only=True models only")
    return model


def _classifier_size(probe: nn.Module, name: str, ckpt: Checkpoint, layout: str | None) -> int | None:
    """The number of outputs of a foreign checkpoint's classifier (None without one), read in glocal's names."""
    probe.model_name = name
    mapped, _ = import_state_dict(ckpt.tensors, probe, layout=layout or ckpt.layout)
    heads = [mapped[f"{head}.weight"] for head in probe.classifier if f"{head}.weight" in mapped]
    return heads[0].shape[0] if heads else None


def _saved_preprocessing(current: DataConfig, saved: dict[str, Any]) -> DataConfig:
    """The model's data config with the checkpoint's normalisation, crop and interpolation (the input size stays the
    model's: the one it was built at, the checkpoint's unless overridden)."""
    keep = {"input_size", "dynamic_size"}
    known = {f.name for f in dataclasses.fields(current)} - keep
    return dataclasses.replace(current, **{k: _as_tuples(v) for k, v in saved.items() if k in known})


def _as_tuples(value: Any) -> Any:
    """JSON lists back to the tuples frozen configs hold."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value
