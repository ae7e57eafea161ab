"""glocal's own checkpoint format: a folder a model hub can host as it is.

::

    my-model/
      model.safetensors   every tensor of model.state_dict(), glocal's names, header metadata {"format": "pt"}
      config.json         {"glocal_format": 1, "task", "model_name", "config", "num_classes", "in_chans",
                           "data_config", "classes", "glocal_version"} (and "metrics" where training wrote the
                           folder; a segmenter's: "task": "segment", its backbone's name and config, and "segment")

``config.json`` holds what :func:`glocal.create_model` needs to rebuild the same architecture (the registered name
and the family config with any overrides), how images must reach it (``data_config``: the input size and crop it was
trained and evaluated at, its normalisation) and the names of its classes. Saving is atomic: both
files are written and fsync'd in a temporary sibling folder, which then replaces the target. Round trips are
bit-exact: the tensors are stored as they are, in their dtype.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glocal.weights.io import CheckpointError, remove_stale_temporaries, temporary_prefix, write_bytes_atomic

__all__ = [
    "CONFIG_NAME",
    "checkpoint_config",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "is_glocal_checkpoint",
    "read_glocal_checkpoint",
    "read_glocal_config",
    "recover_interrupted_save",
    "save_checkpoint",
]

_log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


def is_glocal_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder in glocal's format."""
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file()


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pretrained_classes(model: nn.Module) -> tuple[str, ...] | None:
    """The class names of ``model``'s pretrained tag (``model.pretrained_cfg``) where its classifier still has that
    label set's size (a ``num_classes`` override replaced it), else None."""
    tag = getattr(model, "pretrained_cfg", None)
    if tag is None or getattr(model, "num_classes", None) != tag.num_classes:
        return None
    return tag.classes


def checkpoint_config(
    model: nn.Module, *, classes: Sequence[str] | None = None, metrics: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``config.json`` content for ``model``: what rebuilds it, how images reach it, its class names (by default
    those of its pretrained tag's label set, while its classifier is still that label set's); a model with
    ``checkpoint_fields()`` (a segmenter) adds its own entries."""
    name = getattr(model, "model_name", None)
    num_classes = getattr(model, "num_classes", None)
    if classes is None:
        classes = pretrained_classes(model)
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names given for a model with {num_classes} classes")
    config = {
        "glocal_format": FORMAT_VERSION,
        "task": "classify",
        "model_name": name,
        "architecture": type(model).__name__,
        "config": _to_json(getattr(model, "cfg", None)),
        "num_classes": num_classes,
        "in_chans": getattr(model, "in_chans", None),
        "data_config": _to_json(getattr(model, "data_config", None)),
        "classes": list(classes) if classes is not None else None,
        "glocal_version": _version(),
    }
    if hasattr(model, "checkpoint_fields"):
        config |= _to_json(model.checkpoint_fields())
    if metrics:
        config["metrics"] = _to_json(metrics)
    return config


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to the folder ``path`` in glocal's format (replacing an existing checkpoint there atomically),
    with the names of its classes and, for a trained model, the metrics it was chosen by.

    Returns the folder's path.
    """
    from safetensors.torch import save

    path = Path(path)
    recover_interrupted_save(path)
    if path.is_file() or path.is_symlink() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; a glocal checkpoint is a folder: give a folder path")
    if path.exists() and not is_glocal_checkpoint(path) and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not a glocal checkpoint folder; refusing to replace it")
    config = checkpoint_config(model, classes=classes, metrics=metrics)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    name = config["model_name"]
    if name is None:
        _log.warning("saving a model without a registered name: create_model cannot rebuild it from %s alone", path)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        write_bytes_atomic(save(tensors, metadata={"format": "pt", "glocal_model": str(name)}), tmp / WEIGHTS_NAME)
        write_bytes_atomic((json.dumps(config, indent=2) + "\n").encode(), tmp / CONFIG_NAME)
        _fsync_dir(tmp)
        old = _previous(path)
        if path.exists():
            os.replace(path, old)  # a kill from here to the next rename leaves only `old`: recover_interrupted_save
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log.info("saved %s (%d tensors) to %s", name, len(tensors), path)
    return path


def _previous(path: Path) -> Path:
    """Where :func:`save_checkpoint` keeps the folder it replaces during the swap."""
    return path.with_name(f".{path.name}.previous")


def recover_interrupted_save(path: str | os.PathLike) -> None:
    """Finish what a :func:`save_checkpoint` killed mid-way left at ``path``: a swap cut between its two renames
    (the folder absent, the previous one set aside) is rolled back to the previous folder; a previous folder left
    after a finished swap is removed; temporaries of dead writers are removed. Called by every save and load."""
    path = Path(path)
    previous = _previous(path)
    if previous.is_dir():
        if path.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(previous, path)
            _log.warning("%s: an interrupted save had set this checkpoint aside; restored it", path)
    if path.parent.is_dir():
        remove_stale_temporaries(path)


def _version() -> str:
    from glocal import __version__

    return __version__


def read_glocal_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a glocal checkpoint folder."""
    file = Path(path) / CONFIG_NAME
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is not a readable glocal config.json: {err}") from err
    if not isinstance(config, dict) or config.get("glocal_format") != FORMAT_VERSION:
        raise CheckpointError(f"{file} is not a glocal config.json of format version {FORMAT_VERSION}")
    return config


def read_glocal_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the config of a glocal checkpoint folder."""
    from glocal.weights.io import read_tensors

    config = read_glocal_config(path)
    return read_tensors(Path(path) / WEIGHTS_NAME), config
