"""``glocal summary``: build every registered model; parameters and GMACs vs paper, and a non-square forward."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import track
from rich.table import Table

from glocal.analysis.summary import summarize
from glocal.registry import list_models


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="build every model: params and GMACs vs paper, forward at a non-square size",
        description="Build every registered model (or those matching PATTERN), print parameters and GMACs at the "
        "default input size next to the paper's, and run one real forward pass at a non-square size.",
    )
    p.add_argument("pattern", nargs="?", default=None, metavar="PATTERN", help="glob filter, e.g. '*resnet*'")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no registered model matches {args.pattern!r}")
    console = Console()
    rows = [summarize(n, forward=True) for n in track(names, description="building models", console=console)]
    table = Table(title=f"glocal: {len(rows)} models")
    for col in ("model", "params", "paper", "GMACs", "paper", "size", "forward"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for s in rows:
        table.add_row(
            s.name,
            f"{s.params / 1e6:.3f}M",
            f"{s.paper_params / 1e6:.3f}M",
            f"{s.gmacs:.2f}",
            f"{s.paper_gmacs:.2f}" if s.paper_gmacs is not None else "-",
            f"{s.input_size[1]}",
            f"{s.forward_size[0]}x{s.forward_size[1]} ok",
        )
    console.print(table)
    return 0
