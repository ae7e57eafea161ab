"""``open_checkpoint``: the one place that decides what a checkpoint is, reading it once.

Three kinds, told apart by what is on disk:

* ``"glocal"``: a folder in glocal's format (``model.safetensors`` + ``config.json``, what ``save_checkpoint`` and
  ``glocal train`` write);
* ``"train-state"``: a training state (``last.pt`` of a run: weights, EMA weights, optimiser, the run's config);
* ``"file"``: any other supported file (an official release, timm's, OpenMMLab's...), whose layout is detected from
  its keys once a model is known.

The result, a frozen :class:`Checkpoint`, carries what the checkpoint says about itself: the task (``"classify"`` or
``"segment"``: a segmenter's folder or training state, whose ``model_name`` is its backbone's and whose
``segment`` entry holds its head and inference settings), the registered model name, the architecture overrides,
``num_classes``, ``in_chans``, the input size and preprocessing (``data_config``), the class names, and the
tensors. A foreign file says nothing but its tensors; the fields it cannot fill are ``None``.
:func:`glocal.create_model`, :func:`glocal.load_checkpoint`, the engine and every command read checkpoints through
here, so each file is read (and a training state unpickled, tensors only) exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glocal.validate import check_fields
from glocal.weights.glocal_format import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    is_glocal_checkpoint,
    read_glocal_checkpoint,
    recover_interrupted_save,
)
from glocal.weights.io import CheckpointError, read_tensors, unwrap_state_dict

__all__ = ["Checkpoint", "STATE_FORMAT", "is_train_state", "open_checkpoint", "resolve_model_name"]

# The ``format`` entry of the training states ``glocal train`` writes.
STATE_FORMAT = "glocal-train-state-v1"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint is and holds. Fields a source cannot tell are ``None`` (``config``: empty).

    ``config`` are :func:`glocal.create_model` overrides (fields of the family config, run-time options);
    ``input_size`` is (H, W); ``data_config`` the saved preprocessing (``mean``, ``std``, ``crop_pct``,
    ``interpolation``...); ``weights`` says which weights ``tensors`` are (``"model"`` or ``"ema"``);
    ``train_state`` is the whole training state of a ``last.pt`` (for ``--resume``), else ``None``. ``task`` is
    ``"segment"`` for a segmenter (``segment``: head, head width, label convention, palette, inference settings;
    :func:`glocal.create_segmenter` rebuilds it), else ``"classify"`` (a foreign file: assumed).
    """

    path: Path
    kind: str
    tensors: dict[str, torch.Tensor] = field(repr=False)
    task: str = "classify"
    segment: dict[str, Any] | None = None
    model_name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    in_chans: int | None = None
    input_size: tuple[int, int] | None = None
    data_config: dict[str, Any] | None = None
    classes: tuple[str, ...] | None = None
    # glocal's own names for glocal folders and training states; None: detect the layout from the keys.
    layout: str | None = None
    weights: str = "model"
    metrics: dict[str, Any] | None = None
    train_state: dict[str, Any] | None = field(default=None, repr=False)

    def describe(self) -> str:
        """One line for logs and messages: the path, the kind and the model it was saved from."""
        saved = f", saved from {self.model_name!r}" if self.model_name else ""
        if self.segment is not None:
            saved += f" + {self.segment['head']!r} segmentation head"
        return f"{self.path} ({self.kind}{saved})"

    def refuse_segmenter(self, what: str) -> None:
        """Raise a ValueError when this is a segmenter's checkpoint, which ``what`` (classification code) cannot
        take; it says what takes it instead."""
        if self.task == "segment":
            raise ValueError(
                f"{self.path} holds a segmenter ({self.model_name} + {self.segment['head']}, task 'segment'); {what} "
                f"take classifiers. Use glocal.create_segmenter(checkpoint=...) or `glocal eval --task segment "
                f"--checkpoint {self.path} --data DIR`"
            )


def is_train_state(content: Any) -> bool:
    """Whether ``content`` (a loaded ``.pt``) is a training state written by ``glocal train``."""
    return isinstance(content, dict) and content.get("format") == STATE_FORMAT


@dataclass(frozen=True)
class _SavedConfig:
    """The types of the settings a glocal ``config.json`` (or a training state) holds, checked on reading."""

    model_name: str | None = None
    config: dict[str, Any] | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    data_config: dict[str, Any] | None = None
    classes: tuple[str, ...] | None = None
    metrics: dict[str, Any] | None = None
    task: str | None = None
    segment: dict[str, Any] | None = None


@dataclass(frozen=True)
class _SavedSegment:
    """The ``segment`` entry of a segmenter's config (see :meth:`glocal.dense.Segmenter.checkpoint_fields`)."""

    head: str
    head_channels: int | None = None
    reduce_zero_label: bool = False
    palette: tuple[tuple[int, int, int], ...] | None = None
    test_scale: tuple[int, int] | None = None
    eval_mode: str = "whole"
    crop_size: tuple[int, int] = (512, 512)
    slide_stride: tuple[int, int] = (341, 341)


_TASKS = ("classify", "segment")


@dataclass(frozen=True)
class _SavedDataConfig:
    input_size: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    crop_pct: float | None = None
    interpolation: str | None = None


