"""Training-state checkpoints: written atomically, read without unpickling anything but tensors and plain data.

A training state (``last.pt``) holds the model, optimiser, scheduler, gradient scaler and EMA (``model_ema``) state
dicts, the epoch and step to continue from, the RNG states, and the model's ``config.json`` content (so
:func:`glocal.weights.open_checkpoint` rebuilds the model from it as from a model folder), so ``--resume``
continues a run killed at any moment. It is written to a temporary file in the same folder, flushed with ``fsync``
and renamed over the old one with ``os.replace``: a crash leaves either the previous checkpoint or the new one,
never a torn file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glocal.weights import CheckpointError, open_checkpoint
from glocal.weights.io import atomic_path

__all__ = ["atomic_save", "capture_rng", "load_train_state", "restore_rng", "run_config_of_state"]


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (:func:`glocal.weights.io.atomic_path`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain data."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read a training state written by the engine (through :func:`glocal.weights.open_checkpoint`: tensors and
    plain data only)."""
    try:
        ckpt = open_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{path} is not a glocal training state (corrupt, truncated or foreign): {err}") from err
    if ckpt.train_state is None:
        raise CheckpointError(f"{path} is not a glocal training state (written by `glocal train`)")
    return ckpt.train_state


def run_config_of_state(path: str | Path) -> dict[str, Any]:
    """The training options a training state was written with (the same as its run's ``config.yaml``)."""
    return json.loads(load_train_state(path)["config"])
