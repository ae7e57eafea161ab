"""``glocal validate MODEL [--pretrained TAG | --checkpoint P] --data DIR``: ImageNet top-1/top-5 of released weights,
next to the figure their source reports, with the exact preprocessing used."""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console

from glocal.cli._args import add_model_operand, add_weights, model_operand, weights_of
from glocal.data import ImageFolder
from glocal.data.imagenet import as_imagenet1k, imagenet1k_classes
from glocal.engine.evaluate import evaluate
from glocal.engine.inference import restore_model


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="ImageNet top-1/top-5 of pretrained weights next to the reported figure",
        description="Evaluate MODEL with its pretrained weights (--pretrained TAG, default the model's default tag) "
        "or --checkpoint P on an ImageFolder whose class folders are ImageNet synset ids (ILSVRC2012 val sorted into "
        "n01440764/ ...; a subset of the classes is fine), with the tag's own eval preprocessing.",
    )
    add_model_operand(p, what="registered model name, or MODEL.TAG")
    add_weights(p, what="a checkpoint file or folder instead of the published weights")
    p.add_argument("--data", metavar="DIR", required=True, help="ImageFolder with synset-named class folders")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    args.model = model_operand(args)
    checkpoint, pretrained = weights_of(args)
    if checkpoint is None:
        restored = restore_model(model=args.model, pretrained=pretrained or True)
    else:
        restored = restore_model(checkpoint, model=args.model, classes=imagenet1k_classes())
    model = restored.model
    if model.num_classes != len(imagenet1k_classes()):
        raise ValueError(f"{args.model} classifies {model.num_classes} classes, not ImageNet-1k's 1000")
    dataset = as_imagenet1k(ImageFolder(args.data, transform=restored.transform.pixels))
    result = evaluate(
        model, dataset, img_size=restored.img_size, mean=restored.mean, std=restored.std,
        batch_size=args.batch_size, device=torch.device("cpu"),
    )  # fmt: skip
    cfg = getattr(model, "pretrained_cfg", None)
    reported = cfg.top1 if cfg is not None else None
    view = restored.transform.describe()
    record = {"model": args.model, "images": result.count, "top1": result.top1, "top5": result.top5}
    record |= {"reported_top1": reported, "preprocessing": view}
    if args.json:
        print(json.dumps(record))
        return 0
    at = f" at {cfg.top1_resolution} px ({cfg.name}, {cfg.origin})" if reported is not None else ""
    classes = len({label for _, label in dataset.samples})
    Console().print(
        f"[bold]{args.model}[/] on {result.count} images of {classes} classes: top-1 {result.top1:.2f}%  "
        f"top-5 {result.top5:.2f}%  reported top-1 "
        + (f"{reported:.2f}%{at}" if reported is not None else "-")
        + f"\npreprocessing: {view}",
        soft_wrap=True,
    )
    return 0
