"""``glocal bench MODEL [MODEL ...]``: parameters, GMACs, throughput, latency, memory and resolution scaling."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from glocal.analysis.bench import BenchRecord, bench_model, fit_scaling, plot_scaling
from glocal.cli._args import add_model_operand, model_operand
from glocal.registry import list_models


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return sizes


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="measure params, GMACs, img/s, latency, memory; resolution scaling",
        description="Measure registered models: parameters; GMACs (multiply-accumulates per image, attention "
        "included; papers call them FLOPs); throughput and latency of a batch (median of --runs after --warmup, with "
        "the interquartile range); peak memory growth; achieved FLOP/s as a fraction of this machine's measured "
        "matmul peak. Several --img-sizes add the fitted exponent of time, GMACs and memory in the number of tokens.",
    )
    add_model_operand(p, many=True, what="registered names or glob patterns ('twins_*')")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--img-size", type=_sizes, default=None, help="square input size(s) (default 224), e.g. 512,1024")
    size.add_argument("--img-sizes", type=_sizes, default=None, help="comma-separated sizes, e.g. 224,320,448,640")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mode", choices=("infer", "train"), default="infer", help="time inference or a training step")
    p.add_argument("--task", choices=("classify", "segment"), default="classify",
                   help="segment: time create_segmenter(MODEL, head=--head) and report its peak memory")  # fmt: skip
    p.add_argument("--head", choices=("upernet", "semantic_fpn"), default="upernet", help="--task segment's head")
    p.add_argument("--grad-checkpointing", action="store_true", help="--task segment: recompute blocks in backward")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast (or cast, --optimize)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--optimize", action="store_true", help="inference: fold BN, channels-last (glocal.optimize)")
    p.add_argument("--freeze", action="store_true", help="inference: --optimize, then freeze to TorchScript")
    p.add_argument(
        "--compile",
        action="store_true",
        help="run through torch.compile (inductor; inference: with freezing); compiles during the warm-up",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--runs", type=int, default=10, help="timed iterations; the median is reported")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON record per model and size instead of tables")
    p.add_argument("--csv", metavar="FILE", default=None, help="also write every record to a CSV file")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="also plot resolution scaling to a PNG")
    p.set_defaults(run=run)


def _resolve(patterns: list[str]) -> list[str]:
    names = []
    for pattern in patterns:
        matched = list_models(pattern) if any(c in pattern for c in "*?[") else [pattern]
        if not matched:
            raise ValueError(f"no registered model matches {pattern!r}")
        names.extend(n for n in matched if n not in names)
    return names


def _table(records: list[BenchRecord]) -> Table:
    first = records[0]
    title = (
        f"glocal bench: {first.mode}, {first.dtype}, batch {first.batch_size}, {first.device}, "
        f"{first.threads} threads{', ' + first.optimized if first.optimized else ''}"
        f"{', torch.compile' if first.compiled else ''}"
    )
    table = Table(title=title, caption="GMACs: multiply-accumulates per image (papers' 'FLOPs'), attention included")
    for col in ("model", "size", "params", "GMACs", "img/s", "latency ms", "IQR ms", "mem MiB", "TFLOP/s", "of peak"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in records:
        table.add_row(
            r.model,
            str(r.img_size),
            f"{r.params / 1e6:.2f}M",
            f"{r.gmacs:.2f}",
            f"{r.img_per_s:.1f}",
            f"{r.latency_ms:.1f}",
            f"{r.latency_iqr_ms:.1f}",
            "-" if math.isnan(r.mem_mib) else f"{r.mem_mib:.0f}",
            f"{r.tflops:.3f}",
            f"{r.peak_fraction:.0%}",
        )
    return table


def _scaling_table(records: list[BenchRecord]) -> Table:
    sizes = sorted({r.img_size for r in records})
    table = Table(
        title=f"resolution scaling {sizes[0]} -> {sizes[-1]}: growth and fitted exponent a of y ~ tokens^a",
        caption=f"tokens grow {(sizes[-1] / sizes[0]) ** 2:.1f}x; a = 1 is linear, 2 quadratic",
    )
    for col in ("model", "time x", "time a", "GMACs x", "GMACs a", "mem x", "mem a"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, fit in fit_scaling(records).items():
        table.add_row(
            name,
            *(
                f"{fit[key]:.2f}"
                for key in ("time_growth", "time_exponent", "gmacs_growth", "gmacs_exponent", "mem_growth")
            ),
            f"{fit['mem_exponent']:.2f}",
        )
    return table


def run(args: argparse.Namespace) -> int:
    args.models = model_operand(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = _resolve(args.models)
    sizes = args.img_sizes or args.img_size or [224]
    if args.task == "segment":
        return _run_segment(args, names, sizes)
    jobs = [(n, s) for n in names for s in sizes]
    # Off a terminal rich assumes 80 columns, too narrow for the table; files and pipes get the full width.
    stream = sys.stderr if args.json else sys.stdout
    console = Console(stderr=args.json, width=None if stream.isatty() else 160)
    records = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("bench", total=len(jobs))
        for name, size in jobs:
            progress.update(task, description=f"{name} @ {size}")
            record = bench_model(
                name,
                size,
                batch_size=args.batch_size,
                mode=args.mode,
                dtype=args.dtype,
                device=args.device,
                optimize=args.optimize,
                freeze=args.freeze,
                compile=args.compile,
                warmup=args.warmup,
                runs=args.runs,
            )
            records.append(record)
            if args.json:
                print(json.dumps(record.as_dict()), flush=True)
            progress.advance(task)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0].as_dict()))
            writer.writeheader()
            writer.writerows(r.as_dict() for r in records)
    if args.plot:
        plot_scaling(records, args.plot)
    if not args.json:
        console.print(_table(records))
        if len(sizes) > 1:
            console.print(_scaling_table(records))
        for path in (args.csv, args.plot):
            if path:
                console.print(f"wrote {path}")
    return 0


def _run_segment(args: argparse.Namespace, names: list[str], sizes: list[int]) -> int:
    from glocal.dense.bench import bench_segmenter

    table = Table("model", "head", "size", "batch", "mode", "ms/batch", "img/s", "peak MiB")
    for name in names:
        for size in sizes:
            r = bench_segmenter(name, size, head=args.head, batch_size=args.batch_size, mode=args.mode,
                                device=args.device, grad_checkpointing=args.grad_checkpointing,
                                warmup=args.warmup, runs=args.runs)  # fmt: skip
            if args.json:
                print(json.dumps(r.as_dict()), flush=True)
            table.add_row(name, r.head, str(size), str(r.batch_size), r.mode, f"{r.latency_ms:.0f}",
                          f"{r.img_per_s:.2f}", f"{r.mem_mib:.0f}")  # fmt: skip
    if not args.json:
        Console(width=160).print(table)
    return 0