def open_checkpoint(path: str | os.PathLike, *, ema: bool = False) -> Checkpoint:
    """Read ``path`` once and say what it is (see the module docstring).

    ``ema=True`` takes the EMA weights of a training state or of a release that holds both; a training state of a
    run without EMA raises ``CheckpointError``. Raises ``FileNotFoundError`` when nothing is at ``path`` and
    ``CheckpointError`` for a folder that is not a glocal checkpoint or a file that cannot be read safely.
    """
    path = Path(path)
    recover_interrupted_save(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint file or folder at {path}")
    if path.is_dir():
        if not is_glocal_checkpoint(path):
            raise CheckpointError(
                f"{path} is a folder but not a glocal checkpoint ({WEIGHTS_NAME} + {CONFIG_NAME}); a run folder "
                f"holds one in model/ (and best/), and its training state in last.pt"
            )
        if ema:
            raise CheckpointError(f"{path} holds one set of weights; --ema applies to training states (last.pt)")
        tensors, config = read_glocal_checkpoint(path)
        return _from_config(path, "glocal", tensors, config)
    content = read_tensors(path)
    if is_train_state(content):
        return _from_train_state(path, content, ema)
    return Checkpoint(path=path, kind="file", tensors=unwrap_state_dict(content, path, ema=ema), weights=_which(ema))


def resolve_model_name(given: str | None, checkpoint: Checkpoint | None) -> str:
    """The model to build: the checkpoint's when ``given`` is None; ``given`` must not contradict it."""
    saved = checkpoint.model_name if checkpoint is not None else None
    if given is not None and saved is not None and given != saved:
        raise ValueError(
            f"the model {given!r} contradicts the checkpoint {checkpoint.path}, which holds {saved!r}; "
            f"leave the model out (the checkpoint knows it) or pass a checkpoint of {given!r}"
        )
    name = given or saved
    if name is None:
        where = f"the checkpoint {checkpoint.path} does not say which model it holds" if checkpoint else "no model"
        raise ValueError(f"{where}; name the model (--model NAME, see `glocal list`)")
    return name


def _which(ema: bool) -> str:
    return "ema" if ema else "model"


def _from_config(
    path: Path, kind: str, tensors: dict[str, torch.Tensor], config: dict[str, Any], **extra: Any
) -> Checkpoint:
    """A checkpoint described by glocal's ``config.json`` content (a folder's, or the one a training state holds)."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its config is a {type(config).__name__}, not a mapping of settings")
    where = f"{path}: saved"
    try:
        config = check_fields(_SavedConfig, config, where=where)
        if config.get("data_config") is not None:
            config["data_config"] = check_fields(_SavedDataConfig, config["data_config"], where=f"{where} data_config")
    except (TypeError, ValueError) as err:
        raise CheckpointError(str(err)) from err
    task = config.get("task") or "classify"
    if task not in _TASKS:
        raise CheckpointError(f"{where} task {task!r}, which this glocal does not know (it knows {_TASKS})")
    segment = config.get("segment")
    if task == "segment":
        if not isinstance(segment, dict) or "head" not in segment:
            raise CheckpointError(f"{where} task 'segment' without its segment entry (head, inference settings)")
        try:
            segment = check_fields(_SavedSegment, segment, where=f"{where} segment")
        except (TypeError, ValueError) as err:
            raise CheckpointError(str(err)) from err
        defaults = {f.name: f.default for f in dataclasses.fields(_SavedSegment) if f.name != "head"}
        segment = {**defaults, **{k: v for k, v in segment.items() if k in defaults or k == "head"}}
    for key, minimum in (("num_classes", 0), ("in_chans", 1)):
        if config.get(key) is not None and config[key] < minimum:
            raise CheckpointError(f"{where} {key!r} must be at least {minimum}, got {config[key]}")
    if any(n < 1 for n in (config.get("data_config") or {}).get("input_size") or ()):
        raise CheckpointError(f"{where} input_size must be positive, got {config['data_config']['input_size']}")
    data_config = config.get("data_config") or None
    input_size = tuple(data_config["input_size"][1:]) if data_config and data_config.get("input_size") else None
    classes = config.get("classes")
    return Checkpoint(
        path=path,
        kind=kind,
        tensors=tensors,
        task=task,
        segment=segment if task == "segment" else None,
        model_name=config.get("model_name"),
        config=dict(config.get("config") or {}),
        num_classes=config.get("num_classes"),
        in_chans=config.get("in_chans"),
        input_size=input_size,
        data_config=data_config,
        classes=tuple(classes) if classes is not None else None,
        layout="glocal",
        metrics=config.get("metrics"),
        **extra,
    )


def _from_train_state(path: Path, state: dict[str, Any], ema: bool) -> Checkpoint:
    key = "model_ema" if ema else "model"
    if state.get(key) is None:
        raise CheckpointError(f"{path} holds no EMA weights (the run had no ema_decay)")
    config = state.get("model_config")
    if config is None:  # a state written before the states carried their model's config.json content
        run = json.loads(state["config"])
        size = run.get("img_size")
        crop_pct = (
            run.get("crop_pct") if run.get("crop_pct") is not None else (1.0 if run.get("data") is None else None)
        )
        data_config = {"crop_pct": crop_pct} if crop_pct is not None else {}
        if run.get("data") is None:  # the digits, validated with a bilinear resize
            data_config["interpolation"] = "bilinear"
        if size is not None:
            data_config["input_size"] = [3, *((size, size) if isinstance(size, int) else size)]
        config = {
            "model_name": run["model"],
            "config": run.get("model_kwargs") or {},
            "num_classes": len(state["classes"]),
            "data_config": data_config,
            "classes": state["classes"],
            "task": state.get("task"),
        }
    return _from_config(path, "train-state", dict(state[key]), config, weights=_which(ema), train_state=state)
