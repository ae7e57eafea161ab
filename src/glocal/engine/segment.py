"""Semantic-segmentation training and evaluation: ``train_segment(SegmentConfig)``, ``evaluate_segment(...)``.

Training is the classification engine's loop (:func:`glocal.engine.trainer.run`) with a segmentation
:class:`~glocal.engine.trainer.Task`: the same run folder (``last.pt``, ``model/``, ``best/`` kept by validation
mIoU, ``log.jsonl``, ``curves.png``, ``config.yaml``), training states written atomically with RNG states and CPU
routes (exact ``--resume``), EMA (live and EMA weights both evaluated, the better kept), the optimisers with their
weight-decay exclusions (here per layer-decay group), warmup and schedules (``poly`` for mmseg's recipes), and data
parallelism under ``torchrun`` (the global batch split into contiguous rank slices; BatchNorm becomes SyncBatchNorm
on CUDA, as mmseg's SyncBN; the validation set sharded over the ranks and the confusion matrices summed). A
sample's augmentation is drawn from a generator seeded by ``(seed, epoch, index)``, so a run is a function of its
config.

Evaluation runs one image at a time at its own size (optionally resized to ``test_scale`` with its aspect kept,
mmseg's ``Resize(scale=(2048, 512), keep_ratio=True)``), whole-image or sliding-window, and scores the prediction
resized back to the label map's size. The settings travel with the segmenter (``Segmenter.inference``) into its
checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glocal.data.segmentation import IGNORE_INDEX, SegAugment, SegmentationDataset
from glocal.data.transforms import normalize
from glocal.dense.evaluate import (
    SegInference,
    SegMetrics,
    confusion_matrix,
    metrics_from_confusion,
    save_overlay,
    slide_inference,
)
from glocal.dense.segmenter import Segmenter, create_segmenter, layer_decay_groups, load_segmenter_weights
from glocal.engine import distributed
from glocal.engine.config import TrainConfig
from glocal.engine.evaluate import autocast
from glocal.engine.trainer import (
    Callback,
    Task,
    TrainResult,
    _resolve_output,
    _Run,
    _seed,
    assemble,
    check_batch,
    end_epoch,
    epoch_batches,
    optimiser_step,
    run,
    step_seed,
)
from glocal.weights import Checkpoint, open_checkpoint, resolve_model_name

__all__ = [
    "SegmentConfig",
    "build_segmenter",
    "evaluate_segment",
    "evaluate_segment_checkpoint",
    "predict_logits",
    "train_segment",
]

logger = logging.getLogger(__name__)


@dataclass
class SegmentConfig(TrainConfig):
    """A :class:`TrainConfig` for ``--task segment`` plus the segmenter and its augmentation; defaults are mmseg's
    ADE20K ones (``configs/_base_/datasets/ade20k.py``)."""

    task: str = "segment"
    # 'upernet' | 'semantic_fpn'; None: the --checkpoint segmenter's, else 'upernet'.
    head: str | None = None
    head_channels: int | None = None  # None: the --checkpoint segmenter's, else mmseg's widths (create_segmenter)
    reduce_zero_label: bool = False
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop_size: tuple[int, int] = (512, 512)
    cat_max_ratio: float = 0.75
    photometric: bool = True
    # Evaluation: resize to fit this (long, short) scale keeping the aspect (None: the image's own size), then
    # 'whole' or 'slide' inference with windows of crop_size every slide_stride pixels.
    test_scale: tuple[int, int] | None = (2048, 512)
    eval_mode: str = "whole"
    slide_stride: tuple[int, int] = (341, 341)
    # Backbone options: layer-wise lr decay (transformers; 1.0 = off), frozen stages / BN (ResNet family).
    layer_decay: float = 1.0
    frozen_stages: int = -1
    frozen_bn: bool = False
    grad_checkpointing: bool = False
    # Backbone weights (ImageNet); ``checkpoint`` is a whole segmenter's.
    pretrained: str | None = None
    overlays: int = 4
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        if self.data is None:
            raise ValueError("--task segment needs --data DIR (ADE20K or VOC layout, with classes.txt)")
        self.inference()

    def inference(self) -> SegInference:
        """The evaluation settings, which the trained segmenter keeps."""
        return SegInference(
            test_scale=tuple(self.test_scale) if self.test_scale is not None else None,
            eval_mode=self.eval_mode,
            crop_size=tuple(self.crop_size),
            slide_stride=tuple(self.slide_stride),
        )


def build_segmenter(cfg: SegmentConfig, num_classes: int) -> Segmenter:
    return create_segmenter(
        cfg.model,
        head=cfg.head,
        num_classes=num_classes,
        head_channels=cfg.head_channels,
        pretrained=cfg.pretrained,
        frozen_stages=cfg.frozen_stages,
        frozen_bn=cfg.frozen_bn,
        grad_checkpointing=cfg.grad_checkpointing,
        **cfg.model_kwargs,
    )


class _Augmented(torch.utils.data.Dataset):
    """The training split through :class:`SegAugment`, each item's draw seeded by (seed, epoch, index)."""

    def __init__(self, dataset: SegmentationDataset, augment: SegAugment, seed: int) -> None:
        self.dataset, self.augment, self.seed, self.epoch = dataset, augment, seed, 0

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.augment(image, label, np.random.default_rng(_seed(self.seed, 1, self.epoch, index)))


