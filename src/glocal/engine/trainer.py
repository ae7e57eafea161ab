"""The training loop: ``train(TrainConfig) -> TrainResult``, single-process or data-parallel under ``torchrun``.

Determinism and exact resume: the data order of an epoch is a permutation seeded by ``(seed, epoch)``; the crops,
flips and mixing of a step are drawn from a generator seeded by ``(seed, epoch, step)``, and the global torch RNG
(dropout, stochastic depth) is reseeded from the same triple before every step. Workers only decode images. So a run
is a function of its config, and resuming from a checkpoint (written at the end of every epoch and when
``max_steps`` stops the run) continues exactly where the run was: the final weights equal an uninterrupted run's
(tested, with the process killed by SIGKILL).

Data parallel: the global batch is split into equal contiguous slices, one per rank, of the same permutation and
the same augmentation draw, and DDP averages the gradients; with BatchNorm each rank normalises over its own slice
(as every DDP recipe does), otherwise the step equals the single-process step on the global batch. Evaluation
shards the validation set across the ranks and sums the confusion matrices, so the metrics are the whole set's.

One loop serves every task (:func:`run`): a task brings a set-up (model and data, then the shared :func:`assemble`)
and a :class:`Task`: its training epoch, its evaluation and the score ``best/`` and ``model/`` are chosen by
(classification: top-1; ``glocal.engine.segment``: mIoU); run folders, ``last.pt``, resume, EMA, divergence checks,
logs, curves and the final report are shared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from glocal.backends import cpu as cpu_backend
from glocal.data.datasets import ImageDataset, open_dataset
from glocal.data.transforms import MixConfig, create_transform, crop_params, mix_batch, normalize, one_hot, resized_crop
from glocal.engine import distributed
from glocal.engine.checkpoint import atomic_save, capture_rng, load_train_state, restore_rng
from glocal.engine.config import TrainConfig
from glocal.engine.ema import ModelEma
from glocal.engine.evaluate import EvalResult, autocast, evaluate, save_curves_png
from glocal.engine.optim import build_optimizer, build_scheduler
from glocal.engine.progress import Callback
from glocal.factory import create_model
from glocal.models._base import DataConfig, to_2tuple
from glocal.pretrained import get_pretrained
from glocal.registry import get_entry
from glocal.weights import STATE_FORMAT, Checkpoint, checkpoint_config, open_checkpoint, save_checkpoint
from glocal.weights.io import write_bytes_atomic

__all__ = ["Task", "TrainResult", "TrainingDiverged", "run", "train"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
LOG_NAME = "log.jsonl"
CURVES_NAME = "curves.png"
CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model"
BEST_NAME = "best"


class TrainingDiverged(ValueError):
    """The loss or the validation metrics became NaN or infinite; the message names the last good checkpoint."""


@dataclass
class TrainResult:
    """Where a run left its files and how it ended.

    ``val`` is the evaluation of the weights saved in ``weights`` (``saved_weights``: ``"live"`` or ``"EMA"``, the
    better of the two by the task's validation score, top-1 or mIoU); ``live_val`` and ``ema_val`` are both final
    evaluations (``ema_val`` None without EMA): :class:`~glocal.engine.evaluate.EvalResult` or, for segmentation,
    :class:`~glocal.dense.evaluate.SegMetrics`. ``best`` is the folder of the best epoch by that score.
    """

    output_dir: Path
    checkpoint: Path
    # The final weights in glocal's checkpoint format, for eval, predict, export and fine-tuning.
    weights: Path
    best: Path
    log: Path
    curves: Path
    config: Path
    epochs: int
    steps: int
    seconds: float
    val: Any
    live_val: Any
    ema_val: Any
    saved_weights: str
    lr: float
    skipped_files: list[str]


@dataclass(frozen=True)
class Task:
    """What a task brings to the shared loop.

    ``train_epoch(run, callback)`` runs the epoch's remaining steps through :func:`epoch_batches`,
    :func:`optimiser_step` and :func:`end_epoch` and returns the epoch's training metrics over every rank
    (``{"loss": ..., "top1": ...}``, logged as ``train_<name>``), the number of images and the seconds it took;
    ``evaluate(run, model)`` returns a result with ``summary()``, whose ``score`` entry chooses ``best/`` and the
    live or EMA weights of ``model/``.
    """

    name: str
    score: str
    train_epoch: Callable[[_Run, Callback], tuple[dict[str, float], float, float]]
    evaluate: Callable[[_Run, nn.Module], Any]


@dataclass
class _Run:
    """A run once set up: its config, model, optimisation state, data, files and position."""

    task: Task
    cfg: TrainConfig
    info: distributed.DistInfo
    out: Path
    model: nn.Module
    net: nn.Module
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    # What the training loader reads (classification: the images; segmentation: the augmented pairs).
    train_set: Any
    val_set: Any
    img_size: tuple[int, int]
    amp_dtype: torch.dtype | None
    local_batch: int
    steps_per_epoch: int
    lr: float
    writer: Any
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    # The (epoch, global step) that last.pt holds, once written or resumed from.
    saved_at: tuple[int, int] | None = None
    last_eval: tuple[Any, Any] | None = None

    @property
    def state_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.out / LOG_NAME

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.train_set.classes)

    def score(self, result: Any) -> float:
        return result.summary()[self.task.score]

    def eval_args(self) -> dict[str, Any]:
        data_config = self.model.data_config
        return dict(
            img_size=self.img_size, mean=data_config.mean, std=data_config.std,
            batch_size=self.local_batch, device=self.info.device, amp_dtype=self.amp_dtype, info=self.info,
            workers=self.cfg.workers,
        )  # fmt: skip


def _seed(*parts: int) -> int:
    """A 63-bit seed that is a function of ``parts`` (non-negative ints); distinct tuples give unrelated seeds."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("fp16 mixed precision needs CUDA; use --amp bf16 on CPU")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _eval_view(cfg: TrainConfig, model_view: DataConfig, img_size: tuple[int, int]) -> DataConfig:
    """The view the run is validated on and its checkpoints tell eval and predict: the configured crop_pct and
    interpolation, else for the bundled digits the whole image (each 8x8 image is already a tight crop of its digit)
    resized bilinearly (as training's crops are sampled), else the model's (or its weight tag's) data config."""
    digits = cfg.data is None
    crop_pct = cfg.crop_pct if cfg.crop_pct is not None else (1.0 if digits else model_view.crop_pct)
    interpolation = cfg.interpolation or ("bilinear" if digits else model_view.interpolation)
    size = (model_view.input_size[0], *img_size)
    return dataclasses.replace(model_view, input_size=size, crop_pct=crop_pct, interpolation=interpolation)


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


def _open_splits(cfg: TrainConfig, view: DataConfig) -> tuple[ImageDataset, ImageDataset]:
    """The training split loaded at ``size / crop_pct`` (augmentation crops from it), the validation split in the
    eval view :func:`glocal.data.create_transform` gives (the one ``glocal eval`` and ``predict`` use)."""
    load_size = round(max(view.input_size[-2:]) / view.crop_pct)
    train_set = open_dataset(cfg.data, "train", load_size, interpolation=view.interpolation)
    eval_view = create_transform(view, normalize=False)
    val_set = open_dataset(cfg.data, "val", classes=train_set.classes, transform=eval_view)
    return train_set, val_set


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def _cpu_settings(cfg: TrainConfig) -> TrainConfig:
    """``workers`` and ``threads`` filled in from the CPUs this process may use, never more than it has."""
    cpus = distributed.cpus_per_process()
    workers = cfg.workers
    if workers is None:
        workers = 0 if cfg.data is None else min(8, cpus - 1)
    elif workers > cpus:
        logger.warning("workers %d > the %d CPU(s) this process may use; using %d", workers, cpus, cpus)
        workers = cpus
    threads = cfg.threads if cfg.threads is not None else max(1, cpus - workers)
    logger.info("CPU: %d thread(s), %d data worker(s) (%d CPU(s) available to this process)", threads, workers, cpus)
    return dataclasses.replace(cfg, workers=workers, threads=threads)


def train(cfg: TrainConfig, callback: Callback | None = None) -> TrainResult:
    """Train (or fine-tune, or resume) the classifier ``cfg.model`` as ``cfg`` says; returns where the files are
    and the metrics."""
    return run(cfg, _set_up, callback)


def run(
    cfg: TrainConfig,
    set_up: Callable[[TrainConfig, distributed.DistInfo], _Run],
    callback: Callback | None = None,
) -> TrainResult:
    """The loop every task shares: ``set_up`` (model, data, then :func:`assemble`: optimiser, resume), then per
    epoch the task's ``train_epoch`` and :func:`_evaluate_and_checkpoint`, then :func:`_finish` (final weights). A
    PNG of the curves is written beside ``log.jsonl`` however the run ends."""
    cfg.validate()
    callback = callback or Callback()
    with process_settings(cfg) as (cfg, info):
        start, state = time.perf_counter(), None
        try:
            state = set_up(cfg, info)
            while state.epoch < cfg.epochs and (cfg.max_steps is None or state.global_step < cfg.max_steps):
                metrics, images, seconds = state.task.train_epoch(state, callback)
                callback.on_epoch_end(_evaluate_and_checkpoint(state, metrics, images, seconds))
            return _finish(state, start)
        finally:
            if state is not None and info.is_main:
                _write_curves(state)
                if state.writer is not None:
                    state.writer.close()


@contextlib.contextmanager
def process_settings(cfg: TrainConfig) -> Iterator[tuple[TrainConfig, distributed.DistInfo]]:
    """Join the process group, flush denormals on CPU, fill in workers and threads; yields the completed config and
    the process's place. Restores the thread count and leaves the process group on exit."""
    info = distributed.setup(cfg.device)
    cfg = _cpu_settings(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        yield cfg, info
    finally:
        torch.set_num_threads(threads)
        distributed.cleanup(info)


def check_batch(cfg: TrainConfig, info: distributed.DistInfo, train_images: int) -> None:
    """The global batch must divide among the processes and fit in the training split."""
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} (global) must divide among {info.world_size} processes")
    if train_images < cfg.batch_size:
        raise ValueError(
            f"the training split has {train_images} images, fewer than one batch of {cfg.batch_size}; "
            "lower --batch-size"
        )


def _set_up(cfg: TrainConfig, info: distributed.DistInfo) -> _Run:
    """Resolve the model and sizes, open the data, build the model (fine-tuning: from ``cfg.checkpoint``), then
    :func:`assemble` the run."""
    source: Checkpoint | None = None
    if cfg.checkpoint is not None and not cfg.resume:
        source = open_checkpoint(cfg.checkpoint)
        source.refuse_segmenter("glocal train without --task segment (classification) and glocal.engine.train")
        if cfg.model is None:
            cfg = dataclasses.replace(cfg, model=source.model_name)
    if cfg.model is None:
        raise ValueError(f"the checkpoint {cfg.checkpoint} does not say which model it holds; pass --model NAME")
    get_entry(cfg.model)  # an unknown name fails here, suggesting close ones
    size = cfg.img_size or (source.input_size if source is not None else None)
    size_kwargs = {"img_size": size if isinstance(size, int) else tuple(size)} if size else {}
    pretrained = cfg.pretrained if not cfg.resume else False  # resuming: the weights are last.pt's
    # A weight tag's name sets the tag's preprocessing on the probe, without loading anything.
    probe_name = get_pretrained(cfg.model, cfg.pretrained).name if pretrained else cfg.model
    with torch.device("meta"):
        probe = create_model(probe_name, num_classes=1, **{**cfg.model_kwargs, **size_kwargs})
    img_size = to_2tuple(size) if size else tuple(probe.data_config.input_size[-2:])
    view = _eval_view(cfg, probe.data_config, img_size)
    train_set, val_set = _open_splits(cfg, view)
    check_batch(cfg, info, len(train_set))
    out = _resolve_output(cfg, info)

    torch.manual_seed(cfg.seed)
    kwargs = {**cfg.model_kwargs, **size_kwargs}
    model = create_model(
        cfg.model, num_classes=len(train_set.classes), checkpoint=source, pretrained=pretrained, **kwargs
    )
    # The view the model is trained and evaluated on is what its saved folders tell eval, predict and export.
    model.data_config = dataclasses.replace(
        model.data_config, input_size=(model.in_chans, *img_size), crop_pct=view.crop_pct,
        interpolation=view.interpolation,
    )  # fmt: skip
    return assemble(CLASSIFY, cfg, info, out, model, train_set=train_set, val_set=val_set, img_size=img_size)


def assemble(
    task: Task,
    cfg: TrainConfig,
    info: distributed.DistInfo,
    out: Path,
    model: nn.Module,
    *,
    train_set: Any,
    val_set: Any,
    img_size: tuple[int, int],
    param_groups: Callable[[nn.Module, float, float], list[dict]] | None = None,
    forward: nn.Module | None = None,
) -> _Run:
    """The run around a built ``model``: on the device (CPU backend routes), the optimiser over ``param_groups(model,
    lr, weight_decay)`` (default: :func:`~glocal.engine.optim.param_groups`) with the learning rate scaled to the
    global batch, the schedule, EMA, DDP around ``forward`` (default: the model), and everything restored from
    ``last.pt`` when resuming; rank 0 writes ``config.yaml``."""
    model.to(info.device)
    if info.device.type == "cpu":  # denormal flushing, malloc reuse, routes chosen by measurement
        cpu_backend.use_by_default(model)
    lr, min_lr = cfg.scaled_lr()
    if cfg.lr_base_size:
        logger.info(
            "learning rate %g per %d images, scaled to the global batch of %d: %g (final %g)",
            cfg.lr, cfg.lr_base_size, cfg.batch_size, lr, min_lr,
        )  # fmt: skip
    scaled = dataclasses.replace(cfg, lr=lr, min_lr=min_lr, lr_base_size=None)
    groups = param_groups(model, lr, cfg.weight_decay) if param_groups is not None else None
    optimizer = build_optimizer(model, scaled, groups)
    steps_per_epoch = len(train_set) // cfg.batch_size  # the last partial batch is dropped
    scheduler = build_scheduler(optimizer, scaled, steps_per_epoch, cfg.epochs * steps_per_epoch)
    amp_dtype = _amp_dtype(cfg.amp, info.device)
    net = forward if forward is not None else model
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        net = DistributedDataParallel(net, device_ids=device_ids)
    state = _Run(
        task=task, cfg=cfg, info=info, out=out, model=model, net=net,
        ema=ModelEma(model, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema_decay else None,
        optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16),
        train_set=train_set, val_set=val_set, img_size=img_size, amp_dtype=amp_dtype,
        local_batch=cfg.batch_size // info.world_size, steps_per_epoch=steps_per_epoch, lr=lr, writer=None,
    )  # fmt: skip
    if cfg.resume:
        _restore(state, load_train_state(state.state_path))
    if info.is_main:
        write_bytes_atomic(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode(), out / CONFIG_NAME)
        _truncate_log(state.log_path, state.epoch)
        state.writer = _tensorboard(out)
    return state


def _restore(run: _Run, state: dict[str, Any]) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None:
        run.ema.module.load_state_dict(state["model_ema"])
    run.epoch, run.step_in_epoch, run.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
    run.best_score = state.get("best_score", state.get("best_top1", -math.inf))  # best_top1: 0.1.0 states
    run.saved_at = (run.epoch, run.global_step)
    restore_rng(state["rng"])
    cpu_backend.load_route_state(state.get("cpu_routes", {}))  # the interrupted run's routes: same roundings
    logger.info("resuming %s at epoch %d, step %d", run.out, run.epoch + 1, run.step_in_epoch)


def _diverged(run: _Run, what: str) -> TrainingDiverged:
    if run.saved_at is not None:
        epoch, step = run.saved_at
        kept = f"the last good checkpoint is kept: {run.state_path} ({epoch} epoch(s), step {step})"
    else:
        kept = "no checkpoint was written yet"
    return TrainingDiverged(
        f"training diverged: {what} (learning rate {run.optimizer.param_groups[0]['lr']:.3g} for a global batch of "
        f"{run.cfg.batch_size}). Stopped; {kept}. Lower --lr (or give it per --set lr_base_size=256 images so it "
        f"scales with the batch), add warmup (--warmup-epochs) or gradient clipping (--clip-grad)."
    )


def epoch_batches(run: _Run, callback: Callback) -> tuple[torch.utils.data.DataLoader, int, int]:
    """The loader of this rank's part of the epoch's remaining batches (its remainder when resuming, up to
    ``max_steps``), the epoch's order a permutation seeded by ``(seed, epoch)``; returns it with the first and
    end step, tells ``callback`` the epoch starts and puts the model in training mode."""
    cfg, info, epoch = run.cfg, run.info, run.epoch
    order = torch.randperm(len(run.train_set), generator=torch.Generator().manual_seed(_seed(cfg.seed, 0, epoch)))
    first, last = run.step_in_epoch, run.steps_per_epoch
    if cfg.max_steps is not None:
        last = min(last, first + cfg.max_steps - run.global_step)
    batches = [order[_rank_slice(s * cfg.batch_size, run.local_batch, info)].tolist() for s in range(first, last)]
    loader = torch.utils.data.DataLoader(run.train_set, batch_sampler=batches, num_workers=cfg.workers)
    callback.on_epoch_start(epoch + 1, cfg.epochs, run.steps_per_epoch, first)
    run.net.train()
    return loader, first, last


def step_seed(run: _Run, step: int) -> None:
    """Seed the global torch RNG (dropout, stochastic depth) from ``(seed, epoch, step, rank)``."""
    torch.manual_seed(_seed(run.cfg.seed, 2, run.epoch, step, run.info.rank))


def optimiser_step(run: _Run, loss: torch.Tensor, step: int) -> None:
    """Backward, clip, step the optimiser, schedule and EMA for training step ``step`` of the epoch; raises
    :class:`TrainingDiverged` on a non-finite loss."""
    if not torch.isfinite(loss):
        raise _diverged(run, f"the training loss is {loss.item()} at epoch {run.epoch + 1}, step {step + 1}")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model, run.global_step)
    run.global_step += 1


