"""Loading any supported checkpoint into a model, and exporting a model to a source's layout.

The path from a file to a loaded model: read the file safely (:mod:`glocal.weights.io`), detect its layout from the
keys and map it to glocal's names (:mod:`glocal.weights.layout` and the per-family maps), adapt the first layer, the
size-dependent tensors and the classifier to the model's run-time settings, refuse anything else that does not fit
(:mod:`glocal.weights.adapt`), then copy the tensors in.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from torch import nn

from glocal.weights.adapt import adapt_classifier, adapt_first_conv, check_fit
from glocal.weights.checkpoint import Checkpoint, open_checkpoint
from glocal.weights.io import CheckpointError
from glocal.weights.layout import GLOCAL, StateDict, detect_layout, family_of, get_layout

__all__ = ["LoadResult", "export_state_dict", "import_state_dict", "load_checkpoint", "load_state_dict"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadResult:
    """What a load did: the layout detected, the classifier modules left at initialisation, the adaptations made."""

    layout: str
    reinitialised: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)


def _resolve_layout(state_dict: StateDict, model: nn.Module, layout: str | None):
    if layout is None:
        return detect_layout(state_dict, model)
    chosen = get_layout(layout)
    if chosen is not GLOCAL and chosen.family != family_of(model):
        raise CheckpointError(f"layout {layout!r} is for the {chosen.family!r} family, not {family_of(model)!r}")
    return chosen


def import_state_dict(state_dict: StateDict, model: nn.Module, *, layout: str | None = None) -> tuple[StateDict, str]:
    """A source state dict in glocal's names for ``model`` (no adaptation, no checks); returns it and the layout."""
    chosen = _resolve_layout(state_dict, model, layout)
    return chosen.to_glocal(dict(state_dict), model), chosen.name


def load_state_dict(
    model: nn.Module,
    state_dict: StateDict,
    *,
    layout: str | None = None,
    source: str = "state dict",
    new_classifier: bool = True,
) -> LoadResult:
    """Load a state dict of any supported layout into ``model`` (see the module docstring); raises
    :class:`~glocal.weights.adapt.CheckpointMismatchError` listing every key that does not fit.

    ``new_classifier=False`` refuses (``CheckpointError``) to leave a classifier at its initialisation: what
    evaluation, prediction and export need, where a random head would silently produce random outputs."""
    mapped, layout_name = import_state_dict(state_dict, model, layout=layout)
    adapted = adapt_first_conv(mapped, model)
    mapped = model.adapt_state_dict(mapped)
    reinitialised = adapt_classifier(mapped, model)
    if reinitialised and not new_classifier:
        raise CheckpointError(
            f"{source} has no classifier for {model.num_classes} classes ({', '.join(reinitialised)} would be "
            f"re-initialised at random); refusing to use a model with a random head. Rebuild it with the "
            f"checkpoint's number of classes (leave num_classes / --num-classes out)"
        )
    check_fit(mapped, model, allow_missing=tuple(reinitialised))
    model.load_state_dict(mapped, strict=False)
    _log.info("loaded %s (layout %s, %d tensors)", source, layout_name, len(mapped))
    return LoadResult(layout=layout_name, reinitialised=reinitialised, adapted=adapted)


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Checkpoint,
    *,
    layout: str | None = None,
    ema: bool = False,
    new_classifier: bool = True,
) -> LoadResult:
    """Load a checkpoint into ``model``: a glocal folder, a training state (``last.pt``), or a ``.safetensors``,
    ``.npz`` or PyTorch file in any supported layout (detected from its keys unless ``layout`` names one), or a
    :class:`~glocal.weights.checkpoint.Checkpoint` already opened. ``ema=True`` takes the EMA weights of files that
    hold both. Raises :class:`~glocal.weights.io.CheckpointError` on unreadable or unfitting files."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint, ema=ema)
    name = getattr(model, "model_name", None)
    if ckpt.model_name and name and ckpt.model_name != name:
        _log.warning("%s was saved from %r; loading it into %r", ckpt.path, ckpt.model_name, name)
    return load_state_dict(
        model, ckpt.tensors, layout=layout or ckpt.layout, source=str(ckpt.path), new_classifier=new_classifier
    )


def export_state_dict(model: nn.Module, layout: str) -> StateDict:
    """``model``'s weights in a source's layout (names, shapes and conventions of that release)."""
    chosen = _resolve_layout({}, model, layout)
    return chosen.from_glocal({k: v.detach() for k, v in model.state_dict().items()}, model)
