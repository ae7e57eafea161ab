"""Rebuild a trained model for evaluation or prediction, with its classes and input view, from its checkpoint alone.

Nothing here imports the training code: a model folder, a training state or a foreign file is opened once by
:func:`glocal.weights.open_checkpoint`, and the model is rebuilt by :func:`glocal.create_model` from what the
checkpoint says (model, architecture, classes, input size, preprocessing), refusing a classifier it cannot fill;
or a model is built with published weights (``pretrained``) and the view and label set of their tag.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from glocal.backends import cpu as cpu_backend
from glocal.data.transforms import EvalTransform, create_transform
from glocal.factory import create_model
from glocal.validate import check_count
from glocal.weights import Checkpoint, open_checkpoint

__all__ = ["Restored", "predict", "restore_model"]

_log = logging.getLogger(__name__)


@dataclass
class Restored:
    """A model in eval mode with what it needs to see images as it was trained or released to see them: its class
    names and its eval view (``transform``, :func:`glocal.data.create_transform` of its data config)."""

    model: nn.Module
    classes: tuple[str, ...]
    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transform: EvalTransform
    checkpoint: Checkpoint | None  # None: published weights (``model.pretrained_cfg`` says which)


def restore_model(
    checkpoint: str | os.PathLike | Checkpoint | None = None,
    *,
    model: str | None = None,
    pretrained: bool | str = False,
    classes: tuple[str, ...] | None = None,
    img_size: int | tuple[int, int] | None = None,
    ema: bool = False,
) -> Restored:
    """Rebuild the model of ``checkpoint`` with its classifier (never a re-initialised one), or ``model`` with its
    published weights (``pretrained=True`` or a tag, as :func:`glocal.create_model`; their label set's class names).

    ``model`` is needed only for checkpoints that do not name theirs (foreign files) and must not contradict one
    that does. The class names are the checkpoint's, else ``classes`` (their count must be the classifier's), else
    ``"0"``, ``"1"``... with a warning. ``img_size`` overrides the saved input size (the eval view's crop too).
    """
    if pretrained and checkpoint is not None:
        raise ValueError(
            "give the weights once: a checkpoint (trained weights or a weights file) or pretrained=True|TAG (a "
            "published release, see `glocal weights`), not both"
        )
    size = {"img_size": img_size} if img_size is not None else {}
    if pretrained:
        if model is None:
            raise ValueError("pretrained weights need a model name (MODEL or MODEL.TAG; see `glocal weights`)")
        ckpt, net = None, create_model(model, pretrained=pretrained, **size).eval()
        classes = classes or net.pretrained_cfg.classes
    elif checkpoint is None:
        raise ValueError("give the weights: a checkpoint PATH or pretrained=True|TAG")
    else:
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint, ema=ema)
        num_classes = len(classes) if classes is not None and ckpt.num_classes is None else None
        net = create_model(model, checkpoint=ckpt, num_classes=num_classes, new_classifier=False, **size).eval()
        if classes is None:
            classes = ckpt.classes
    if classes is not None and len(classes) != net.num_classes:
        where = ckpt.path if ckpt is not None else net.pretrained_cfg.name
        raise ValueError(
            f"{len(classes)} class names given, but {where} has a classifier for {net.num_classes} classes"
        )
    if classes is None:
        _log.warning("%s carries no class names; labelling classes by index (pass --classes A,B,...)", ckpt.path)
        classes = tuple(str(i) for i in range(net.num_classes))
    cfg = net.data_config
    if next(net.parameters()).device.type == "cpu":
        cpu_backend.use_by_default(net)
    view = create_transform(cfg)
    return Restored(net, tuple(classes), view.size, view.mean, view.std, view, ckpt)


@torch.no_grad()
def predict(restored: Restored, images: torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """Images in the model's eval view, float (B, C, H, W) from ``restored.transform``, -> for each, the ``top_k``
    (class, probability) pairs, most probable first."""
    check_count(top_k, "top_k", minimum=1)
    probs = restored.model(images).float().softmax(-1)
    values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [
        [(restored.classes[i], float(p)) for p, i in zip(row_p, row_i, strict=True)]
        for row_p, row_i in zip(values.tolist(), indices.tolist(), strict=True)
    ]
