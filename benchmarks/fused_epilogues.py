"""The CPU backend's fused epilogue routes alone: one glocal model with them and with them off, and timm, in one
process.

Both glocal variants run on the CPU backend with the same calibrated linear routes; the "unfused" one has
``glocal.backends.cpu.fusable`` answer False, so its MLPs call ``fc1``, GELU, ``fc2`` and the residual addition one
by one. Interleaved rounds, median img/s, inference.

    PYTHONPATH=src:/tmp/peers_pkgs python benchmarks/fused_epilogues.py vit_small_patch16_224 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import glocal
from glocal.backends import cpu as cpu_backend

sys.path.insert(0, str(Path(__file__).parent))
from compare_peers import TIMM_NAMES, import_timm  # noqa: E402 (a sibling script)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    model = cpu_backend.enable(glocal.create_model(args.model, img_size=args.img_size), malloc=False).eval()
    fusable = cpu_backend.fusable

    def glocal_step(fused: bool):
        def step() -> None:
            cpu_backend.fusable = fusable if fused else (lambda *modules: False)
            try:
                model(x)
            finally:
                cpu_backend.fusable = fusable

        return step

    steps = {"glocal fused": glocal_step(True), "glocal unfused": glocal_step(False)}
    timm = import_timm()
    if timm is not None and args.model in TIMM_NAMES:
        peer = timm.create_model(TIMM_NAMES[args.model], img_size=args.img_size).eval()
        steps["timm"] = lambda: peer(x)
    times = {k: [] for k in steps}
    with torch.inference_mode():
        for step in steps.values():  # warm-up: calibration, allocator
            step()
            step()
        for _ in range(args.rounds):
            for k, step in steps.items():
                start = time.perf_counter()
                step()
                times[k].append(time.perf_counter() - start)
    print(f"{args.model} b{args.batch_size}@{args.img_size}, {args.threads} threads, {cpu_backend.cpu_model()}")
    median = {k: statistics.median(t) for k, t in times.items()}
    for k, t in times.items():
        q = statistics.quantiles(t, n=4)
        peer = f"  x{median['timm'] / median[k]:.3f} timm" if "timm" in median else ""
        print(f"{k:16s} {args.batch_size / median[k]:8.2f} img/s  IQR {100 * (q[2] - q[0]) / median[k]:5.1f}%  "
              f"x{median['glocal unfused'] / median[k]:.3f} unfused{peer}")  # fmt: skip
    fused = {k: v for k, v in cpu_backend.route_state().items() if k.startswith(("linear_gelu", "linear_add"))}
    print("fused routes:", fused)
    return 0


if __name__ == "__main__":
    sys.exit(main())
