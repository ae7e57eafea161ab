"""``glocal routes [MODEL ...]``: the CPU backend's route choices on this machine; re-measure or forget them."""

from __future__ import annotations

import argparse
import collections
import json

import torch
from rich.console import Console
from rich.table import Table

from glocal.backends import cpu as cpu_backend
from glocal.cli._args import add_model_operand, model_operand, positive_int
from glocal.factory import create_model
from glocal.optimize import optimize_for_inference


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        help="the CPU backend's route choices on this CPU: list, re-measure for a model, forget",
        description="The CPU backend takes each of its routes (oneDNN or MKL products, fused epilogues, explicit or "
        "blocked attention) only for the shape classes where a short measurement at first use found it faster, and "
        "caches the choice per CPU model, thread count and torch version. Without a MODEL: list the cached choices. "
        "With MODELs: run each once at --batch-size and --img-size (inference as optimize_for_inference makes it, "
        "or a training step) measuring every shape class it meets anew, and cache the new choices; do this before a "
        "long job, or when a first measurement ran on a busy machine. --clear forgets every choice first.",
    )
    add_model_operand(p, many=True, what="registered model names to measure the routes of")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--img-size", type=positive_int, default=224, help="square input size")
    p.add_argument("--mode", choices=("infer", "train"), default="infer", help="measure inference or a training step")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: the model cast (inference)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads; choices are kept per count")
    p.add_argument("--clear", action="store_true", help="forget every cached choice (this CPU and thread count)")
    p.add_argument("--json", action="store_true", help="print the choices as one JSON object (key -> route)")
    p.set_defaults(run=run)


def _step(name: str, args: argparse.Namespace):
    """One forward (or training step) of ``name`` on the CPU backend, as the engine and bench build it."""
    model = cpu_backend.enable(create_model(name, img_size=args.img_size))
    x = torch.randn(args.batch_size, model.in_chans, args.img_size, args.img_size)
    if args.mode == "train":
        model.train()

        def step() -> None:
            model(x).float().logsumexp(dim=-1).mean().backward()

        return step
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    model = optimize_for_inference(model, dtype=dtype)
    x = model.prepare_input(x.to(dtype or torch.float32))

    def step() -> None:
        with torch.inference_mode():
            model(x)

    return step


def _table(title: str, routes: dict[str, str], before: dict[str, str] | None = None) -> Table:
    table = Table(title=title)
    table.add_column("shape class", no_wrap=True)
    table.add_column("route")
    if before is not None:
        table.add_column("before")
    for key, route in routes.items():
        row = [key, route]
        if before is not None:
            row.append(before.get(key, "-") if before.get(key) != route else "")
        table.add_row(*row)
    return table


def run(args: argparse.Namespace) -> int:
    names = model_operand(args) if args.model_operand or args.model else []
    if args.mode == "train" and args.dtype == "bf16":
        raise ValueError("--dtype bf16 is an inference mode (the model cast to bfloat16); train in fp32")
    if not cpu_backend.is_enabled():
        raise ValueError("the routes are the CPU backend's, which --standard-path turns off; drop --standard-path")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    console = Console()
    path = cpu_backend.route_cache_path()
    if args.clear:
        count = cpu_backend.clear_route_cache()
        if not args.json:
            console.print(f"forgot {count} cached route choices ({path})", soft_wrap=True)
    if not names:
        routes = cpu_backend.cached_routes()
        if args.json:
            print(json.dumps(routes, indent=1))
        elif not args.clear:
            _print_cache(console, routes, path)
        return 0
    measured: dict[str, str] = {}
    for name in names:
        before = cpu_backend.cached_routes()
        with Console(stderr=True).status(f"measuring the routes of {name} ({args.mode}, {args.dtype})"):
            routes = cpu_backend.recalibrate(_step(name, args))
        measured |= routes
        if not args.json:
            title = f"{name}: {len(routes)} shape classes measured ({args.mode}, {args.dtype}, b{args.batch_size}"
            console.print(_table(f"{title}@{args.img_size}, {torch.get_num_threads()} threads)", routes, before))
    if args.json:
        print(json.dumps(measured, indent=1))
    else:
        console.print(f"cached in {path}", soft_wrap=True)
    return 0


def _print_cache(console: Console, routes: dict[str, str], path) -> None:
    where = f"{cpu_backend.cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if not routes:
        console.print(f"no route choices cached for {where} ({path}); `glocal routes MODEL` measures a model's",
                      soft_wrap=True)  # fmt: skip
        return
    console.print(_table(f"CPU backend routes: {where}", routes))
    taken = collections.Counter(key.split(":", 1)[0] for key, route in routes.items() if route != "default")
    total = collections.Counter(key.split(":", 1)[0] for key in routes)
    summary = ", ".join(f"{kind} {taken[kind]}/{n}" for kind, n in sorted(total.items()))
    console.print(f"{len(routes)} shape classes; taking a route other than torch's default: {summary}", soft_wrap=True)
    console.print(f"cached in {path}", soft_wrap=True)