def end_epoch(run: _Run, sums: torch.Tensor, last: int) -> torch.Tensor:
    """``sums`` summed over the ranks; the position moves to the next epoch, or stays in this one when
    ``max_steps`` stopped it at ``last``."""
    sums = distributed.all_reduce_sum(sums.to(run.info.device), run.info).cpu()  # NCCL reduces CUDA tensors only
    run.epoch, run.step_in_epoch = (run.epoch + 1, 0) if last == run.steps_per_epoch else (run.epoch, last)
    return sums


def _train_epoch(run: _Run, callback: Callback) -> tuple[dict[str, float], float, float]:
    """One classification epoch: crops, flips and mixing drawn per step from ``(seed, epoch, step)``; returns the
    mean loss and top-1 over every rank, the image count and the seconds it took."""
    cfg, info, device, epoch = run.cfg, run.info, run.info.device, run.epoch
    loader, first, last = epoch_batches(run, callback)
    mix_cfg = MixConfig(cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.mix_switch_prob)
    num_classes, data_config = len(run.classes), run.model.data_config
    sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
    epoch_start = time.perf_counter()
    for step, (images, labels) in enumerate(loader, start=first):
        step_start = time.perf_counter()
        generator = torch.Generator().manual_seed(_seed(cfg.seed, 1, epoch, step))
        # The whole global batch's crops are drawn on every rank, each taking its own slice.
        theta = crop_params(
            cfg.batch_size, tuple(images.shape[-2:]), generator, cfg.crop_scale, cfg.crop_ratio, cfg.hflip
        )[_rank_slice(0, run.local_batch, info)]
        x = resized_crop(images.to(device).float(), theta.to(device), run.img_size)
        x = normalize(x, data_config.mean, data_config.std)
        targets = one_hot(labels, num_classes, cfg.label_smoothing).to(device)
        x, targets = mix_batch(x, targets, mix_cfg, generator)
        step_seed(run, step)
        with autocast(device, run.amp_dtype):
            logits = run.net(x)
        loss = _soft_cross_entropy(logits, targets)
        optimiser_step(run, loss, step)
        n = len(labels)
        sums += torch.tensor([loss.item() * n, (logits.argmax(1).cpu() == labels).sum().item(), n], dtype=torch.float64)
        callback.on_step(
            {
                "loss": float(sums[0] / sums[2]),
                "top1": float(sums[1] / sums[2] * 100),
                "images_per_s": n * info.world_size / (time.perf_counter() - step_start),
                "lr": run.optimizer.param_groups[0]["lr"],
            }
        )
    seconds = time.perf_counter() - epoch_start
    sums = end_epoch(run, sums, last)
    n = max(float(sums[2]), 1.0)
    return {"loss": float(sums[0]) / n, "top1": float(sums[1]) / n * 100}, float(sums[2]), seconds


