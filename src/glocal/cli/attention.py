"""``glocal attention``: attention maps of every attention layer over images, and GCNet's query-independence table.

For each IMAGE one PNG: the image, then one panel per attention layer (or per head with ``--heads``) showing the
attention of the query pixel ``--query ROW,COL`` (default: the image centre), or of the class token with
``--class-token`` (plus attention rollout for ViT / T2T-ViT), over the image, with a colour bar and the layer name.
GC / SNL pooling maps have no query and are shown as they are. ``attention.json`` holds every layer's layout and
query-independence statistic; ``--stats`` computes only the statistic, per layer and stage, over all the images (or
folders of images) given, and writes ``query_independence.json`` and ``query_independence.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

import glocal
from glocal.analysis.attention import (
    attention_rollout,
    image_map,
    query_independence,
    query_independence_table,
    record_attention,
    to_pixels,
)
from glocal.analysis.figures import overlay_grid, plot_query_independence
from glocal.cli._args import add_img_size, add_model_operand, add_weights, find_images, model_operand, weights_of
from glocal.data import EvalTransform, create_transform, read_rgb
from glocal.data.transforms import normalize
from glocal.engine.inference import restore_model
from glocal.weights.io import write_bytes_atomic

log = logging.getLogger(__name__)


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="attention maps over images (PNG overlays) and GCNet's query-independence statistic",
        description="Record every attention map of MODEL on each IMAGE and draw it over the image: one panel per "
        "attention layer (or head), the map of one query pixel or of the class token, on the model's eval view of "
        "the image. Weights from --checkpoint (rebuilt from it as every command does; MODEL must not contradict it) "
        "or --pretrained; without either the model keeps its random initialisation.",
    )
    add_model_operand(p)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files, folders or glob patterns ('dir/*.png')")
    add_weights(p)
    p.add_argument("--classes", metavar="A,B,...", help="class names of a checkpoint without them")
    add_img_size(p, "input size (default: the checkpoint's or the model's)")
    p.add_argument("--layers", metavar="PATTERN", help="glob on attention layer names, e.g. 'blocks.1*'")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--query", metavar="ROW,COL", help="query pixel of the resized input (default: centre)")
    which.add_argument("--class-token", action="store_true", help="the class token's attention (and rollout)")
    p.add_argument("--heads", action="store_true", help="one panel per head instead of the head mean")
    p.add_argument("--stats", action="store_true", help="only the query-independence table over all images")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(run=run)


def _load(args: argparse.Namespace) -> tuple[torch.nn.Module, EvalTransform]:
    """(model in eval mode, its eval view): the weights of --checkpoint or --pretrained, else random ones."""
    checkpoint, pretrained = weights_of(args)
    if checkpoint or pretrained:
        classes = tuple(args.classes.split(",")) if args.classes else None
        restored = restore_model(
            checkpoint, model=args.model, pretrained=pretrained, classes=classes, img_size=args.img_size
        )
        return restored.model, restored.transform
    log.warning(
        "%s: no --checkpoint or --pretrained, so the maps are those of randomly initialised weights", args.model
    )
    size = {"img_size": args.img_size} if args.img_size is not None else {}
    model = glocal.create_model(args.model, **size).eval()
    return model, create_transform(model.data_config)


def _parse_query(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        row, col = (float(v) for v in text.split(","))
    except ValueError as err:
        raise ValueError(f"--query takes ROW,COL (pixels of the resized input), got {text!r}") from err
    return row, col


def run(args: argparse.Namespace) -> int:
    args.model = model_operand(args, spill="images")
    if not args.images:
        raise ValueError("name at least one IMAGE (files, folders or glob patterns)")
    files = find_images(args.images)
    query = _parse_query(args.query)
    model, view = _load(args)
    size = view.size
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not any(isinstance(m, glocal.layers.AttentionProbe) for m in model.modules()):
        raise ValueError(f"{args.model} has no attention map to record (no attention probe in the model)")
    if query is not None and not (0 <= query[0] < size[0] and 0 <= query[1] < size[1]):
        raise ValueError(f"--query {args.query}: the pixel must lie in the {size[0]} x {size[1]} input")
    centre = (size[0] / 2, size[1] / 2)
    if args.stats:
        batches = (view(read_rgb(path))[None] for path in files)
        table = query_independence_table(model, batches, args.layers)
        if not table["layers"]:
            raise ValueError(f"--layers {args.layers!r} matches no attention layer of {args.model}")
        table |= {"model": args.model, "images": len(files), "img_size": list(size)}
        write_bytes_atomic(json.dumps(table, indent=2).encode(), out / "query_independence.json")
        plot_query_independence(table, out / "query_independence.png", title=f"{args.model}, {len(files)} images")
        for row in table["stages"]:
            value = row["query_independence"]
            print(f"stride {row['stride']:>3}  {row['kind']:<8} {row['layers']:>3} layers  {value:.4f}")
        print(f"wrote {out / 'query_independence.json'} and {out / 'query_independence.png'}")
        return 0
    summary = {"model": args.model, "img_size": list(size), "query": query or centre, "class_token": args.class_token}
    summary["images"] = []
    for path in files:
        image = view.pixels(read_rgb(path))  # (3, H, W) uint8, the eval view
        with torch.inference_mode(), record_attention(model, args.layers) as records:
            model(normalize(image[None], view.mean, view.std))
        if not records:
            raise ValueError(f"--layers {args.layers!r} matches no attention layer of {args.model}")
        panels, layers = [], []
        for name, calls in records.items():
            record = calls[-1]
            grid = image_map(record, None if args.class_token else (query or centre))[0]
            pixels = to_pixels(grid, size)  # (heads, H, W)
            if args.heads:
                panels += [(f"{name} h{h}", pixels[h]) for h in range(pixels.shape[0])]
            else:
                panels.append((f"{name} ({record.layout.kind})", pixels.mean(0)))
            layers.append({"layer": name, **record.layout.as_dict(), "query_independence": query_independence(record)})
        if args.class_token and any(r.layout.kind == "global" and r.layout.prefix_tokens for r in _last(records)):
            panels.append(("rollout", to_pixels(attention_rollout(_last(records))[0], size)))
        target = out / f"{path.stem}_attention.png"
        marker = None if args.class_token else (query or centre)
        overlay_grid(image, panels, target, title=f"{args.model}: {path.name}", marker=marker)
        summary["images"].append({"image": str(path), "png": str(target), "layers": layers})
        print(f"wrote {target}")
    write_bytes_atomic(json.dumps(summary, indent=2).encode(), out / "attention.json")
    print(f"wrote {out / 'attention.json'}")
    return 0


def _last(records):
    return [calls[-1] for calls in records.values()]
