"""``glocal validate MODEL [--pretrained TAG | --checkpoint P] --data DIR``: ImageNet top-1/top-5 of released weights,
next to the figure their source reports, with the exact preprocessing used."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console

from glocal.cli._args import add_model_operand, model_operand
from glocal.data import ImageFolder, create_transform
from glocal.data.imagenet import imagenet1k_synsets
from glocal.factory import create_model


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="ImageNet top-1/top-5 of pretrained weights next to the reported figure",
        description="Evaluate MODEL with its pretrained weights (--pretrained TAG, default the model's default tag) "
        "or --checkpoint P on an ImageFolder whose class folders are ImageNet synset ids (ILSVRC2012 val sorted into "
        "n01440764/ ...; a subset of the classes is fine), with the tag's own eval preprocessing.",
    )
    add_model_operand(p, what="registered model name, or MODEL.TAG")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pretrained", metavar="TAG", help="weight tag (see `glocal weights`)")
    source.add_argument("--checkpoint", metavar="P", help="a checkpoint file or folder instead")
    p.add_argument("--data", metavar="DIR", required=True, help="ImageFolder with synset-named class folders")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    args.model = model_operand(args)
    if args.checkpoint:
        model = create_model(args.model, checkpoint=args.checkpoint)
    else:
        model = create_model(args.model, pretrained=args.pretrained or True)
    model.eval()
    cfg = getattr(model, "pretrained_cfg", None) or model.data_config
    dataset = ImageFolder(args.data, load_size=1)
    synsets = imagenet1k_synsets()
    unknown = [c for c in dataset.classes if c not in synsets]
    if unknown:
        raise ValueError(
            f"class folders of {args.data} must be ImageNet-1k synset ids (n01440764...); not {unknown[:5]}"
        )
    if model.num_classes != len(synsets):
        raise ValueError(f"{args.model} classifies {model.num_classes} classes, not ImageNet-1k's {len(synsets)}")
    targets = torch.tensor([synsets.index(dataset.classes[label]) for _, label in dataset.samples])
    transform = create_transform(cfg)
    top1 = top5 = 0
    with torch.no_grad():
        for start in range(0, len(dataset.samples), args.batch_size):
            batch = dataset.samples[start : start + args.batch_size]
            x = torch.stack([_load(path, transform) for path, _ in batch])
            ranked = model(x).topk(5, dim=-1).indices  # (B, 5)
            hit = ranked == targets[start : start + len(batch), None]
            top1 += int(hit[:, 0].sum())
            top5 += int(hit.any(dim=-1).sum())
    n = len(dataset.samples)
    reported = getattr(cfg, "top1", None)
    view = _describe(cfg)
    record = {"model": args.model, "images": n, "top1": 100 * top1 / n, "top5": 100 * top5 / n}
    record |= {"reported_top1": reported, "preprocessing": view}
    if args.json:
        print(json.dumps(record))
        return 0
    at = f" at {cfg.top1_resolution} px" if reported is not None else ""
    source = f" ({cfg.name}, {cfg.origin})" if hasattr(cfg, "origin") else ""
    Console().print(
        f"[bold]{args.model}[/] on {n} images of {len(dataset.classes)} classes: top-1 {record['top1']:.2f}%  "
        f"top-5 {record['top5']:.2f}%  reported top-1 "
        + (f"{reported:.2f}%{at}{source}" if reported is not None else "-")
        + f"\npreprocessing: {view}",
        soft_wrap=True,
    )
    return 0


def _load(path: Path, transform) -> torch.Tensor:
    with Image.open(path) as image:
        return transform(image)


def _describe(cfg) -> str:
    get = cfg.get if isinstance(cfg, dict) else lambda key: getattr(cfg, key)
    height, width = tuple(get("input_size"))[-2:]
    crop_pct = float(get("crop_pct"))
    return (
        f"resize shorter side to {int(max(height, width) / crop_pct)} ({get('interpolation')}), centre crop "
        f"{height}x{width} (crop_pct {crop_pct}), normalise mean {tuple(get('mean'))} std {tuple(get('std'))}"
    )