def _evaluate_and_checkpoint(run: _Run, train: dict[str, float], images: float, seconds: float) -> dict[str, Any]:
    """Evaluate the live and EMA weights, append the epoch's record to ``log.jsonl``, write ``last.pt``, and
    ``best/`` when the better of the two beats every earlier epoch. Returns the record."""
    cfg = run.cfg
    for module in (run.model, run.ema):
        if module is not None:
            distributed.broadcast_buffers(module, run.info)
    live = run.task.evaluate(run, run.model)
    ema = run.task.evaluate(run, run.ema.module) if run.ema is not None else None
    run.last_eval = (live, ema)
    epoch = run.epoch if run.step_in_epoch == 0 else run.epoch + 1
    record = {
        "epoch": epoch,
        "step": run.global_step,
        "lr": run.optimizer.param_groups[0]["lr"],
        **{f"train_{k}": v for k, v in train.items()},
        **{f"val_{k}": v for k, v in live.summary().items()},
        "images_per_s": images / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
    }
    if ema is not None:
        record |= {f"ema_val_{k}": v for k, v in ema.summary().items()}
    bad = [k for k in ("train_loss", "val_loss", "ema_val_loss") if k in record and not np.isfinite(record[k])]
    if bad:
        raise _diverged(run, f"{', '.join(f'{k} {record[k]}' for k in bad)} at epoch {epoch}")
    if run.info.is_main:
        # The record first: a process killed before the checkpoint lands leaves a record the resume drops.
        with run.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        chosen, which, result = _better(run, live, ema)
        if run.score(result) > run.best_score:
            run.best_score = run.score(result)
            save_checkpoint(chosen, run.out / BEST_NAME, classes=run.classes, metrics=_metrics(run, which, result))
        atomic_save(_train_state(run), run.state_path)
        run.saved_at = (run.epoch, run.global_step)
        if run.writer is not None:
            for key, value in record.items():
                if key not in ("epoch", "step"):
                    run.writer.add_scalar(key, value, run.global_step)
            run.writer.flush()
        logger.debug(
            "epoch %d/%d: train loss %.4f | val %s %.2f%%",
            epoch, cfg.epochs, record["train_loss"], run.task.score, record[f"val_{run.task.score}"],
        )  # fmt: skip
    distributed.barrier(run.info)
    return record


