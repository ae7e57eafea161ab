"""Model registry: every variant is a config function registered with the figures its paper reports.

The registry knows nothing of the model classes' internals: each family file decorates its variant functions with
:func:`register_model`, giving the model class that consumes the config and the published figures. The package's
``__init__`` imports the families, which fills the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelEntry", "PaperFigures", "register_model", "get_entry", "list_models", "model_info"]


@dataclass(frozen=True)
class PaperFigures:
    """Published figures for one variant, each with the place it comes from.

    ``params`` is the paper's or official code's parameter count (an integer when the official code or training
    log gives one exactly); ``exact_params`` says whether our count must equal it to the unit, otherwise it must be
    within ``params_tolerance`` (relative). ``gmacs`` is the multiply-accumulate count at the default input size
    (papers call it FLOPs), ``top1`` ImageNet-1k top-1 accuracy in percent.
    """

    params: int
    exact_params: bool = False
    params_tolerance: float = 0.005
    gmacs: float | None = None
    top1: float | None = None
    source: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """One registered variant: how to build it and what its paper says about it."""

    name: str
    family: str
    model_cls: type
    config_fn: Callable[[], Any]
    paper: PaperFigures
    input_size: tuple[int, int, int] = (3, 224, 224)
    # A regression snapshot of our own parameter count, reviewed against the official code's; equals paper.params
    # when the paper gives an exact integer.
    pinned_params: int | None = None

    def config(self) -> Any:
        return self.config_fn()


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    model_cls: type,
    *,
    family: str,
    paper: PaperFigures,
    input_size: tuple[int, int, int] = (3, 224, 224),
    pinned_params: int | None = None,
) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Decorator registering a config function under its own name."""

    def decorator(fn: Callable[[], Any]) -> Callable[[], Any]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if not dataclasses.is_dataclass(fn()):
            raise TypeError(f"config function {name!r} must return a dataclass instance")
        _REGISTRY[name] = ModelEntry(
            name=name,
            family=family,
            model_cls=model_cls,
            config_fn=fn,
            paper=paper,
            input_size=input_size,
            pinned_params=pinned_params
            if pinned_params is not None
            else (paper.params if paper.exact_params else None),
        )
        return fn

    return decorator


def get_entry(name: str) -> ModelEntry:
    """The entry registered as ``name``; an unknown name raises ``KeyError`` suggesting close names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else " See glocal.list_models()."
        raise KeyError(f"unknown model {name!r}.{hint}") from None


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by a glob pattern (``'twins_*'``)."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def model_info(name: str) -> dict[str, Any]:
    """Published figures and defaults of a registered model, as plain data."""
    entry = get_entry(name)
    return {
        "name": entry.name,
        "family": entry.family,
        "config": dataclasses.asdict(entry.config()),
        "paper_params": entry.paper.params,
        "exact_params": entry.paper.exact_params,
        "paper_gmacs": entry.paper.gmacs,
        "top1": entry.paper.top1,
        "source": entry.paper.source,
        "input_size": entry.input_size,
    }