class _TrainForward(nn.Module):
    """The segmenter's ``forward_train`` as a module's forward, for DistributedDataParallel to wrap."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.segmenter.forward_train(x)


def train_segment(cfg: SegmentConfig, callback: Callback | None = None) -> TrainResult:
    """Train a segmenter as ``cfg`` says (or fine-tune, or resume it) in the classification engine's loop; returns
    where the files are (``model/`` and ``best/`` chosen by validation mIoU) and the metrics."""
    return run(cfg, _set_up, callback)


def _set_up(cfg: SegmentConfig, info: distributed.DistInfo) -> _Run:
    """Open the pairs, build the segmenter (fine-tuning: its weights from ``cfg.checkpoint``), then assemble the run
    as classification does."""
    source = None
    if cfg.checkpoint is not None and not cfg.resume:
        source = open_checkpoint(cfg.checkpoint)
        cfg = dataclasses.replace(cfg, model=resolve_model_name(cfg.model, source))
        if source.segment is not None:  # fine-tuning a segmenter: its architecture unless the flags say otherwise
            cfg = dataclasses.replace(
                cfg,
                head=cfg.head or source.segment["head"],
                head_channels=cfg.head_channels or source.segment["head_channels"],
                model_kwargs={**source.config, **cfg.model_kwargs},
            )
    train_pairs = SegmentationDataset(cfg.data, "train", reduce_zero_label=cfg.reduce_zero_label)
    val_set = SegmentationDataset(cfg.data, "val", reduce_zero_label=cfg.reduce_zero_label)
    check_batch(cfg, info, len(train_pairs))
    out = _resolve_output(cfg, info)
    torch.manual_seed(cfg.seed)
    model = build_segmenter(cfg, len(train_pairs.classes))
    if source is not None:
        load_segmenter_weights(model, source)
    # What the saved folders tell `glocal eval --task segment` and create_segmenter(checkpoint=...).
    model.data_config = dataclasses.replace(model.data_config, input_size=(model.in_chans, *cfg.crop_size))
    model.inference = cfg.inference()
    model.reduce_zero_label = cfg.reduce_zero_label
    model.palette = train_pairs.palette
    if info.distributed and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    augment = SegAugment(cfg.scale, cfg.ratio_range, cfg.crop_size, cfg.cat_max_ratio, cfg.hflip, cfg.photometric)
    return assemble(
        SEGMENT, cfg, info, out, model,
        train_set=_Augmented(train_pairs, augment, cfg.seed), val_set=val_set,
        img_size=tuple(cfg.crop_size),
        param_groups=lambda m, lr, wd: layer_decay_groups(m, lr, wd, cfg.layer_decay), forward=_TrainForward(model),
    )  # fmt: skip


def _train_epoch(run: _Run, callback: Callback) -> tuple[dict[str, float], float, float]:
    """One epoch over the augmented pairs; returns the mean loss and the pixel accuracy (labelled pixels) over every
    rank, the image count and the seconds it took."""
    run.train_set.epoch = run.epoch
    loader, first, last = epoch_batches(run, callback)
    device, model = run.info.device, run.model
    mean, std = model.data_config.mean, model.data_config.std
    sums = torch.zeros(4, dtype=torch.float64)  # loss * n, n, correct pixels, labelled pixels
    epoch_start = time.perf_counter()
    for step, (images, labels) in enumerate(loader, start=first):
        step_start = time.perf_counter()
        x, labels = normalize(images.to(device), mean, std), labels.to(device)
        step_seed(run, step)
        with autocast(device, run.amp_dtype):
            logits = run.net(x)
        loss = model.loss(logits, labels)
        optimiser_step(run, loss, step)
        labelled = labels != IGNORE_INDEX
        correct = ((logits["out"].detach().argmax(1) == labels) & labelled).sum().item()
        sums += torch.tensor([loss.item() * len(images), len(images), correct, labelled.sum().item()])
        callback.on_step(
            {
                "loss": float(sums[0] / sums[1]),
                "top1": float(sums[2] / sums[3].clamp(min=1) * 100),
                "lr": run.optimizer.param_groups[0]["lr"],
                "images_per_s": len(images) * run.info.world_size / (time.perf_counter() - step_start),
            }
        )
    seconds = time.perf_counter() - epoch_start
    sums = end_epoch(run, sums, last)
    metrics = {"loss": float(sums[0] / sums[1].clamp(min=1)), "aAcc": float(sums[2] / sums[3].clamp(min=1) * 100)}
    return metrics, float(sums[1]), seconds


def _evaluate(run: _Run, model: Segmenter) -> SegMetrics:
    return evaluate_segment(model, run.val_set, device=run.info.device, amp_dtype=run.amp_dtype, info=run.info)


SEGMENT = Task("segment", "mIoU", _train_epoch, _evaluate)


@torch.no_grad()
def predict_logits(
    model: Segmenter, image: torch.Tensor, inference: SegInference | None = None, *, device, amp_dtype=None
) -> torch.Tensor:
    """uint8 (3, H, W) -> float logits (K, H, W) as ``inference`` (default: the model's own) says: test scale,
    whole or sliding."""
    inference = inference or model.inference
    H, W = image.shape[-2:]
    x = image[None].float()
    if inference.test_scale is not None:
        factor = min(max(inference.test_scale) / max(H, W), min(inference.test_scale) / min(H, W))
        size = (max(1, round(H * factor)), max(1, round(W * factor)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = normalize(x, model.data_config.mean, model.data_config.std).to(device)
    with autocast(device, amp_dtype):
        if inference.eval_mode == "slide":
            logits = slide_inference(model, x, tuple(inference.crop_size), tuple(inference.slide_stride))
        else:
            logits = model(x)
    return F.interpolate(logits.float(), size=(H, W), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def evaluate_segment(
    model: Segmenter,
    dataset: SegmentationDataset,
    inference: SegInference | None = None,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    info: distributed.DistInfo | None = None,
    overlay_dir: str | Path | None = None,
    overlays: int = 4,
) -> SegMetrics:
    """mIoU/mAcc/aAcc over ``dataset`` with ``inference`` (default: the model's own settings). Data parallel, each
    rank takes a strided shard (:func:`glocal.engine.distributed.shard`, as classification's evaluation) and the
    confusion matrices are summed, so the metrics are the whole set's. With ``overlay_dir``, the first ``overlays``
    predictions are written there as colour overlays (in the model's palette, when it has one)."""
    k = len(dataset.classes)
    confusion = torch.zeros(k, k, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    for i in distributed.shard(len(dataset), info):
        image, label = dataset[i]
        pred = predict_logits(model, image, inference, device=device, amp_dtype=amp_dtype).argmax(0).cpu()
        confusion += confusion_matrix(pred, label, k, IGNORE_INDEX).to(device)
        if overlay_dir is not None and i < overlays:
            path = Path(overlay_dir) / f"{dataset.pairs[i][0].stem}_overlay.png"
            save_overlay(image, pred, path, colours=model.palette)
    model.train(was_training)
    if info is not None:
        distributed.all_reduce_sum(confusion, info)
    return metrics_from_confusion(confusion.cpu(), dataset.classes)


def evaluate_segment_checkpoint(
    checkpoint: str | Path | Checkpoint,
    data: str | Path,
    *,
    split: str = "val",
    model: str | None = None,
    head: str | None = None,
    eval_mode: str | None = None,
    ema: bool = False,
    overlay_dir: str | Path | None = None,
) -> tuple[Segmenter, SegMetrics]:
    """Rebuild the segmenter of ``checkpoint`` (a model folder or ``last.pt`` of ``glocal train --task segment``:
    from it alone; a plain state-dict file: with ``model`` and ``head``) and evaluate it on ``split`` of ``data``
    with its own inference settings (``eval_mode`` overrides whole or slide)."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint, ema=ema)
    saved = ckpt.segment or {}
    dataset = SegmentationDataset(data, split, reduce_zero_label=saved.get("reduce_zero_label", False))
    if ckpt.classes is not None and tuple(dataset.classes) != tuple(ckpt.classes):
        raise ValueError(f"{str(data)!r} lists classes {dataset.classes}, the segmenter was trained on {ckpt.classes}")
    segmenter = create_segmenter(model, head=head, num_classes=None if saved else len(dataset.classes), checkpoint=ckpt)
    inference = dataclasses.replace(segmenter.inference, eval_mode=eval_mode) if eval_mode else None
    metrics = evaluate_segment(segmenter, dataset, inference, device=torch.device("cpu"), overlay_dir=overlay_dir)
    return segmenter, metrics
