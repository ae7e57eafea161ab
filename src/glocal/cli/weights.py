"""``glocal weights [PATTERN]``: the public releases glocal loads by name, and the models that have none."""

from __future__ import annotations

import argparse
import fnmatch

from rich.console import Console
from rich.table import Table

from glocal.pretrained import NO_PUBLIC_WEIGHTS, get_pretrained, is_cached, list_pretrained


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="list pretrained weight tags (source, input size, reported top-1, licence, cached)",
        description="List the weight tags create_model(NAME, pretrained=True|TAG) loads (optionally those matching "
        "a glob PATTERN such as 'volo_*'), and the models that have no public ImageNet weights.",
    )
    p.add_argument("pattern", nargs="?", default=None, metavar="PATTERN", help="glob filter, e.g. 'volo_*'")
    p.add_argument(
        "--markdown", action="store_true", help="print the tags as the Markdown table of docs/checkpoints.md"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = list_pretrained(args.pattern)
    without = {m: why for m, why in NO_PUBLIC_WEIGHTS.items() if not args.pattern or fnmatch.fnmatch(m, args.pattern)}
    if not names and not without:
        raise ValueError(f"no weight tag or model matches {args.pattern!r}")
    if args.markdown:
        print(markdown_table(names), end="")
        return 0
    console = Console()
    if names:
        table = Table(title=f"glocal pretrained weights ({len(names)})")
        table.add_column("tag", no_wrap=True, min_width=max(map(len, names)))
        for col in ("source", "input", "top-1", "licence", "cached"):
            table.add_column(col, justify="right" if col in ("input", "top-1") else "left")
        for name in names:
            record = get_pretrained(name)
            top1 = f"{record.top1:g} @{record.top1_resolution}"
            size = "x".join(map(str, record.input_size[1:]))
            cached = "yes" if is_cached(record) else "no"
            table.add_row(name, record.source, size, top1, record.licence, cached)
        console.print(table)
    for model, why in without.items():
        console.print(f"{model}: no public ImageNet weights ({why})", soft_wrap=True)
    return 0


def markdown_table(names: list[str]) -> str:
    """The records of ``names`` as docs/checkpoints.md lists them (regenerate with ``glocal weights --markdown``)."""
    lines = [
        "| tag | source | input | crop_pct | interpolation | mean / std | top-1 reported | licence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = get_pretrained(name)
        if r.hf_hub_id is not None:
            source = f"[`{r.hf_hub_id}`](https://huggingface.co/{r.hf_hub_id}) (revision `{r.revision}`)"
        else:
            source = f"[{r.filename}]({r.url})"
        norm = "0.5 / 0.5" if r.mean == r.std == (0.5, 0.5, 0.5) else "ImageNet"
        lines.append(
            f"| `{name}` | {source} | {r.input_size[-1]} | {r.crop_pct:g} | {r.interpolation} | {norm} | "
            f"{r.top1:g} @{r.top1_resolution} | {r.licence} |"
        )
    return "\n".join(lines) + "\n"
