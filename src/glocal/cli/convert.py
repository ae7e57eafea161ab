"""``glocal convert --checkpoint SRC --output DST``: any supported checkpoint -> glocal's format (a hub folder)."""

from __future__ import annotations

import argparse
import logging

from glocal.cli._args import add_checkpoint, add_img_size, add_model
from glocal.factory import create_model
from glocal.weights import open_checkpoint, save_checkpoint

_log = logging.getLogger(__name__)


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="convert an official, timm or glocal checkpoint to glocal's format",
        description="Read --checkpoint (a .safetensors, .npz or .pth/.pt/.bin file, a run's last.pt, or a glocal "
        "folder) without executing code, detect its layout from its keys, map it onto the registered model (the "
        "checkpoint's own, or --model for files that do not name one), check that every tensor fits, and write "
        "--output as a folder with model.safetensors and config.json (class names kept).",
    )
    add_checkpoint(p, required=True, what="checkpoint file or folder to read")
    p.add_argument("--output", required=True, metavar="DST", help="folder to write (replaces a glocal checkpoint)")
    add_model(p)
    p.add_argument("--layout", default=None, help="source layout, when detection from the keys is not wanted")
    p.add_argument("--ema", action="store_true", help="take the EMA weights of files that hold both")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the checkpoint's)")
    add_img_size(p, "input size (default: the checkpoint's, else the model's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    ckpt = open_checkpoint(args.checkpoint, ema=args.ema)
    size = {"img_size": args.img_size} if args.img_size is not None else {}
    model = create_model(args.model, num_classes=args.num_classes, checkpoint=ckpt, layout=args.layout, **size)
    classes = ckpt.classes if ckpt.classes is not None and len(ckpt.classes) == model.num_classes else None
    save_checkpoint(model, args.output, classes=classes)
    _log.info("converted %s -> %s (%s, %d classes)", ckpt.describe(), args.output, model.model_name, model.num_classes)
    return 0
