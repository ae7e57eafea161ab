"""``glocal eval``: top-1, top-5, loss, per-class accuracy and a confusion-matrix PNG for a trained model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from glocal.data import open_dataset
from glocal.engine import evaluate, save_confusion_png
from glocal.engine.inference import restore_model


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="evaluate a checkpoint: top-1/top-5, loss, per-class accuracy, confusion matrix",
        description="Evaluate MODEL with the weights of --checkpoint (a run's last.pt, or any checkpoint glocal "
        "loads) on the val/ split of --data, or on the bundled digits' validation split.",
    )
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--data", metavar="DIR", help="ImageFolder root (default: bundled digits)")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--img-size", type=int, help="input size (default: the run's, else the model's)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--ema", action="store_true", help="evaluate the run's EMA weights")
    p.add_argument("--confusion", metavar="PNG", help="confusion matrix image (default: beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    classes = None
    if args.data is not None:
        # The class folders define the labels of a checkpoint that carries none (not a training state).
        classes = open_dataset(args.data, args.split, load_size=1).classes
    restored = restore_model(args.model, args.checkpoint, classes=classes, img_size=args.img_size, ema=args.ema)
    load_size = round(max(restored.img_size) / restored.crop_pct)
    dataset = open_dataset(args.data, args.split, load_size, classes=restored.classes if args.data else None)
    result = evaluate(
        restored.model,
        dataset,
        img_size=restored.img_size,
        crop_pct=restored.crop_pct,
        mean=restored.mean,
        std=restored.std,
        batch_size=args.batch_size,
        device=torch.device("cpu"),
    )
    ckpt = Path(args.checkpoint)
    png = Path(args.confusion) if args.confusion else (ckpt.parent if ckpt.is_file() else ckpt) / "confusion.png"
    save_confusion_png(result, png, title=f"{args.model}: top-1 {result.top1:.2f}% ({result.count} images)")
    if args.json:
        record = result.summary() | {"per_class": dict(zip(result.classes, result.per_class, strict=True))}
        print(json.dumps(record | {"confusion_png": str(png), "skipped": len(dataset.skipped)}))
        return 0
    console = Console()
    table = Table(title=f"{args.model} on {args.data or 'digits'} ({args.split}, {result.count} images)")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("images", justify="right")
    for i, name in enumerate(result.classes):
        table.add_row(name, f"{result.per_class[i]:.2f}%", str(int(result.confusion[i].sum())))
    console.print(table)
    console.print(
        f"[bold]top-1 {result.top1:.2f}%[/]  top-5 {result.top5:.2f}%  loss {result.loss:.4f}\nconfusion matrix: {png}"
    )
    if dataset.skipped:
        console.print(f"[yellow]skipped {len(dataset.skipped)} unreadable file(s)[/]")
    return 0
