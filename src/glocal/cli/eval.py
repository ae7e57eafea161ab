"""``glocal eval``: top-1, top-5, loss, per-class accuracy and a confusion-matrix PNG for a trained classifier; mIoU,
mAcc, aAcc, per-class IoU and colour overlays for a segmenter (the task is the checkpoint's)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from glocal.cli._args import add_img_size, add_model, add_weights, weights_of
from glocal.data import open_dataset
from glocal.data.datasets import ImageDataset
from glocal.data.imagenet import as_imagenet1k
from glocal.engine.evaluate import evaluate, save_confusion_png
from glocal.engine.inference import Restored, restore_model
from glocal.weights import Checkpoint, open_checkpoint


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="evaluate a checkpoint or published weights: top-1/top-5, loss, per-class accuracy, confusion matrix",
        description="Evaluate the model of --checkpoint (rebuilt from it: architecture, classes, input size and "
        "preprocessing as saved) on the val/ split of --data, or on the bundled digits' validation split; or "
        "--model with --pretrained weights on --data whose class folders are ImageNet synset ids. Images are seen "
        "through the model's eval view (glocal.data.create_transform of its data config), printed first. A "
        "segmenter's checkpoint (glocal train --task segment) is evaluated as one: mIoU on --data's val split.",
    )
    p.add_argument("--task", choices=("classify", "segment"),
                   help="default: the checkpoint's (segment: mIoU of a segmenter)")  # fmt: skip
    add_weights(p)
    add_model(p)
    p.add_argument("--data", metavar="DIR", help="ImageFolder root with train/ and val/ (default: bundled digits)")
    p.add_argument("--split", default="val", choices=("train", "val"), help="which split")
    add_img_size(p, "input size (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--ema", action="store_true", help="evaluate a training state's EMA weights")
    p.add_argument("--confusion", metavar="PNG", help="confusion matrix image (default: beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--head", choices=("upernet", "semantic_fpn"),
                   help="segmentation head of a plain state-dict file (a glocal checkpoint knows it)")  # fmt: skip
    p.add_argument("--eval-mode", choices=("whole", "slide"), help="segmentation inference (default: the run's)")
    p.add_argument("--overlays", metavar="DIR", help="segmentation colour overlays (default: beside the checkpoint)")
    p.set_defaults(run=run)


def _open_pretrained(args: argparse.Namespace, pretrained: bool | str) -> tuple[Restored, ImageDataset]:
    """Published weights and the ImageNet-synset-named split, every image in the tag's eval view."""
    if args.task == "segment":
        raise ValueError("published weights are classifiers: --task segment needs --checkpoint of a segmenter")
    if args.data is None:
        raise ValueError(
            "published weights classify ImageNet-1k: pass --data DIR whose val/ (or --split) class folders are "
            "ImageNet synset ids (n01440764/ ...)"
        )
    restored = restore_model(model=args.model, pretrained=pretrained, img_size=args.img_size)
    view = restored.transform.pixels
    return restored, as_imagenet1k(open_dataset(args.data, args.split, transform=view))


def _restore_and_open(args: argparse.Namespace, ckpt: Checkpoint) -> tuple[Restored, ImageDataset]:
    """The classifier of ``ckpt`` and the split to evaluate it on, every image in the model's eval view."""
    ckpt.refuse_segmenter("--task classify and its flags")
    classes = None
    if args.data is not None and ckpt.classes is None:
        # The class folders name the labels of a checkpoint that carries no class names.
        classes = open_dataset(args.data, args.split, load_size=1).classes
    restored = restore_model(ckpt, model=args.model, classes=classes, img_size=args.img_size)
    dataset = open_dataset(
        args.data, args.split, classes=restored.classes if args.data else None, transform=restored.transform.pixels
    )
    if tuple(dataset.classes) != restored.classes:
        raise ValueError(
            f"{args.checkpoint} classifies classes {restored.classes[:10]}, not the bundled digits' "
            f"{tuple(dataset.classes)}; pass --data DIR with its class folders"
        )
    return restored, dataset


