"""``glocal info NAME``: config, parameters, MACs and pyramid taps of one model."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from glocal.analysis.summary import summarize


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="show one model's config, parameters, GMACs and pyramid taps",
        description="Show a registered model's architecture config, parameter count and GMACs (multiply-accumulates "
        "at the default input size, attention included) against the paper, and its pyramid taps.",
    )
    p.add_argument("name", metavar="NAME", help="registered model name (see `glocal list`)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    s = summarize(args.name)
    record = {
        "name": s.name,
        "family": s.family,
        "params": s.params,
        "paper_params": s.paper_params,
        "gmacs": round(s.gmacs, 4),
        "paper_gmacs": s.paper_gmacs,
        "top1": s.top1,
        "input_size": list(s.input_size),
        "taps": [{"channels": c, "reduction": r} for c, r in s.taps],
        "source": s.source,
        "config": s.config,
    }
    if args.json:
        print(json.dumps(record))
        return 0
    console = Console()
    figures = Table(title=f"{s.name} ({s.family})", show_header=True)
    for col in ("", "glocal", "paper / reference"):
        figures.add_column(col, justify="right")
    figures.add_row("parameters", f"{s.params:,}", f"{s.paper_params:,}")
    paper_gmacs = f"{s.paper_gmacs:.2f}" if s.paper_gmacs is not None else "-"
    figures.add_row(f"GMACs @ {s.input_size[1]}x{s.input_size[2]}", f"{s.gmacs:.2f}", paper_gmacs)
    figures.add_row("ImageNet top-1", "-", f"{s.top1:.2f}" if s.top1 is not None else "-")
    console.print(figures)
    console.print(f"source: {s.source}")
    taps = Table(title="pyramid taps")
    for col in ("index", "channels", "reduction"):
        taps.add_column(col, justify="right")
    for i, (c, r) in enumerate(s.taps):
        taps.add_row(str(i), str(c), str(r))
    console.print(taps)
    cfg = Table(title="config")
    cfg.add_column("field")
    cfg.add_column("value")
    for k, v in s.config.items():
        cfg.add_row(k, repr(v))
    console.print(cfg)
    return 0
