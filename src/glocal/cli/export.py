"""``glocal export --checkpoint PATH --format onnx|torchscript|program``: a deployable graph, checked against eager."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from glocal.cli._args import add_img_size, add_model, add_weights, img_size, weights_of
from glocal.export import (
    example_input,
    export_onnx,
    export_program,
    export_torchscript,
    max_export_diff,
    min_dynamic_size,
)
from glocal.factory import create_model
from glocal.weights.io import atomic_path

_log = logging.getLogger(__name__)

_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "program": ".pt2"}
_RUNNERS = {"onnx": "onnxruntime", "torchscript": "TorchScript", "program": "the exported program"}


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="export a model to ONNX, TorchScript or a torch.export program, checked against eager",
        description="Export the model of --checkpoint (rebuilt from it, with its trained classifier: a checkpoint "
        "whose classifier does not fit is refused, never replaced by a random one), a registered --model with its "
        "--pretrained weights, or at initialisation. ONNX and torch.export graphs take any batch, height and width "
        "the model accepts from 64 px (smaller examples export at a fixed size); TorchScript is traced. The "
        "exported graph is run on the example input and its largest difference from eager mode is printed.",
    )
    add_weights(p, what="weights: a model folder (a run's model/), a run's last.pt, or any checkpoint glocal loads")
    add_model(p, what="registered model name; with --checkpoint optional (its model, which it must not contradict)")
    p.add_argument("--format", choices=tuple(_SUFFIXES), default="onnx", help="what to write")
    p.add_argument("--output", metavar="PATH", help="file to write (default: beside the checkpoint, or NAME.onnx/.pt2)")
    p.add_argument("--num-classes", type=int, help="classifier size without --checkpoint (default 1000)")
    add_img_size(p, "example input size (default: the checkpoint's, else the model's)")
    p.add_argument("--ema", action="store_true", help="export a training state's EMA weights")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (17 to the newest the installed onnx knows)")
    p.add_argument("--static", action="store_true", help="fix the input size instead of dynamic height/width")
    p.set_defaults(run=run)


def _output(args: argparse.Namespace, name: str) -> Path:
    if args.output:
        return Path(args.output)
    suffix = _SUFFIXES[args.format]
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        return ckpt.with_name(ckpt.name.split(".")[0] + suffix)
    return Path(name + suffix)


def run(args: argparse.Namespace) -> int:
    checkpoint, pretrained = weights_of(args)
    if checkpoint is None and args.model is None:
        raise ValueError(
            "give --checkpoint PATH (a trained model) or --model NAME (with --pretrained, or at initialisation)"
        )
    if (checkpoint is not None or pretrained) and args.num_classes is not None:
        raise ValueError(
            "--num-classes applies to a model at initialisation only: trained weights keep their classifier"
        )
    size = {"img_size": args.img_size} if args.img_size is not None else {}
    model = create_model(
        args.model, checkpoint=checkpoint, pretrained=pretrained, ema=args.ema, num_classes=args.num_classes,
        new_classifier=False, **size,
    ).eval()  # fmt: skip
    if checkpoint is None and not pretrained:
        _log.warning("no --checkpoint: exporting %s with randomly initialised weights", model.model_name)
    hw = img_size(args.img_size) or tuple(model.data_config.input_size[-2:])
    dynamic = not args.static
    if dynamic and min(hw) < min_dynamic_size(model):
        low = min_dynamic_size(model)
        print(
            f"note: dynamic sizes need an example of at least {low}x{low} px for {model.model_name}; exporting at "
            f"the fixed size {hw[0]}x{hw[1]} (give --img-size {low} or more for a graph that takes any size)"
        )
        dynamic = False
    torch.manual_seed(0)
    x = example_input(model, hw, batch_size=2 if dynamic else 1)
    out = _output(args, model.model_name)
    if args.format == "onnx":
        export_onnx(model, out, x, opset=args.opset, dynamic=dynamic)
    elif args.format == "torchscript":
        export_torchscript(model, out, x)
    else:
        program = export_program(model, x, dynamic=dynamic)
        with atomic_path(out) as tmp:
            torch.export.save(program, str(tmp))
    diff = max_export_diff(model, out, args.format, x)
    weights = f"weights of {checkpoint}" if checkpoint else "random weights"
    if pretrained:
        weights = f"weights {model.pretrained_cfg.name}"
    print(
        f"wrote {args.format} export of {model.model_name} ({model.num_classes} classes, {weights}) to {out}\n"
        f"max |{_RUNNERS[args.format]} - eager| = {diff:.2e} on a {'x'.join(map(str, x.shape))} input"
        f"{' (dynamic batch, height and width)' if dynamic else ' (fixed size)'}"
    )
    return 0
