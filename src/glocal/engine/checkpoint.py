"""Training-state checkpoints: written atomically, read without unpickling anything but tensors and plain data.

A training state (``last.pt``) holds the model, optimiser, scheduler, gradient scaler and EMA (``model_ema``) state
dicts, the epoch and step to continue from, and the RNG states, so ``--resume`` continues a run killed at any
moment. It is written to a temporary file in the same folder, flushed with ``fsync`` and renamed over the old one with
``os.replace``: a crash leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glocal.weights.io import atomic_path

__all__ = [
    "STATE_FORMAT",
    "atomic_save",
    "capture_rng",
    "is_train_state",
    "load_model_weights",
    "load_train_state",
    "restore_rng",
]

STATE_FORMAT = "glocal-train-state-v1"


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
    """Read a training state written by the engine; tensors and plain data only (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not is_train_state(state):
        raise ValueError(f"{str(path)!r} is not a glocal training state (written by `glocal train`)")
    return state


def is_train_state(state: Any) -> bool:
    return isinstance(state, dict) and state.get("format") == STATE_FORMAT


def load_model_weights(model: nn.Module, path: str | Path, ema: bool = False):
    """Load weights into ``model`` with ``glocal.load_checkpoint``: a training state (``last.pt``, whose ``model``
    and ``model_ema`` entries it reads), glocal's folders, the official repositories' and timm's files.

    ``ema`` picks the EMA weights. A classifier of another shape (fine-tuning on other classes) keeps the model's
    fresh initialisation; any other mismatch raises ``CheckpointError`` listing the keys. Returns the
    ``LoadResult`` (which modules were re-initialised).
    """
    from glocal.weights import load_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if ema and path.suffix == ".pt":
        state = torch.load(path, map_location="cpu", weights_only=True)
        if is_train_state(state) and state.get("model_ema") is None:
            raise ValueError(f"{str(path)!r} holds no EMA weights (the run had no ema_decay)")
    return load_checkpoint(model, path, ema=ema)
