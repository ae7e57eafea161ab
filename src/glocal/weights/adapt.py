"""Fitting a checkpoint (already in glocal's names) to a model built with other run-time settings, then refusing
anything that still does not fit.

* ``in_chans`` other than the checkpoint's: the first layer's weight (``model.first_conv``) is adapted. For one
  channel the RGB filters are summed (a grey image through the sum equals the RGB model on that image repeated in
  three channels); for any other count the filters are repeated cyclically and scaled by ``3 / in_chans``, so a
  constant image gives the same activation, as timm's ``adapt_input_conv``.
* Input size: the model's own :meth:`~glocal.models._base.Backbone.adapt_state_dict` resamples size-dependent tensors
  (absolute position embeddings, bicubic and non-square; relative tables).
* ``num_classes`` other than the checkpoint's, or a checkpoint without a classifier: the classifier
  (``model.classifier``) keeps its fresh initialisation, and a log message says so.
* Everything else must fit exactly: :func:`check_fit` raises :class:`CheckpointMismatchError` listing every missing
  key, unexpected key and shape mismatch side by side. Nothing is silently left at random initialisation.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from glocal.weights.io import CheckpointError
from glocal.weights.layout import StateDict

__all__ = ["CheckpointMismatchError", "adapt_classifier", "adapt_first_conv", "adapt_input_weight", "check_fit"]

_log = logging.getLogger(__name__)

# BatchNorm's step counter only matters for momentum=None training; releases before PyTorch 0.4 lack it.
_OPTIONAL_SUFFIXES = (".num_batches_tracked",)


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the model's: the message lists every difference."""


def adapt_input_weight(weight: torch.Tensor, in_chans: int) -> tuple[torch.Tensor, str]:
    """A first-layer weight for RGB, (O, 3, ...) or a (O, 3 * K) linear over channel-major patches, adapted to
    ``in_chans`` input channels; returns the weight and how it was adapted."""
    out_dim = weight.shape[0]
    per_chan = weight.reshape(out_dim, 3, -1) if weight.ndim == 2 else weight
    if per_chan.shape[1] != 3:
        raise CheckpointError(f"can only adapt a first layer trained on 3 channels, got weight {tuple(weight.shape)}")
    w = per_chan if per_chan.is_floating_point() else per_chan.float()
    if in_chans == 1:
        adapted, how = w.sum(dim=1, keepdim=True), "summed the RGB filters into one channel"
    else:
        repeats = math.ceil(in_chans / 3)
        adapted = w.repeat(1, repeats, *([1] * (w.ndim - 2)))[:, :in_chans] * (3 / in_chans)
        how = f"repeated the RGB filters over {in_chans} channels and scaled them by 3/{in_chans}"
    adapted = adapted.to(weight.dtype)
    return (adapted.reshape(out_dim, -1) if weight.ndim == 2 else adapted), how


def adapt_first_conv(state_dict: StateDict, model: nn.Module) -> list[str]:
    """Adapt the first layer's weight in place to ``model.in_chans``; returns what was done (empty if nothing)."""
    first = getattr(model, "first_conv", "")
    key = f"{first}.weight"
    expected = model.state_dict().get(key) if first else None
    if expected is None or key not in state_dict or state_dict[key].shape == expected.shape:
        return []
    weight = state_dict[key]
    if weight.ndim == 2:  # a linear over unfolded channel-major patches (T2T-ViT's first attention)
        patch = expected.shape[1] // model.in_chans
        ckpt_chans = weight.shape[1] // patch if weight.shape[1] % patch == 0 else -1
    else:
        ckpt_chans = weight.shape[1]
    if ckpt_chans != 3 or weight.shape[0] != expected.shape[0]:
        return []  # not an input-channel difference: check_fit reports the mismatch
    state_dict[key], how = adapt_input_weight(weight, model.in_chans)
    message = f"{key}: {how} (checkpoint {tuple(weight.shape)} -> model {tuple(expected.shape)})"
    _log.info("adapted the first layer: %s", message)
    return [message]


def adapt_classifier(state_dict: StateDict, model: nn.Module) -> list[str]:
    """Drop classifier tensors that do not fit the model (other ``num_classes``, or no classifier) and say so; the
    model's freshly initialised classifier stays. Returns the names of the modules left at initialisation."""
    own = model.state_dict()
    reinitialised = []
    for name in getattr(model, "classifier", ()):
        prefix = f"{name}."
        ckpt = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        model_keys = [k for k in own if k.startswith(prefix)]
        fits = bool(ckpt) and set(ckpt) == set(model_keys) and all(v.shape == own[k].shape for k, v in ckpt.items())
        if fits or (not ckpt and not model_keys):
            continue
        for k in ckpt:
            del state_dict[k]
        if ckpt:
            ckpt_shape = tuple(ckpt.get(f"{name}.weight", next(iter(ckpt.values()))).shape)
            reason = f"checkpoint {ckpt_shape[0] if ckpt_shape else '?'} outputs, model {model.num_classes} classes"
        else:
            reason = "the checkpoint has no classifier"
        if model_keys:
            _log.warning("classifier %r re-initialised (%s): train it before use", name, reason)
            reinitialised.append(name)
        else:
            _log.info("classifier %r dropped: the model has none (num_classes=0)", name)
    return reinitialised


def check_fit(state_dict: StateDict, model: nn.Module, *, allow_missing: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointMismatchError` unless every key of the model is in ``state_dict`` (except
    ``allow_missing`` module prefixes and BatchNorm step counters) with its shape, and nothing else is."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items()}
    allowed = tuple(f"{p}." for p in allow_missing)
    missing = sorted(
        k for k in own if k not in given and not k.startswith(allowed) and not k.endswith(_OPTIONAL_SUFFIXES)
    )
    unexpected = sorted(k for k in given if k not in own)
    shapes = sorted(k for k in given if k in own and given[k] != own[k])
    own_float = {k for k, v in model.state_dict().items() if v.is_floating_point()}
    kinds = sorted(k for k in given if k in own_float and not state_dict[k].is_floating_point())
    if kinds:
        listed = ", ".join(f"{k} ({state_dict[k].dtype})" for k in kinds[:5])
        raise CheckpointMismatchError(
            f"the checkpoint holds {len(kinds)} non-floating tensor(s) where {type(model).__name__} has floating "
            f"parameters, which would be converted silently: {listed}{' ...' if len(kinds) > 5 else ''}"
        )
    if not (missing or unexpected or shapes):
        return
    lines = [
        f"the checkpoint does not fit {type(model).__name__} "
        f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} shape mismatches):"
    ]
    if missing or unexpected:
        width = max([len("missing (model has, checkpoint lacks)")] + [len(k) for k in missing])
        lines.append(
            f"  {'missing (model has, checkpoint lacks)':<{width}}  | unexpected (checkpoint has, model lacks)"
        )
        for i in range(max(len(missing), len(unexpected))):
            left = missing[i] if i < len(missing) else ""
            right = unexpected[i] if i < len(unexpected) else ""
            lines.append(f"  {left:<{width}}  | {right}")
    if shapes:
        lines.append("  shape mismatches (checkpoint vs model):")
        lines += [f"    {k}: {given[k]} vs {own[k]}" for k in shapes]
    raise CheckpointMismatchError("\n".join(lines))
