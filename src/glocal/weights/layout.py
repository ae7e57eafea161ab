"""Checkpoint layouts: how a source (an official release, timm, OpenMMLab) names and shapes a family's weights.

A :class:`Layout` is registered per family and source. It carries a detector (regular expressions that must each
match at least one key of a state dict) and two functions, ``to_glocal`` and ``from_glocal``, that are each other's
inverse: importing an official state dict and exporting it again gives back the same tensors. Most maps are pure
renames written as :class:`KeyMap` templates; value changes (fused qkv, transposed kernels, folded norms) live in the
family's module next to its templates.

:func:`detect_layout` picks the layout from the keys: glocal's own names when every key is one of the model's,
otherwise the one registered layout of the model's family whose markers all match. No match, or more than one,
raises :class:`~glocal.weights.io.CheckpointError` naming every layout tried and why it was not taken.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from glocal.registry import get_entry, list_models
from glocal.weights.io import CheckpointError

__all__ = [
    "GLOCAL",
    "KeyMap",
    "Layout",
    "StateDict",
    "detect_layout",
    "family_of",
    "get_layout",
    "layouts_for",
    "register_layout",
]

StateDict = dict[str, torch.Tensor]

_PLACEHOLDER = re.compile(r"\{(\*|\w+)([+-]\d+)?\}")


class _Template:
    """A key pattern: ``{name}`` is an integer (``{name+1}`` the same integer plus one), ``{*}`` any rest."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.offsets: dict[str, int] = {}
        regex, pos = [], 0
        for m in _PLACEHOLDER.finditer(text):
            regex.append(re.escape(text[pos : m.start()]))
            name, offset = m.group(1), int(m.group(2) or 0)
            if name == "*":
                regex.append("(?P<_rest>.+)")
                self.offsets["_rest"] = 0
            else:
                regex.append(f"(?P<{name}>\\d+)")
                self.offsets[name] = offset
            pos = m.end()
        regex.append(re.escape(text[pos:]))
        self.regex = re.compile("".join(regex))

    def match(self, key: str) -> dict[str, int | str] | None:
        m = self.regex.fullmatch(key)
        if m is None:
            return None
        return {
            name: (value if name == "_rest" else int(value) - self.offsets[name])
            for name, value in m.groupdict().items()
        }

    def format(self, values: dict[str, int | str]) -> str:
        def sub(m: re.Match) -> str:
            name = "_rest" if m.group(1) == "*" else m.group(1)
            value = values[name]
            return value if name == "_rest" else str(value + int(m.group(2) or 0))

        return _PLACEHOLDER.sub(sub, self.text)


