"""``glocal predict``: the top-k classes, with probabilities, of image files under a trained model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console

from glocal.data import load_image
from glocal.engine.inference import predict, restore_model


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="classify image files with a trained model (top-k labels and probabilities)",
        description="Classify IMAGE files with MODEL and the weights of --checkpoint (a run's last.pt carries its "
        "class names; other checkpoints need --classes).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--checkpoint", required=True, metavar="PATH")
    p.add_argument("--classes", metavar="A,B,...", help="class names, comma-separated (checkpoints without them)")
    p.add_argument("--img-size", type=int)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--ema", action="store_true", help="use the run's EMA weights")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
    classes = tuple(args.classes.split(",")) if args.classes else None
    restored = restore_model(args.model, args.checkpoint, classes=classes, img_size=args.img_size, ema=args.ema)
    load_size = round(max(restored.img_size) / restored.crop_pct)
    images = torch.stack([load_image(path, load_size) for path in args.images])
    console = Console()
    for path, top in zip(args.images, predict(restored, images, args.top_k), strict=True):
        if args.json:
            print(json.dumps({"image": path, "top": [{"label": c, "probability": p} for c, p in top]}))
        else:
            console.print(f"[bold]{path}[/]: " + ", ".join(f"{c} {p:.1%}" for c, p in top))
    return 0
