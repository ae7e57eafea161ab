"""Rebuild a trained model for evaluation or prediction, with its classes and input view, from a checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from glocal.data.datasets import DIGITS_CLASSES
from glocal.engine.checkpoint import is_train_state, load_model_weights
from glocal.engine.evaluate import eval_view
from glocal.engine.trainer import build_model, eval_crop_pct

__all__ = ["Restored", "predict", "restore_model"]


@dataclass
class Restored:
    """A model in eval mode with what it needs to see images as it was trained to: classes and evaluation view."""

    model: nn.Module
    classes: tuple[str, ...]
    img_size: tuple[int, int]
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


def restore_model(
    name: str,
    checkpoint: str | Path,
    *,
    classes: tuple[str, ...] | None = None,
    img_size: int | None = None,
    ema: bool = False,
) -> Restored:
    """Build ``name`` and load ``checkpoint``.

    From a training state (``last.pt``) the run's classes, architecture overrides, input size and crop come with
    it. Any other checkpoint (loaded by ``glocal.load_checkpoint``) needs ``classes`` (their count sets the head;
    default: the bundled digits' ten).
    """
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    run: dict = {}
    if path.is_file() and path.suffix == ".pt":
        state = torch.load(path, map_location="cpu", weights_only=True)
        if is_train_state(state):
            run = json.loads(state["config"])
            if run["model"] != name:
                raise ValueError(f"{str(path)!r} was trained as {run['model']!r}, not {name!r}")
            classes = tuple(state["classes"])
    classes = classes or DIGITS_CLASSES
    size = img_size or run.get("img_size")
    model = build_model(name, len(classes), size, run.get("model_kwargs", {}))
    loaded = load_model_weights(model, path, ema=ema)
    if loaded.reinitialised:
        raise ValueError(
            f"{str(path)!r} has a classifier for another number of classes than {len(classes)}; "
            "give the class names (--classes, or --data with the class folders)"
        )
    cfg = model.data_config
    hw = (size, size) if size else tuple(cfg.input_size[-2:])
    crop_pct = eval_crop_pct(run.get("crop_pct"), run.get("data"), cfg.crop_pct) if run else cfg.crop_pct
    return Restored(model.eval(), classes, hw, crop_pct, cfg.mean, cfg.std)


@torch.no_grad()
def predict(restored: Restored, images: torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """uint8 images (B, C, H, W) -> for each, the ``top_k`` (class, probability) pairs, most probable first."""
    x = eval_view(images, restored.img_size, restored.crop_pct, restored.mean, restored.std)
    probs = restored.model(x).float().softmax(-1)
    values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [
        [(restored.classes[i], float(p)) for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(values.tolist(), indices.tolist(), strict=True)
    ]