class KeyMap:
    """Two-way renaming by template pairs ``(theirs, ours)``, tried in order; the first full match wins.

    ``("conv{s+1}_{b+1}_1x1_reduce.{*}", "layer{s}.{b}.conv1.{*}")`` maps Caffe's 1-based stage and block numbers
    onto 0-based module indices and back.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self.pairs = [(_Template(theirs), _Template(ours)) for theirs, ours in pairs]
        for theirs, ours in self.pairs:
            if set(theirs.offsets) != set(ours.offsets):
                raise ValueError(f"templates {theirs.text!r} and {ours.text!r} name different placeholders")

    @staticmethod
    def _rename(key: str, pairs: Iterable[tuple[_Template, _Template]]) -> str | None:
        for src, dst in pairs:
            values = src.match(key)
            if values is not None:
                return dst.format(values)
        return None

    def to_ours(self, key: str) -> str | None:
        return self._rename(key, self.pairs)

    def to_theirs(self, key: str) -> str | None:
        return self._rename(key, ((ours, theirs) for theirs, ours in self.pairs))

    def _apply(self, state_dict: StateDict, rename: Callable[[str], str | None]) -> StateDict:
        out: StateDict = {}
        origin: dict[str, str] = {}
        for key, value in state_dict.items():
            new = rename(key)
            new = key if new is None else new  # unmatched keys keep their name, so strict checks report them
            if new in out:
                raise CheckpointError(f"keys {origin[new]!r} and {key!r} both map to {new!r}")
            out[new], origin[new] = value, key
        return out

    def rename_to_ours(self, state_dict: StateDict) -> StateDict:
        return self._apply(state_dict, self.to_ours)

    def rename_to_theirs(self, state_dict: StateDict) -> StateDict:
        return self._apply(state_dict, self.to_theirs)


@dataclass(frozen=True)
class Layout:
    """One source's naming of one family's weights, with its detector and its two inverse maps.

    ``markers`` are regular expressions that must each match some key for the layout to be detected; a layout
    without markers is never detected and must be named (its keys are indistinguishable from another source's).

    ``to_glocal(state_dict, model)`` and ``from_glocal(state_dict, model)`` receive the model the weights are for,
    so that maps depending on the architecture (where a family's blocks sit, whether a norm exists) can read it.
    """

    name: str
    family: str
    description: str
    markers: tuple[str, ...]
    to_glocal: Callable[[StateDict, nn.Module], StateDict]
    from_glocal: Callable[[StateDict, nn.Module], StateDict]

    @classmethod
    def renaming(cls, keymap: KeyMap, **fields) -> Layout:
        """A layout whose two maps are ``keymap``'s renamings (no architecture-dependent step)."""
        return cls(
            to_glocal=lambda sd, model: keymap.rename_to_ours(sd),
            from_glocal=lambda sd, model: keymap.rename_to_theirs(sd),
            **fields,
        )

    def missing_markers(self, keys: Iterable[str]) -> list[str]:
        keys = list(keys)
        return [m for m in self.markers if not any(re.search(m, k) for k in keys)]


def _identity(state_dict: StateDict, model: nn.Module) -> StateDict:
    return dict(state_dict)


GLOCAL = Layout(
    name="glocal",
    family="*",
    description="glocal's own parameter names (model.state_dict())",
    markers=(),
    to_glocal=_identity,
    from_glocal=_identity,
)

_LAYOUTS: dict[str, Layout] = {"glocal": GLOCAL}


def register_layout(layout: Layout) -> Layout:
    if layout.name in _LAYOUTS:
        raise ValueError(f"checkpoint layout {layout.name!r} is registered twice")
    _LAYOUTS[layout.name] = layout
    return layout


def get_layout(name: str) -> Layout:
    try:
        return _LAYOUTS[name]
    except KeyError:
        raise KeyError(f"unknown checkpoint layout {name!r}; known: {sorted(_LAYOUTS)}") from None


def layouts_for(family: str) -> list[Layout]:
    """The layouts registered for a family (glocal's own excluded), in registration order."""
    return [layout for layout in _LAYOUTS.values() if layout.family == family]


def family_of(model: nn.Module) -> str:
    """The registry family of a model: from its registered name when it has one, else from its class."""
    name = getattr(model, "model_name", None)
    if name is not None:
        return get_entry(name).family
    for registered in list_models():
        entry = get_entry(registered)
        if isinstance(model, entry.model_cls):
            return entry.family
    raise ValueError(f"{type(model).__name__} is not the class of any registered model")


def _foreign_keys(state_dict: StateDict, model: nn.Module) -> list[str]:
    """Checkpoint keys that are not the model's own (classifier keys count as the model's)."""
    own = set(model.state_dict())
    heads = tuple(f"{name}." for name in getattr(model, "classifier", ()))
    return sorted(k for k in state_dict if k not in own and not k.startswith(heads))


def detect_layout(state_dict: StateDict, model: nn.Module) -> Layout:
    """The layout of ``state_dict`` for ``model``: glocal's own names, or the one layout whose markers match."""
    foreign = _foreign_keys(state_dict, model)
    if not foreign:
        return GLOCAL
    family = family_of(model)
    candidates = [layout for layout in layouts_for(family) if layout.markers]
    matching = [layout for layout in candidates if not layout.missing_markers(state_dict)]
    if len(matching) == 1:
        return matching[0]
    tried = [f"  glocal: {len(foreign)} keys are not this model's, e.g. {foreign[:3]}"]
    tried += [
        f"  {layout.name} ({layout.description}): "
        + (f"no key matches {layout.missing_markers(state_dict)}" if layout not in matching else "matches")
        for layout in candidates
    ]
    named_only = [layout.name for layout in layouts_for(family) if not layout.markers]
    sample = sorted(state_dict)[:5]
    what = "is ambiguous" if matching else "was not recognised"
    raise CheckpointError(
        f"the checkpoint's layout {what} for family {family!r} (first keys {sample}). Layouts tried:\n"
        + "\n".join(tried)
        + (f"\nLayouts never detected, only named: {named_only}." if named_only else "")
        + "\nPass layout=NAME to choose one."
    )
