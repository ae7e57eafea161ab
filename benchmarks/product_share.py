"""Where a model's inference time goes on the CPU backend: its linear products against everything else.

Times every call of the backend's linear entry points (``linear``, ``linear_gelu``, ``linear_add``; outermost calls
only) during whole forwards of ``optimize_for_inference(model)`` and prints, per model: the forward's time, the
products' time and share, the products' rate as a fraction of the measured matmul peak (their FLOPs counted on the
standard path), and how much of the time and of the MACs the rest (attention, convolutions, LayerNorm, copies) holds.
A model cannot reach a fraction of the peak above its products' own unless the rest runs faster than the products.

    PYTHONPATH=src python benchmarks/product_share.py twins_svt_small twins_pcpvt_small --dtype fp32 bf16
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import glocal
from glocal.analysis.bench import matmul_peak_tflops
from glocal.analysis.complexity import count_macs
from glocal.backends import cpu as cpu_backend
from glocal.optimize import optimize_for_inference

ENTRY_POINTS = ("linear", "linear_gelu", "linear_add")


def standard_flops(name: str, batch: int, size: int) -> tuple[float, float]:
    """(linear-product FLOPs, all FLOPs, attention included) of one forward on torch's standard path."""
    model = glocal.create_model(name).eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.randn(batch, 3, size, size))
    counts = counter.get_flop_counts()["Global"]
    products = sum(v for k, v in counts.items() if str(k) in ("aten.addmm", "aten.mm"))
    return float(products), 2.0 * batch * count_macs(model, (3, size, size))


def timed_entry_points(spent: collections.Counter):
    """Replace the backend's linear entry points by wrappers adding their outermost calls' seconds to ``spent``."""
    depth = [0]
    originals = {name: getattr(cpu_backend, name) for name in ENTRY_POINTS}

    def wrap(name, fn):
        def timed(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    spent[name] += time.perf_counter() - start

        return timed

    for name, fn in originals.items():
        setattr(cpu_backend, name, wrap(name, fn))
    return originals


def timed_forward(name: str, dtype: str, batch: int, size: int, runs: int, spent: collections.Counter, wrap=None):
    """``(wrap(model) or None, seconds per forward)`` of ``model = optimize_for_inference(name)`` on the CPU backend
    in ``dtype``, over ``runs`` forwards after two untimed ones (the first calibrates the routes); ``spent`` is
    cleared before the timed ones."""
    cast = torch.bfloat16 if dtype == "bf16" else torch.float32
    model = glocal.create_model(name, img_size=size).eval()
    model = optimize_for_inference(cpu_backend.enable(model), dtype=cast)
    wrapped = None if wrap is None else wrap(model)
    x = model.prepare_input(torch.randn(batch, 3, size, size).to(cast))
    with torch.inference_mode():
        model(x)  # calibration
        model(x)
        spent.clear()
        start = time.perf_counter()
        for _ in range(runs):
            model(x)
    return wrapped, (time.perf_counter() - start) / runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--dtype", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu_backend.enable()
    spent: collections.Counter = collections.Counter()
    originals = timed_entry_points(spent)
    print(f"b{args.batch_size}@{args.img_size}, {args.threads} threads, {cpu_backend.cpu_model()}")
    print(f"{'model':24s} {'dtype':5s} {'forward ms':>10s} {'products ms':>11s} {'share':>6s} {'of peak':>8s} "
          f"{'rest: time':>10s} {'MACs':>6s}")  # fmt: skip
    try:
        for name in args.models:
            product_flops, all_flops = standard_flops(name, args.batch_size, args.img_size)
            for dtype in args.dtype:
                _, forward = timed_forward(name, dtype, args.batch_size, args.img_size, args.runs, spent)
                products = sum(spent.values()) / args.runs
                peak = matmul_peak_tflops("cpu", dtype) * 1e12
                print(f"{name:24s} {dtype:5s} {1e3 * forward:10.1f} {1e3 * products:11.1f} "
                      f"{products / forward:6.0%} {product_flops / products / peak:8.0%} "
                      f"{1 - products / forward:10.0%} {1 - product_flops / all_flops:6.0%}", flush=True)  # fmt: skip
    finally:
        for fn_name, fn in originals.items():
            setattr(cpu_backend, fn_name, fn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
