"""``glocal info NAME``: config, parameters, MACs and pyramid taps of one model."""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console
from rich.table import Table

from glocal.analysis.analytic import AttentionCost, attention_costs
from glocal.analysis.summary import summarize
from glocal.cli._args import add_model_operand, model_operand
from glocal.factory import create_model


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="show one model's config, parameters, GMACs and pyramid taps",
        description="Show a registered model's architecture config, parameter count and GMACs (multiply-accumulates "
        "at the default input size, attention included) against the paper, and its pyramid taps.",
    )
    add_model_operand(p, what="registered model name (see `glocal list`)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(run=run)


def _attention_by_kind(costs: list[AttentionCost]) -> list[dict]:
    """Analytic (paper formula) and counted MACs of the attention modules, summed per design."""
    kinds: dict[str, dict] = {}
    for c in costs:
        row = kinds.setdefault(c.kind, {"kind": c.kind, "modules": 0, "analytic_gmacs": 0.0, "counted_gmacs": 0.0})
        row["modules"] += 1
        row["analytic_gmacs"] += c.analytic / 1e9
        row["counted_gmacs"] += c.counted / 1e9
    return list(kinds.values())


def run(args: argparse.Namespace) -> int:
    args.name = model_operand(args)
    s = summarize(args.name)
    with torch.device("meta"):
        attention = _attention_by_kind(attention_costs(create_model(args.name), s.input_size))
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
        "attention": attention,
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
    if attention:
        att = Table(title="attention: paper formula vs counted (GMACs per image, see glocal.analysis.analytic)")
        for col in ("design", "modules", "analytic", "counted", "share of model"):
            att.add_column(col, justify="left" if col == "design" else "right")
        for row in attention:
            att.add_row(
                row["kind"],
                str(row["modules"]),
                f"{row['analytic_gmacs']:.4f}",
                f"{row['counted_gmacs']:.4f}",
                f"{row['counted_gmacs'] / s.gmacs:.1%}",
            )
        console.print(att)
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