def _better(run: _Run, live: Any, ema: Any) -> tuple[nn.Module, str, Any]:
    """The EMA weights when they validate strictly better than the live ones, else the live weights."""
    if ema is not None and run.score(ema) > run.score(live):
        return run.ema.module, "EMA", ema
    return run.model, "live", live


def _metrics(run: _Run, which: str, result: Any) -> dict[str, Any]:
    epoch = run.epoch if run.step_in_epoch == 0 else run.epoch + 1
    return {
        "weights": which,
        "epoch": epoch,
        "step": run.global_step,
        **{f"val_{k}": v for k, v in result.summary().items()},
    }


def _finish(run: _Run, start: float) -> TrainResult:
    """Save the better of the live and EMA weights to ``model/`` and say which; the result of the run."""
    if run.last_eval is None:  # nothing left to train (resuming a finished run): evaluate what there is
        live = run.task.evaluate(run, run.model)
        run.last_eval = (live, run.task.evaluate(run, run.ema.module) if run.ema else None)
    live, ema = run.last_eval
    chosen, which, result = _better(run, live, ema)
    weights_path = run.out / WEIGHTS_NAME
    if run.info.is_main:
        save_checkpoint(chosen, weights_path, classes=run.classes, metrics=_metrics(run, which, result))
        if ema is not None:
            logger.info(
                "validation %s: live weights %.2f%%, EMA weights %.2f%%; %s holds the %s weights",
                run.task.score, run.score(live), run.score(ema), weights_path, which,
            )  # fmt: skip
    distributed.barrier(run.info)
    return TrainResult(
        output_dir=run.out, checkpoint=run.state_path, weights=weights_path, best=run.out / BEST_NAME,
        log=run.log_path, curves=run.out / CURVES_NAME, config=run.out / CONFIG_NAME, epochs=run.cfg.epochs,
        steps=run.global_step, seconds=time.perf_counter() - start, val=result, live_val=live,
        ema_val=ema, saved_weights=which, lr=run.lr,
        skipped_files=[*getattr(run.train_set, "skipped", []), *getattr(run.val_set, "skipped", [])],
    )  # fmt: skip


