"""Rebuild a trained model for evaluation or prediction, with its classes and input view, from its checkpoint alone.

Nothing here imports the training code: a model folder, a training state or a foreign file is opened once by
:func:`glocal.weights.open_checkpoint`, and the model is rebuilt by :func:`glocal.create_model` from what the
checkpoint says (model, architecture, classes, input size, preprocessing), refusing a classifier it cannot fill.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from glocal.backends import cpu as cpu_backend
from glocal.engine.evaluate import eval_view
from glocal.factory import create_model
from glocal.validate import check_count
from glocal.weights import Checkpoint, open_checkpoint

__all__ = ["Restored", "predict", "restore_model"]

_log = logging.getLogger(__name__)


@dataclass
class Restored:
    """A model in eval mode with what it needs to see images as it was trained to: classes and evaluation view."""

    model: nn.Module
    classes: tuple[str, ...]
    img_size: tuple[int, int]
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    checkpoint: Checkpoint


def restore_model(
    checkpoint: str | os.PathLike | Checkpoint,
    *,
    model: str | None = None,
    classes: tuple[str, ...] | None = None,
    img_size: int | tuple[int, int] | None = None,
    ema: bool = False,
) -> Restored:
    """Rebuild the model of ``checkpoint`` with its classifier (never a re-initialised one).

    ``model`` is needed only for checkpoints that do not name theirs (foreign files) and must not contradict one
    that does. The class names are the checkpoint's, else ``classes`` (their count must be the classifier's), else
    ``"0"``, ``"1"``... with a warning. ``img_size`` overrides the saved input size.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint, ema=ema)
    size = {"img_size": img_size} if img_size is not None else {}
    num_classes = len(classes) if classes is not None and ckpt.num_classes is None else None
    net = create_model(model, checkpoint=ckpt, num_classes=num_classes, new_classifier=False, **size).eval()
    if classes is not None and len(classes) != net.num_classes:
        raise ValueError(
            f"{len(classes)} class names given, but {ckpt.path} has a classifier for {net.num_classes} classes"
        )
    if classes is None:
        classes = ckpt.classes
    if classes is None:
        _log.warning("%s carries no class names; labelling classes by index (pass --classes A,B,...)", ckpt.path)
        classes = tuple(str(i) for i in range(net.num_classes))
    cfg = net.data_config
    if next(net.parameters()).device.type == "cpu":
        cpu_backend.use_by_default(net)
    return Restored(net, tuple(classes), tuple(cfg.input_size[-2:]), cfg.crop_pct, cfg.mean, cfg.std, ckpt)


@torch.no_grad()
def predict(restored: Restored, images: torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """uint8 images (B, C, H, W) -> for each, the ``top_k`` (class, probability) pairs, most probable first."""
    check_count(top_k, "top_k", minimum=1)
    x = eval_view(images, restored.img_size, restored.crop_pct, restored.mean, restored.std)
    probs = restored.model(x).float().softmax(-1)
    values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [
        [(restored.classes[i], float(p)) for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(values.tolist(), indices.tolist(), strict=True)
    ]
