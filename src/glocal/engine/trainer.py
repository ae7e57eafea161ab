"""The training loop: ``train(TrainConfig) -> TrainResult``, single-process or data-parallel under ``torchrun``.

Determinism and exact resume: the data order of an epoch is a permutation seeded by ``(seed, epoch)``; the crops,
flips and mixing of a step are drawn from a generator seeded by ``(seed, epoch, step)``, and the global torch RNG
(dropout, stochastic depth) is reseeded from the same triple before every step. Workers only decode images. So a run
is a function of its config, and resuming from a checkpoint (written at the end of every epoch and when
``max_steps`` stops the run) continues exactly where the run was: the final weights equal an uninterrupted run's
(tested, with the process killed by SIGKILL).

Data parallel: the global batch is split into equal contiguous slices, one per rank, of the same permutation and
the same augmentation draw, and DDP averages the gradients; with BatchNorm each rank normalises over its own slice
(as every DDP recipe does), otherwise the step equals the single-process step on the global batch.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from glocal.data.datasets import ImageDataset, open_dataset
from glocal.data.transforms import MixConfig, crop_params, mix_batch, normalize, one_hot, resized_crop
from glocal.engine import distributed
from glocal.engine.checkpoint import (
    STATE_FORMAT,
    atomic_save,
    capture_rng,
    load_model_weights,
    load_train_state,
    restore_rng,
)
from glocal.engine.config import TrainConfig
from glocal.engine.ema import ModelEma
from glocal.engine.evaluate import EvalResult, autocast, evaluate
from glocal.engine.optim import build_optimizer, build_scheduler
from glocal.factory import create_model
from glocal.registry import get_entry
from glocal.weights import save_checkpoint

__all__ = ["Callback", "TrainResult", "build_model", "eval_crop_pct", "train"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model"


@dataclass
class TrainResult:
    """Where a run left its files and how it ended. ``val`` is the last evaluation (of the EMA weights if kept)."""

    output_dir: Path
    checkpoint: Path
    # The final weights (the EMA's when kept) in glocal's checkpoint format, for eval, predict and fine-tuning.
    weights: Path
    log: Path
    config: Path
    epochs: int
    steps: int
    seconds: float
    val: EvalResult | None
    skipped_files: list[str]


class Callback:
    """Progress hooks the command line implements (progress bar); the engine itself only logs epoch summaries."""

    def on_epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        """Epoch ``epoch`` (1-based) of ``epochs`` starts with ``done`` of its ``steps`` already run (resume)."""

    def on_step(self, metrics: dict[str, float]) -> None:
        """After every optimiser step: running ``loss``, ``top1`` (percent), ``images_per_s`` and ``lr``."""

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """The epoch's log record (what ``log.jsonl`` gets)."""


def _seed(*parts: int) -> int:
    """A 63-bit seed that is a function of ``parts`` (non-negative ints); distinct tuples give unrelated seeds."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs CUDA; use --amp bf16 on CPU")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def build_model(name: str, num_classes: int, img_size: int | None, model_kwargs: dict[str, Any]) -> nn.Module:
    """``create_model`` with the run's classes, input size (for models taking ``img_size``) and overrides."""
    kwargs = dict(model_kwargs)
    entry = get_entry(name)
    takes_size = "img_size" in inspect.signature(entry.model_cls.__init__).parameters
    takes_size = takes_size or "img_size" in {f.name for f in dataclasses.fields(entry.config())}
    if img_size is not None and takes_size:
        kwargs.setdefault("img_size", img_size)
    return create_model(name, num_classes=num_classes, **kwargs)


def eval_crop_pct(crop_pct: float | None, data: str | None, model_crop_pct: float) -> float:
    """The evaluation crop: the configured one, else 1.0 for the bundled digits (each 8x8 image is already a tight
    crop of its digit), else the model's ``data_config.crop_pct``."""
    if crop_pct is not None:
        return crop_pct
    return 1.0 if data is None else model_crop_pct


def _resolve_output(cfg: TrainConfig, info: distributed.DistInfo) -> Path:
    if cfg.output is not None:
        out = Path(cfg.output)
    elif cfg.resume:
        raise ValueError("--resume needs --output DIR: the folder of the run to continue")
    else:
        out = Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(distributed.broadcast_object(str(out), info))
    has_state = (out / CHECKPOINT_NAME).is_file()
    if cfg.resume and not has_state:
        raise FileNotFoundError(f"nothing to resume: {str(out / CHECKPOINT_NAME)!r} does not exist")
    if not cfg.resume and has_state:
        raise ValueError(f"{str(out)!r} already holds a run; pass --resume to continue it or choose another --output")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier(info)
    return out


