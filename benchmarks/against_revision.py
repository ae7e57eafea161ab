"""Before/after: this tree's Twins and VOLO blocks and models against a git revision's, interleaved in one process.

The family files (``models/twins.py``, ``models/volo.py``) and the shared attention core (``layers/attention.py``)
of ``--rev`` are loaded from git under private module names, next to this tree's; every other module is shared. Each
case builds the new module, copies its state dict into the old one (the layouts are the same), checks that outputs
and input gradients agree to float32 rounding, then times inference (no grad) and a training step (forward +
backward of the sum), old and new alternating repeat by repeat so that load from other processes hits both alike.
It prints the median times and the ratio old / new (> 1: the new code is faster).

    python benchmarks/against_revision.py [--rev main] [--batch 8] [--repeats 10] [--threads 2] [--cases twins,volo]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import glocal
from glocal import registry

ROOT = Path(__file__).resolve().parent.parent


def _load_revision(rev: str) -> dict[str, object]:
    """``rev``'s attention core and family modules, importable next to this tree's, with registration disabled."""
    modules = {}
    register = registry.register_model
    registry.register_model = lambda *a, **k: lambda fn: fn  # the old family file must not re-register names
    try:
        for name, path in (
            ("attention", "src/glocal/layers/attention.py"),
            ("twins", "src/glocal/models/twins.py"),
            ("volo", "src/glocal/models/volo.py"),
        ):
            source = subprocess.run(
                ["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
            if name != "attention":  # the old families use the old attention core
                source = source.replace("from glocal.layers.attention import", "from _rev_attention import")
            spec = importlib.util.spec_from_loader(f"_rev_{name}", loader=None)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
            modules[name] = module
    finally:
        registry.register_model = register
    return modules


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def _compare(label: str, old, new, inputs, repeats: int, warmup: int = 2) -> None:
    """Check agreement, then time old and new interleaved: inference and a training step."""
    old.load_state_dict(new.state_dict())
    x = inputs[0]
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [m(xi, *inputs[1:]) for m, xi in zip((old, new), xs, strict=True)]
    for out in outs:
        out.sum().backward()
    out_err = (outs[0] - outs[1]).abs().max().item()
    grad_err = (xs[0].grad - xs[1].grad).abs().max().item()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-4, atol=1e-4)

    def infer(m):
        def run():
            with torch.no_grad():
                m(x, *inputs[1:])

        return run

    def train(m):
        def run():
            m(x.detach().requires_grad_(), *inputs[1:]).sum().backward()

        return run

    cells = []
    for mode, wrap in (("infer", infer), ("train", train)):
        runs = {"old": wrap(old), "new": wrap(new)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(warmup + repeats):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                if i >= warmup:
                    times[key].append(time.perf_counter() - start)
        med = {k: _median_ms(v) for k, v in times.items()}
        cells.append(f"{mode} {med['old']:8.1f} -> {med['new']:8.1f} ms ({med['old'] / med['new']:.2f}x)")
    print(f"{label:<34} {'  '.join(cells)}  max |diff| out {out_err:.1e} grad {grad_err:.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="main", help="git revision to compare against (default: main)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default="twins,volo", help="comma-separated families (default: twins,volo)")
    parser.add_argument("--no-models", action="store_true", help="blocks only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rev = _load_revision(args.rev)
    families = args.cases.split(",")
    B = args.batch
    print(
        f"{args.rev} -> this tree, batch {B}, float32, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"CPU {glocal.backends.cpu.cpu_model()}; median of {args.repeats}, old/new > 1: new is faster"
    )
    torch.manual_seed(0)
    new_twins, new_volo = sys.modules["glocal.models.twins"], sys.modules["glocal.models.volo"]
    if "twins" in families:
        for side, dim, heads in ((56, 64, 2), (28, 128, 4), (14, 256, 8), (7, 512, 16)):
            inputs = (torch.randn(B, side * side, dim), (side, side))
            _compare(
                f"LSA {side}x{side}x{dim}",
                rev["twins"].LocallyGroupedAttention(dim, heads, 7),
                new_twins.LocallyGroupedAttention(dim, heads, 7),
                inputs,
                args.repeats,
            )
    if "volo" in families:
        for side, dim, heads in ((28, 192, 6), (28, 256, 8), (14, 192, 6)):
            inputs = (torch.randn(B, side, side, dim),)
            _compare(
                f"outlook {side}x{side}x{dim}",
                rev["volo"].OutlookAttention(dim, heads),
                new_volo.OutlookAttention(dim, heads),
                inputs,
                args.repeats,
            )
    if args.no_models:
        return
    names = {"twins": ("twins_svt_small", "twins_pcpvt_small"), "volo": ("volo_d1_224",)}
    for family in families:
        for name in names[family]:
            new = glocal.backends.enable(glocal.create_model(name))  # the routes glocal bench takes
            old = glocal.backends.enable(getattr(rev[family], type(new).__name__)(registry.get_entry(name).config()))
            _compare(f"{name} (backend on)", old, new, (torch.randn(B, 3, 224, 224),), args.repeats)


if __name__ == "__main__":
    main()
