"""``glocal predict``: the top-k classes, with probabilities, of images under a trained model or published weights."""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console

from glocal.cli._args import add_img_size, add_model, add_weights, find_images, positive_int, weights_of
from glocal.data.datasets import read_rgb
from glocal.engine.inference import predict, restore_model


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="classify images with a trained model or published weights (top-k class names and probabilities)",
        description="Classify images (files, folders of images, glob patterns) with the model of --checkpoint, "
        "rebuilt from it with its class names, input size and preprocessing, or with --model's --pretrained weights "
        "(ImageNet-1k class names). Every image goes through the model's eval view (glocal.data.create_transform "
        "of its data config, printed first): the view eval and training's validation see.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns ('dir/*.png')")
    add_weights(p)
    add_model(p)
    p.add_argument("--classes", metavar="A,B,...", help="class names, comma-separated (checkpoints without them)")
    add_img_size(p, "input size (default: the checkpoint's)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes shown per image (at most the model's)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--ema", action="store_true", help="use a training state's EMA weights")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    checkpoint, pretrained = weights_of(args, required=True)
    paths = find_images(args.images)
    classes = tuple(args.classes.split(",")) if args.classes else None
    restored = restore_model(
        checkpoint, model=args.model, pretrained=pretrained, classes=classes, img_size=args.img_size, ema=args.ema
    )
    console = Console()
    if not args.json:
        console.print(f"preprocessing: {restored.transform.describe()}", soft_wrap=True)
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start : start + args.batch_size]
        images = torch.stack([restored.transform(read_rgb(path)) for path in batch])
        for path, top in zip(batch, predict(restored, images, args.top_k), strict=True):
            if args.json:
                print(json.dumps({"image": str(path), "top": [{"label": c, "probability": p} for c, p in top]}))
            else:
                console.print(f"[bold]{path}[/]: " + ", ".join(f"{c} {p:.1%}" for c, p in top), soft_wrap=True)
    return 0