def run(args: argparse.Namespace) -> int:
    checkpoint, pretrained = weights_of(args, required=True)
    if pretrained:
        restored, dataset = _open_pretrained(args, pretrained)
    else:
        ckpt = open_checkpoint(checkpoint, ema=args.ema)
        if (args.task or ckpt.task) == "segment":
            return _run_segment(args, ckpt)
        restored, dataset = _restore_and_open(args, ckpt)
    result = evaluate(
        restored.model,
        dataset,
        img_size=restored.img_size,
        mean=restored.mean,
        std=restored.std,
        batch_size=args.batch_size,
        device=torch.device("cpu"),
    )
    name = restored.model.model_name
    if args.confusion:
        png = Path(args.confusion)
    elif args.checkpoint is not None:
        png = Path(args.checkpoint).with_name(f"{Path(args.checkpoint).stem}-confusion.png")
    else:
        png = Path(f"{restored.model.pretrained_cfg.name}-confusion.png")
    save_confusion_png(result, png, title=f"{name}: top-1 {result.top1:.2f}% ({result.count} images)")
    size = "x".join(map(str, restored.img_size))
    view = restored.transform.describe()
    counts = result.confusion.sum(1)
    if args.json:
        per_class = {c: a for c, a, n in zip(result.classes, result.per_class, counts, strict=True) if n}
        record = result.summary() | {"per_class": per_class}
        record |= {"model": name, "img_size": list(restored.img_size), "crop_pct": restored.transform.crop_pct}
        record |= {"preprocessing": view}
        print(json.dumps(record | {"confusion_png": str(png), "skipped": len(dataset.skipped)}))
        return 0
    console = Console()
    console.print(f"preprocessing: {view}", soft_wrap=True)
    table = Table(title=f"{name} on {args.data or 'digits'} ({args.split}, {result.count} images at {size})")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("images", justify="right")
    for label, accuracy, count in zip(result.classes, result.per_class, counts.tolist(), strict=True):
        if count:  # published weights: only the ImageNet classes the folder has
            table.add_row(label, f"{accuracy:.2f}%", str(count))
    console.print(table)
    console.print(
        f"[bold]top-1 {result.top1:.2f}%[/]  top-5 {result.top5:.2f}%  loss {result.loss:.4f}\nconfusion matrix: {png}"
    )
    if dataset.skipped:
        console.print(f"[yellow]skipped {len(dataset.skipped)} unreadable file(s)[/]")
    return 0


def _run_segment(args: argparse.Namespace, ckpt: Checkpoint) -> int:
    from glocal.engine.segment import evaluate_segment_checkpoint

    if args.data is None:
        raise ValueError("--task segment needs --data DIR (ADE20K or VOC layout, with classes.txt)")
    overlays = Path(args.overlays) if args.overlays else Path(args.checkpoint).parent / "overlays"
    segmenter, metrics = evaluate_segment_checkpoint(
        ckpt, args.data, split=args.split, model=args.model, head=args.head, eval_mode=args.eval_mode,
        ema=args.ema, overlay_dir=overlays,
    )  # fmt: skip
    if args.json:
        per_class = dict(zip(metrics.classes, metrics.iou, strict=True))
        print(json.dumps(metrics.summary() | {"per_class_iou": per_class, "overlays": str(overlays)}))
        return 0
    mode = args.eval_mode or segmenter.inference.eval_mode
    table = Table(title=f"{segmenter.model_name} + {segmenter.head_name} on {args.data} ({args.split}, {mode})")
    for col in ("class", "IoU", "Acc"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, iou, acc in zip(metrics.classes, metrics.iou, metrics.acc, strict=True):
        table.add_row(name, f"{iou:.2f}", f"{acc:.2f}")
    console = Console()
    console.print(table)
    console.print(
        f"[bold]mIoU {metrics.miou:.2f}%[/]  mAcc {metrics.macc:.2f}%  aAcc {metrics.aacc:.2f}%\noverlays: {overlays}"
    )
    return 0