def _write_curves(run: _Run) -> None:
    """``curves.png`` beside ``log.jsonl`` from its records (however the run ended)."""
    if not run.log_path.is_file():
        return
    records = [json.loads(line) for line in run.log_path.read_text().splitlines() if line.strip()]
    if records:
        save_curves_png(records, run.out / CURVES_NAME, title=f"{run.cfg.model}: {run.out}", metric=run.task.score)


def _rank_slice(start: int, local_batch: int, info: distributed.DistInfo) -> slice:
    """This rank's contiguous part of the global batch that starts at ``start``."""
    return slice(start + info.rank * local_batch, start + (info.rank + 1) * local_batch)


def _train_state(run: _Run) -> dict[str, Any]:
    """Everything ``--resume`` needs, as tensors and plain data, and the live model's ``config.json`` content."""
    return {
        "format": STATE_FORMAT,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "model_ema": run.ema.module.state_dict() if run.ema is not None else None,
        "epoch": run.epoch,
        "step_in_epoch": run.step_in_epoch,
        "global_step": run.global_step,
        "task": run.task.name,
        "best_score": run.best_score,
        "rng": capture_rng(),
        "cpu_routes": cpu_backend.route_state(),
        "config": json.dumps(run.cfg.to_dict()),
        "classes": list(run.classes),
        "model_config": checkpoint_config(run.model, classes=run.classes),
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


def _evaluate(run: _Run, model: nn.Module) -> EvalResult:
    return evaluate(model, run.val_set, **run.eval_args())


CLASSIFY = Task("classify", "top1", _train_epoch, _evaluate)


def _tensorboard(out: Path):
    """A TensorBoard writer in ``out/tb`` when the ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))
