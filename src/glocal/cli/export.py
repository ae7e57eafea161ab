"""``glocal export NAME --format onnx|torchscript|program --output PATH``."""

from __future__ import annotations

import argparse

import torch

from glocal.export import example_input, export_onnx, export_program, export_torchscript
from glocal.factory import create_model


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="export a model to ONNX, TorchScript or a torch.export program",
        description="Export a registered model (optionally with weights from --checkpoint) for deployment. ONNX and "
        "torch.export graphs take any height and width the model accepts; TorchScript is traced.",
    )
    p.add_argument("name", metavar="NAME", help="registered model name")
    p.add_argument("--format", choices=("onnx", "torchscript", "program"), default="onnx")
    p.add_argument("--output", required=True, help="file to write (.onnx, .pt or .pt2)")
    p.add_argument("--checkpoint", default=None, help="weights to load first (any format load_checkpoint accepts)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--img-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="example input size")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (17 or 18)")
    p.add_argument("--static", action="store_true", help="fix the input size instead of dynamic height/width")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model = create_model(args.name, num_classes=args.num_classes, checkpoint=args.checkpoint).eval()
    x = example_input(model, tuple(args.img_size) if args.img_size else None)
    if args.format == "onnx":
        export_onnx(model, args.output, x, opset=args.opset, dynamic=not args.static)
    elif args.format == "torchscript":
        export_torchscript(model, args.output, x)
    else:
        torch.export.save(export_program(model, x, dynamic=not args.static), args.output)
    print(f"wrote {args.format} export of {args.name} to {args.output}")
    return 0
