"""``glocal train``: train or fine-tune a model on the bundled digits or an ImageFolder tree.

A YAML recipe (``-c``) sets defaults, flags override it, and the resolved config is saved beside the checkpoints.
Under ``torchrun --nproc_per_node N glocal train ...`` every process runs this command; rank 0 draws and logs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from glocal.cli._args import add_img_size, add_model, add_weights
from glocal.engine.checkpoint import run_config_of_state
from glocal.engine.config import TrainConfig, load_recipe
from glocal.engine.progress import Callback

# Flags that map one-to-one onto TrainConfig fields (flag dest -> field); None means "not given".
_FIELDS = (
    "model", "data", "epochs", "batch_size", "img_size", "output", "checkpoint", "max_steps", "lr", "lr_base_size",
    "optimizer", "weight_decay", "schedule", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "clip_grad",
    "ema_decay", "amp", "device", "workers", "threads", "seed", "task", "head", "pretrained",
)  # fmt: skip


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="train or fine-tune a model (default data: the bundled handwritten digits)",
        description="Train MODEL on an ImageFolder tree (DIR/train/<class>/*, DIR/val/<class>/*) or, without --data, "
        "on scikit-learn's handwritten digits (1,797 images, 10 classes). A recipe (-c) sets defaults; flags win. "
        "Writes last.pt (resumable training state), model/ (the final weights, live or EMA, whichever validates "
        "better), best/ (the best epoch), log.jsonl, curves.png and config.yaml to --output.",
    )
    p.add_argument("--task", choices=("classify", "segment"), help="segment: a segmenter on --data (ADE20K/VOC)")
    p.add_argument("--head", choices=("upernet", "semantic_fpn"), help="segmentation head (--task segment)")
    p.add_argument("-c", "--config", metavar="RECIPE.yaml", help="training recipe (see configs/)")
    add_model(p, what="registered model name (see `glocal list`); optional with --checkpoint, which knows its own")
    p.add_argument("--data", metavar="DIR", help="ImageFolder root with train/ and val/ (default: bundled digits)")
    p.add_argument("--epochs", type=int, help=_default("epochs"))
    p.add_argument("--batch-size", type=int, help="global batch size, split across processes" + _default("batch_size"))
    add_img_size(p, "input size (default: the checkpoint's, else the model's)")
    p.add_argument("--output", metavar="DIR", help="run folder (default: runs/MODEL-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --output")
    add_weights(p, what="fine-tune from these weights (a model folder, last.pt or any file glocal loads); the "
                "classifier is re-made for the data's classes (so is --pretrained's)")  # fmt: skip
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--lr", type=float, help="peak learning rate, for --lr-base-size images" + _default("lr"))
    p.add_argument(
        "--lr-base-size",
        type=int,
        metavar="IMAGES",
        help="the batch --lr is given for; scaled linearly to the global batch (recipes: 256 SGD, 512 AdamW; "
        "default: --lr is for the global batch as it is)",
    )
    p.add_argument("--optimizer", choices=("sgd", "adamw"), help=_default("optimizer"))
    p.add_argument("--weight-decay", type=float, help=_default("weight_decay"))
    p.add_argument("--schedule", choices=("cosine", "step", "poly", "constant"), help=_default("schedule"))
    p.add_argument("--warmup-epochs", type=float, help=_default("warmup_epochs"))
    p.add_argument("--label-smoothing", type=float, help=_default("label_smoothing"))
    p.add_argument("--mixup", type=float, metavar="ALPHA", help=_default("mixup"))
    p.add_argument("--cutmix", type=float, metavar="ALPHA", help=_default("cutmix"))
    p.add_argument("--drop-path", type=float, metavar="RATE", help="stochastic depth rate (models that have it)")
    p.add_argument("--clip-grad", type=float, metavar="NORM", help="clip the gradient norm (default: no clipping)")
    p.add_argument("--ema-decay", type=float, help="keep an EMA of the weights, with a warmup (default: no EMA)")
    p.add_argument("--amp", choices=("auto", "none", "bf16", "fp16"), help="mixed precision; auto: bf16 on CUDA"
                   + _default("amp"))  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help=_default("device"))
    p.add_argument("--workers", type=int, help="data loading processes (default: 0 for the digits, else up to 8 of "
                   "the CPUs this process may use)")  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads per process (default: the CPUs this process may use, "
                   "shared among this node's processes, less the workers)")  # fmt: skip
    p.add_argument("--seed", type=int, help=_default("seed"))
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config field, the value in YAML (e.g. --set crop_scale=[0.5,1])",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _default(name: str) -> str:
    """`` (default: X)``: the training config's default for a flag that is otherwise None (a recipe may set it)."""
    value = {f.name: f.default for f in dataclasses.fields(TrainConfig)}[name]
    return f" (default: {value}, or the recipe's)"


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The run's saved config (with ``--resume``), then the recipe, then ``--set`` values, then explicit flags."""
    values = {}
    if args.resume:
        if not args.output:
            raise ValueError("--resume needs --output DIR: the folder of the run to continue")
        saved, state = Path(args.output) / "config.yaml", Path(args.output) / "last.pt"
        if not state.is_file():
            raise FileNotFoundError(
                f"nothing to resume: {args.output!r} holds no run (no last.pt written by `glocal train`); check the "
                f"folder, or start a run there without --resume"
            )
        try:
            values = load_recipe(saved)
        except (OSError, ValueError) as err:  # torn or missing: the training state holds the same config
            logging.getLogger(__name__).warning("%s; resuming with the config held in %s", err, state)
            values = run_config_of_state(state)
    if args.config:
        values |= load_recipe(args.config)
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            values[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from err
    values |= {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
    if args.resume:
        values["resume"] = True
    if args.drop_path is not None:
        values["model_kwargs"] = {**values.get("model_kwargs", {}), "drop_path_rate": args.drop_path}
    if values.get("task", "classify") == "segment":
        from glocal.engine.segment import SegmentConfig

        return SegmentConfig.from_dict(values)
    values.pop("task", None)
    return TrainConfig.from_dict(values)


class _ProgressBar(Callback):
    """A rich progress bar per epoch with the running loss, accuracy and throughput."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None

    def on_epoch_start(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[top1]:5.1f}%  {task.fields[ips]:6.0f} img/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
            disable=not self.console.is_terminal,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, completed=done, loss=0.0, top1=0.0, ips=0.0)

    def on_step(self, metrics: dict[str, float]) -> None:
        self.progress.update(
            self.task, advance=1, loss=metrics["loss"], top1=metrics["top1"], ips=metrics["images_per_s"]
        )

    def on_epoch_end(self, record: dict) -> None:
        self.progress.stop()
        train_acc = record.get("train_top1", record.get("train_aAcc"))
        if "val_mIoU" in record:  # --task segment
            val, ema = f"mIoU {record['val_mIoU']:.2f}% mAcc {record['val_mAcc']:.2f}%", record.get("ema_val_mIoU")
        else:
            val, ema = f"loss {record['val_loss']:.4f} top-1 {record['val_top1']:.2f}%", record.get("ema_val_top1")
        line = (
            f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} acc {train_acc:.1f}% | val {val} | "
            f"{record['images_per_s']:.0f} img/s"
        )
        if ema is not None:
            line += f" | EMA {'mIoU' if 'val_mIoU' in record else 'top-1'} {ema:.2f}%"
        self.console.print(line)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    console = Console()
    is_main = int(os.environ.get("RANK", "0")) == 0
    callback = _ProgressBar(console) if is_main and not args.quiet else None
    segment = getattr(cfg, "task", "classify") == "segment"
    if segment:
        from glocal.engine.segment import train_segment as train
    else:
        from glocal.engine.trainer import train
    result = train(cfg, callback)
    if not is_main:
        return 0
    if result.skipped_files:
        console.print(f"[yellow]skipped {len(result.skipped_files)} unreadable file(s); see the warnings above[/]")
    if result.val is not None:
        val, score = result.val, "mIoU" if segment else "top-1"
        if segment:
            line = f"[bold]validation mIoU {val.miou:.2f}%[/] (mAcc {val.macc:.2f}%, aAcc {val.aacc:.2f}%"
        else:
            line = f"[bold]validation top-1 {val.top1:.2f}%[/] (top-5 {val.top5:.2f}%, loss {val.loss:.4f}"
            line += f", {val.count} images"
        line += f", {result.saved_weights} weights) after {result.steps} steps in {result.seconds:.0f} s"
        if result.ema_val is not None:
            key = "mIoU" if segment else "top1"
            line += (
                f"\nlive weights {score} {result.live_val.summary()[key]:.2f}%, EMA weights {score} "
                f"{result.ema_val.summary()[key]:.2f}%: model/ holds the {result.saved_weights} weights"
            )
        console.print(line, soft_wrap=True)
    console.print(
        f"checkpoint: {result.checkpoint} (resume with --resume --output {result.output_dir})\n"
        f"weights:    {result.weights}\nbest:       {result.best}\nlog:        {result.log}\n"
        f"curves:     {result.curves}\nconfig:     {result.config}",
        soft_wrap=True,
    )
    return 0
