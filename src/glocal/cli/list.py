"""``glocal list [PATTERN]``: registered models with our parameter count against the paper's."""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from glocal.analysis.complexity import count_params
from glocal.factory import create_model
from glocal.registry import get_entry, list_models


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="list registered models with parameters vs paper",
        description="List registered models (optionally those matching a glob PATTERN such as 'twins_*') with our "
        "parameter count next to the paper's or official code's.",
    )
    p.add_argument("pattern", nargs="?", default=None, metavar="PATTERN", help="glob filter, e.g. 'vit_*'")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no registered model matches {args.pattern!r}")
    table = Table(title=f"glocal models ({len(names)})")
    for col in ("model", "family", "params", "paper", "ratio", "top-1"):
        table.add_column(col, justify="left" if col in ("model", "family") else "right")
    for name in names:
        entry = get_entry(name)
        with torch.device("meta"):
            n = count_params(create_model(name))
        top1 = f"{entry.paper.top1:.2f}" if entry.paper.top1 is not None else "-"
        table.add_row(name, entry.family, f"{n:,}", f"{entry.paper.params:,}", f"{n / entry.paper.params:.4f}", top1)
    Console().print(table)
    return 0