def _open_splits(cfg: TrainConfig, load_size: int) -> tuple[ImageDataset, ImageDataset]:
    train_set = open_dataset(cfg.data, "train", load_size)
    val_set = open_dataset(cfg.data, "val", load_size, classes=train_set.classes)
    if len(train_set) < cfg.batch_size:
        raise ValueError(
            f"the training split has {len(train_set)} images, fewer than one batch of {cfg.batch_size}; "
            "lower --batch-size"
        )
    return train_set, val_set


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def train(cfg: TrainConfig, callback: Callback | None = None) -> TrainResult:
    """Train (or fine-tune, or resume) ``cfg.model`` as ``cfg`` says; returns where the files are and the metrics."""
    cfg.validate()
    callback = callback or Callback()
    info = distributed.setup(cfg.device)
    if info.device.type == "cpu":
        # Small weights and momenta decay into denormal floats, which x86 CPUs process up to 100x slower.
        torch.set_flush_denormal(True)
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, callback, info)
    finally:
        torch.set_num_threads(threads)
        distributed.cleanup(info)


def _train(cfg: TrainConfig, callback: Callback, info: distributed.DistInfo) -> TrainResult:
    start_time = time.perf_counter()
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} (global) must divide among {info.world_size} processes")
    local_batch = cfg.batch_size // info.world_size
    device = info.device
    amp_dtype = _amp_dtype(cfg.amp, device)

    get_entry(cfg.model)  # an unknown name fails here, suggesting close ones
    with torch.device("meta"):
        data_config = build_model(cfg.model, 1, cfg.img_size, cfg.model_kwargs).data_config
    img_size = (cfg.img_size, cfg.img_size) if cfg.img_size else tuple(data_config.input_size[-2:])
    crop_pct = eval_crop_pct(cfg.crop_pct, cfg.data, data_config.crop_pct)
    train_set, val_set = _open_splits(cfg, load_size=round(max(img_size) / crop_pct))
    num_classes = len(train_set.classes)
    out = _resolve_output(cfg, info)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes, cfg.img_size, cfg.model_kwargs)
    if cfg.checkpoint is not None and not cfg.resume:
        load_model_weights(model, cfg.checkpoint)
    model.to(device)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay else None
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(train_set) // cfg.batch_size  # the last partial batch is dropped
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, start_step, global_step = 0, 0, 0
    if cfg.resume:
        state = load_train_state(out / CHECKPOINT_NAME)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.module.load_state_dict(state["model_ema"])
        start_epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        restore_rng(state["rng"])
        logger.info("resuming %s at epoch %d, step %d", out, start_epoch + 1, start_step)

    log_path, config_path = out / LOG_NAME, out / CONFIG_NAME
    writer = None
    if info.is_main:
        config_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        _truncate_log(log_path, start_epoch)
        writer = _tensorboard(out)
    net = model
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    mix_cfg = MixConfig(cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.mix_switch_prob)
    mean, std = data_config.mean, data_config.std
    val_result = None
    state_path = out / CHECKPOINT_NAME
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_steps is not None and global_step >= cfg.max_steps:
            break
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(_seed(cfg.seed, 0, epoch)))
        first = start_step if epoch == start_epoch else 0
        last = steps_per_epoch
        if cfg.max_steps is not None:
            last = min(last, first + cfg.max_steps - global_step)
        batches = [order[_rank_slice(s * cfg.batch_size, local_batch, info)].tolist() for s in range(first, last)]
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches, num_workers=cfg.workers)
        callback.on_epoch_start(epoch + 1, cfg.epochs, steps_per_epoch, first)
        net.train()
        sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
        epoch_start = time.perf_counter()
        for step, (images, labels) in enumerate(loader, start=first):
            step_start = time.perf_counter()
            generator = torch.Generator().manual_seed(_seed(cfg.seed, 1, epoch, step))
            # The whole global batch's crops are drawn on every rank, each taking its own slice.
            theta = crop_params(
                cfg.batch_size, tuple(images.shape[-2:]), generator, cfg.crop_scale, cfg.crop_ratio, cfg.hflip
            )[_rank_slice(0, local_batch, info)]
            x = resized_crop(images.to(device).float(), theta.to(device), img_size)
            x = normalize(x, mean, std)
            targets = one_hot(labels, num_classes, cfg.label_smoothing).to(device)
            x, targets = mix_batch(x, targets, mix_cfg, generator)
            torch.manual_seed(_seed(cfg.seed, 2, epoch, step, info.rank))  # dropout and stochastic depth
            with autocast(device, amp_dtype):
                logits = net(x)
            loss = _soft_cross_entropy(logits, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            global_step += 1
            n = len(labels)
            sums += torch.tensor(
                [loss.item() * n, (logits.argmax(1).cpu() == labels).sum().item(), n], dtype=torch.float64
            )
            callback.on_step(
                {
                    "loss": float(sums[0] / sums[2]),
                    "top1": float(sums[1] / sums[2] * 100),
                    "images_per_s": n * info.world_size / (time.perf_counter() - step_start),
                    "lr": optimizer.param_groups[0]["lr"],
                }
            )
        seconds = time.perf_counter() - epoch_start
        sums = distributed.all_reduce_sum(sums.to(device), info).cpu()  # NCCL reduces CUDA tensors only
        completed = last == steps_per_epoch
        eval_args = dict(
            img_size=img_size, crop_pct=crop_pct, mean=mean, std=std, batch_size=local_batch, device=device,
            amp_dtype=amp_dtype, info=info, workers=cfg.workers,
        )  # fmt: skip
        val_result = evaluate(model, val_set, **eval_args)
        record = {
            "epoch": epoch + 1,
            "step": global_step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(sums[0] / max(sums[2], 1)),
            "train_top1": float(sums[1] / max(sums[2], 1) * 100),
            **{f"val_{k}": v for k, v in val_result.summary().items()},
            "images_per_s": float(sums[2]) / seconds if seconds > 0 else 0.0,
            "seconds": seconds,
        }
        if ema is not None:
            val_result = evaluate(ema.module, val_set, **eval_args)
            record |= {f"ema_val_{k}": v for k, v in val_result.summary().items()}
        if info.is_main:
            # The record first: a process killed before the checkpoint lands leaves a record the resume drops.
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            position = (epoch + 1, 0) if completed else (epoch, last)
            atomic_save(
                _train_state(cfg, model, optimizer, scheduler, scaler, ema, position, global_step, train_set.classes),
                state_path,
            )
            if writer is not None:
                for key, value in record.items():
                    if key not in ("epoch", "step"):
                        writer.add_scalar(key, value, global_step)
                writer.flush()
            logger.debug(
                "epoch %d/%d: train loss %.4f top-1 %.2f%% | val loss %.4f top-1 %.2f%% top-5 %.2f%%",
                epoch + 1, cfg.epochs, record["train_loss"], record["train_top1"], record["val_loss"],
                record["val_top1"], record["val_top5"],
            )  # fmt: skip
        distributed.barrier(info)
        callback.on_epoch_end(record)
    weights_path = out / WEIGHTS_NAME
    if info.is_main:
        save_checkpoint(ema.module if ema is not None else model, weights_path)
        if writer is not None:
            writer.close()
    distributed.barrier(info)
    return TrainResult(
        output_dir=out,
        checkpoint=state_path,
        weights=weights_path,
        log=log_path,
        config=config_path,
        epochs=cfg.epochs,
        steps=global_step,
        seconds=time.perf_counter() - start_time,
        val=val_result,
        skipped_files=[*train_set.skipped, *val_set.skipped],
    )


def _rank_slice(start: int, local_batch: int, info: distributed.DistInfo) -> slice:
    """This rank's contiguous part of the global batch that starts at ``start``."""
    return slice(start + info.rank * local_batch, start + (info.rank + 1) * local_batch)


def _train_state(cfg, model, optimizer, scheduler, scaler, ema, position, global_step, classes) -> dict[str, Any]:
    """Everything ``--resume`` needs, as tensors and plain data; ``position`` is the (epoch, step) to continue at."""
    return {
        "format": STATE_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "model_ema": ema.module.state_dict() if ema is not None else None,
        "epoch": position[0],
        "step_in_epoch": position[1],
        "global_step": global_step,
        "rng": capture_rng(),
        "config": json.dumps(cfg.to_dict()),
        "classes": list(classes),
    }


def _truncate_log(path: Path, completed_epochs: int) -> None:
    """On resume, drop log records of epochs the checkpoint does not include (the process died after writing them)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= completed_epochs:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a killed process
    path.write_text("".join(line + "\n" for line in kept))


def _tensorboard(out: Path):
    """A TensorBoard writer in ``out/tb`` when the ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))
