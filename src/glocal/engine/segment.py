"""Semantic-segmentation training and evaluation: ``train_segment(SegmentConfig)``, ``evaluate_segment(...)``.

The classification engine's pieces are reused as they are: the run folder, ``last.pt`` training states written
atomically with RNG states (exact ``--resume``), EMA, the optimisers with their weight-decay exclusions, warmup and
schedules (``poly`` for mmseg's recipes), data parallelism under ``torchrun`` (the global batch split into
contiguous rank slices; BatchNorm becomes SyncBatchNorm on CUDA, as mmseg's SyncBN). A sample's augmentation is
drawn from a generator seeded by ``(seed, epoch, index)``, so a run is a function of its config.

Evaluation runs one image at a time at its own size (optionally resized to ``test_scale`` with its aspect kept,
mmseg's ``Resize(scale=(2048, 512), keep_ratio=True)``), whole-image or sliding-window, and scores the prediction
resized back to the label map's size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from glocal.data.segmentation import IGNORE_INDEX, SegAugment, SegmentationDataset
from glocal.data.transforms import normalize
from glocal.dense.evaluate import SegMetrics, confusion_matrix, metrics_from_confusion, save_overlay, slide_inference
from glocal.dense.segmenter import Segmenter, create_segmenter, layer_decay_groups
from glocal.engine import distributed
from glocal.engine.checkpoint import atomic_save, capture_rng, load_train_state, restore_rng
from glocal.engine.config import TrainConfig
from glocal.engine.ema import ModelEma
from glocal.engine.evaluate import autocast
from glocal.engine.optim import build_scheduler
from glocal.engine.trainer import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    LOG_NAME,
    Callback,
    _amp_dtype,
    _rank_slice,
    _resolve_output,
    _seed,
    _truncate_log,
    process_settings,
)
from glocal.weights import STATE_FORMAT

__all__ = ["SegmentConfig", "SegmentResult", "build_segmenter", "evaluate_segment", "train_segment"]

logger = logging.getLogger(__name__)


@dataclass
class SegmentConfig(TrainConfig):
    """A :class:`TrainConfig` for ``--task segment`` plus the segmenter and its augmentation; defaults are mmseg's
    ADE20K ones (``configs/_base_/datasets/ade20k.py``)."""

    task: str = "segment"
    head: str = "upernet"  # 'upernet' | 'semantic_fpn'
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
        if self.eval_mode not in ("whole", "slide"):
            raise ValueError(f"eval_mode must be 'whole' or 'slide', got {self.eval_mode!r}")


@dataclass
class SegmentResult:
    output_dir: Path
    checkpoint: Path
    log: Path
    config: Path
    steps: int
    seconds: float
    val: SegMetrics | None


def build_segmenter(cfg: SegmentConfig, num_classes: int) -> Segmenter:
    return create_segmenter(
        cfg.model,
        head=cfg.head,
        num_classes=num_classes,
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


def _optimizer(model: Segmenter, cfg: SegmentConfig) -> torch.optim.Optimizer:
    groups = layer_decay_groups(model, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def train_segment(cfg: SegmentConfig, callback: Callback | None = None) -> SegmentResult:
    """Train a segmenter as ``cfg`` says (or resume it); evaluates after every epoch."""
    cfg.validate()
    with process_settings(cfg) as (cfg, info):
        return _train(cfg, callback or Callback(), info)


def _train(cfg: SegmentConfig, callback: Callback, info: distributed.DistInfo) -> SegmentResult:
    start_time = time.perf_counter()
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} (global) must divide among {info.world_size} processes")
    local_batch, device = cfg.batch_size // info.world_size, info.device
    amp_dtype = _amp_dtype(cfg.amp, device)
    train_set = SegmentationDataset(cfg.data, "train", reduce_zero_label=cfg.reduce_zero_label)
    val_set = SegmentationDataset(cfg.data, "val", reduce_zero_label=cfg.reduce_zero_label)
    if len(train_set) < cfg.batch_size:
        raise ValueError(f"the training split has {len(train_set)} images, fewer than one batch of {cfg.batch_size}")
    out = _resolve_output(cfg, info)
    torch.manual_seed(cfg.seed)
    model = build_segmenter(cfg, len(train_set.classes))
    if cfg.checkpoint is not None and not cfg.resume:
        from glocal.dense.segmenter import load_segmenter_weights

        load_segmenter_weights(model, cfg.checkpoint)
    if info.distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay else None
    lr, min_lr = cfg.scaled_lr()
    scaled = dataclasses.replace(cfg, lr=lr, min_lr=min_lr, lr_base_size=None)
    optimizer = _optimizer(model, scaled)
    steps_per_epoch = len(train_set) // cfg.batch_size
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, scaled, steps_per_epoch, total_steps)
    start_epoch, start_step, global_step = 0, 0, 0
    state_path = out / CHECKPOINT_NAME
    if cfg.resume:
        state = load_train_state(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(state["model_ema"])
        start_epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        restore_rng(state["rng"])
    log_path, config_path = out / LOG_NAME, out / CONFIG_NAME
    if info.is_main:
        config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        _truncate_log(log_path, start_epoch)
    net = _TrainForward(model)
    net = DistributedDataParallel(net) if info.distributed else net
    augment = SegAugment(cfg.scale, cfg.ratio_range, cfg.crop_size, cfg.cat_max_ratio, cfg.hflip, cfg.photometric)
    augmented = _Augmented(train_set, augment, cfg.seed)
    mean, std = model.data_config.mean, model.data_config.std
    val = None
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_steps is not None and global_step >= cfg.max_steps:
            break
        augmented.epoch = epoch
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(_seed(cfg.seed, 0, epoch)))
        first = start_step if epoch == start_epoch else 0
        last = steps_per_epoch if cfg.max_steps is None else min(steps_per_epoch, first + cfg.max_steps - global_step)
        batches = [order[_rank_slice(s * cfg.batch_size, local_batch, info)].tolist() for s in range(first, last)]
        loader = torch.utils.data.DataLoader(augmented, batch_sampler=batches, num_workers=cfg.workers)
        callback.on_epoch_start(epoch + 1, cfg.epochs, steps_per_epoch, first)
        net.train()
        sums = torch.zeros(2, dtype=torch.float64)
        epoch_start = time.perf_counter()
        for step, (images, labels) in enumerate(loader, start=first):
            step_start = time.perf_counter()
            x = normalize(images.to(device), mean, std)
            torch.manual_seed(_seed(cfg.seed, 2, epoch, step, info.rank))
            with autocast(device, amp_dtype):
                logits = net(x)
            loss = model.loss(logits, labels.to(device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            global_step += 1
            sums += torch.tensor([loss.item() * len(images), len(images)], dtype=torch.float64)
            callback.on_step(
                {
                    "loss": float(sums[0] / sums[1]),
                    "top1": 0.0,
                    "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s": len(images) * info.world_size / (time.perf_counter() - step_start),
                }
            )
        seconds = time.perf_counter() - epoch_start
        sums = distributed.all_reduce_sum(sums.to(device), info).cpu()
        evaluated = ema.module if ema is not None else model
        val = evaluate_segment(evaluated, val_set, cfg, device=device, amp_dtype=amp_dtype, info=info)
        record = {
            "epoch": epoch + 1,
            "step": global_step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(sums[0] / max(sums[1], 1)),
            **{f"val_{k}": v for k, v in val.summary().items()},
            "images_per_s": float(sums[1]) / seconds if seconds > 0 else 0.0,
            "seconds": seconds,
        }
        if info.is_main:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            completed = last == steps_per_epoch
            atomic_save(
                {
                    "format": STATE_FORMAT,
                    "task": "segment",
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": {},
                    "model_ema": ema.module.state_dict() if ema is not None else None,
                    "epoch": epoch + 1 if completed else epoch,
                    "step_in_epoch": 0 if completed else last,
                    "global_step": global_step,
                    "rng": capture_rng(),
                    "config": json.dumps(cfg.to_dict()),
                    "classes": list(train_set.classes),
                },
                state_path,
            )
        distributed.barrier(info)
        callback.on_epoch_end(record)
    return SegmentResult(out, state_path, log_path, config_path, global_step, time.perf_counter() - start_time, val)


@torch.no_grad()
def predict_logits(model: Segmenter, image: torch.Tensor, cfg: SegmentConfig, device, amp_dtype=None):
    """uint8 (3, H, W) -> float logits (K, H, W) as ``cfg`` says (test scale, whole or sliding)."""
    H, W = image.shape[-2:]
    x = image[None].float()
    if cfg.test_scale is not None:
        factor = min(max(cfg.test_scale) / max(H, W), min(cfg.test_scale) / min(H, W))
        size = (max(1, round(H * factor)), max(1, round(W * factor)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = normalize(x, model.data_config.mean, model.data_config.std).to(device)
    with autocast(device, amp_dtype):
        if cfg.eval_mode == "slide":
            logits = slide_inference(model, x, tuple(cfg.crop_size), tuple(cfg.slide_stride))
        else:
            logits = model(x)
    return F.interpolate(logits.float(), size=(H, W), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def evaluate_segment(model, dataset, cfg, *, device, amp_dtype=None, info=None, overlay_dir=None) -> SegMetrics:
    """mIoU/mAcc/aAcc over ``dataset`` (ranks take strided shards; the confusion matrices are summed). With
    ``overlay_dir``, the first ``cfg.overlays`` predictions are written there as colour overlays."""
    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    k = len(dataset.classes)
    confusion = torch.zeros(k, k, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    for i in range(rank, len(dataset), world):
        image, label = dataset[i]
        pred = predict_logits(model, image, cfg, device, amp_dtype).argmax(0).cpu()
        confusion += confusion_matrix(pred, label, k, IGNORE_INDEX).to(device)
        if overlay_dir is not None and i < cfg.overlays:
            save_overlay(image, pred, Path(overlay_dir) / f"{dataset.pairs[i][0].stem}_overlay.png")
    model.train(was_training)
    if info is not None:
        distributed.all_reduce_sum(confusion, info)
    return metrics_from_confusion(confusion.cpu(), dataset.classes)


def evaluate_segment_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    *,
    split: str = "val",
    eval_mode: str | None = None,
    ema: bool = False,
    overlay_dir: str | Path | None = None,
) -> tuple[SegmentConfig, SegMetrics]:
    """Rebuild the segmenter of a ``glocal train --task segment`` run from its ``last.pt`` and evaluate it."""
    from glocal.dense.segmenter import load_segmenter_weights

    state = load_train_state(checkpoint)
    if state.get("task") != "segment":
        raise ValueError(f"{str(checkpoint)!r} is not a segmentation run's training state (--task segment)")
    values = json.loads(state["config"])
    values["pretrained"] = None  # the weights come from the checkpoint
    cfg = SegmentConfig.from_dict(values | ({"eval_mode": eval_mode} if eval_mode else {}))
    dataset = SegmentationDataset(data, split, reduce_zero_label=cfg.reduce_zero_label)
    if tuple(dataset.classes) != tuple(state["classes"]):
        raise ValueError(f"{str(data)!r} lists classes {dataset.classes}, the run was trained on {state['classes']}")
    model = build_segmenter(cfg, len(dataset.classes))
    load_segmenter_weights(model, checkpoint, ema=ema)
    return cfg, evaluate_segment(model, dataset, cfg, device=torch.device("cpu"), overlay_dir=overlay_dir)
