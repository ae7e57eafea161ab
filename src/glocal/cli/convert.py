"""``glocal convert SRC DST --model NAME``: any supported checkpoint -> glocal's format (a hub-ready folder)."""

from __future__ import annotations

import argparse
import logging

from glocal.factory import create_model
from glocal.weights import import_state_dict, is_glocal_checkpoint, load_state_dict, read_state_dict, save_checkpoint

_log = logging.getLogger(__name__)


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="convert an official, timm or glocal checkpoint to glocal's format",
        description="Read SRC (a .safetensors, .npz or .pth/.pt/.bin file, or a glocal folder) without executing "
        "code, detect its layout from its keys, map it onto the registered model NAME, check that every tensor fits, "
        "and write DST as a folder with model.safetensors and config.json.",
    )
    p.add_argument("src", metavar="SRC", help="checkpoint file or glocal folder to read")
    p.add_argument("dst", metavar="DST", help="folder to write (replaced atomically if it is a glocal checkpoint)")
    p.add_argument("--model", required=True, metavar="NAME", help="registered model name (see `glocal list`)")
    p.add_argument("--layout", default=None, help="source layout, when detection from the keys is not wanted")
    p.add_argument("--ema", action="store_true", help="take the EMA weights of files that hold both")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the checkpoint's)")
    p.add_argument("--img-size", type=int, nargs="+", default=None, metavar="PX", help="input size: S or H W")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    kwargs = {}
    if args.img_size is not None:
        kwargs["img_size"] = args.img_size[0] if len(args.img_size) == 1 else tuple(args.img_size)
    if is_glocal_checkpoint(args.src):
        model = create_model(args.model, num_classes=args.num_classes, checkpoint=args.src, **kwargs)
        layout = "glocal"
    else:
        state_dict = read_state_dict(args.src, ema=args.ema)
        model = create_model(args.model, **kwargs)
        num_classes = args.num_classes
        if num_classes is None:  # keep the checkpoint's classifier
            mapped, _ = import_state_dict(state_dict, model, layout=args.layout)
            heads = [mapped[f"{name}.weight"] for name in model.classifier if f"{name}.weight" in mapped]
            num_classes = heads[0].shape[0] if heads else model.num_classes
        if num_classes != model.num_classes:
            model = create_model(args.model, num_classes=num_classes, **kwargs)
        layout = load_state_dict(model, state_dict, layout=args.layout, source=args.src).layout
    save_checkpoint(model, args.dst)
    _log.info("converted %s (layout %s) -> %s", args.src, layout, args.dst)
    return 0
