"""float32 linear layers on CPU: torch's kernels (MKL's sgemm) against the CPU backend's oneDNN products, for the
forward product, the same on a weight packed once (a frozen inference model's, :func:`glocal.backends.cpu.
freeze_weights`) and the backward products (the backend routes the forward and the backward of each shape class
separately, each only where its calibration measured oneDNN faster).

The shapes are the linear layers of the transformers at batch 8 and 224 px (rows = batch x tokens): ViT-S/16's
qkv, fc1 and fc2, Twins-SVT-S's first-stage fc1 and VOLO-D1's outlooker value projection. Prints ms per call and
GFLOP/s of each, and the speed-up (medians of repeated calls after a warm-up call).

    python benchmarks/linear.py --threads 2 --repeats 15

Like the ``glocal`` command, it keeps freed memory for reuse (``glocal.runtime``) unless ``--system-malloc``: the
backward's transposed copies are megabytes each, and with glibc's defaults every one of them is mapped and
page-faulted afresh, which makes both paths slower and the comparison noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from glocal.backends import cpu
from glocal.runtime import keep_freed_memory

SHAPES = {  # name: (rows, in, out)
    "vit_s qkv": (8 * 197, 384, 1152),
    "vit_s fc1": (8 * 197, 384, 1536),
    "vit_s fc2": (8 * 197, 1536, 384),
    "twins_s stage1 fc1": (8 * 3136, 64, 256),
    "volo_d1 outlook v": (8 * 784, 192, 192),
}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _passes(rows: int, k: int, n: int) -> dict[str, tuple]:
    """label -> (torch's call, glocal's call, FLOPs of one call) for a (rows, k) x (n, k)^T product."""
    x, w, b, g = torch.randn(rows, k), torch.randn(n, k), torch.randn(n), torch.randn(rows, n)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, cpu.MIN_ROWS)
    return {
        "forward": (lambda: F.linear(x, w, b), lambda: cpu.onednn_gemm(x, w, b), 2 * rows * k * n),
        "packed": (lambda: F.linear(x, w, b), lambda: cpu.onednn_gemm(x, packed, b), 2 * rows * k * n),
        "backward": (
            lambda: cpu._backward_products(g, x, w, onednn=False),
            lambda: cpu._backward_products(g, x, w, onednn=True),
            4 * rows * k * n,
        ),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--system-malloc", action="store_true", help="do not keep freed memory (the glocal command does)")
    args = p.parse_args()
    if not args.system_malloc:
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not cpu._ONEDNN:
        print("this torch build has no oneDNN linear kernel: the CPU backend keeps F.linear", file=sys.stderr)
        return 1
    malloc = "system malloc" if args.system_malloc else "freed memory kept"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, median of {args.repeats}, {malloc}")
    print(f"{'layer':20s} {'pass':9s} {'torch ms':>12s} {'glocal ms':>10s} {'GFLOP/s':>15s} {'speed-up':>8s}")
    for name, (rows, k, n) in SHAPES.items():
        for label, (reference, ours, flops) in _passes(rows, k, n).items():
            for fn in (reference, ours):
                fn()  # warm-up
            t_ref = timed(reference, args.repeats)
            t_ours = timed(ours, args.repeats)
            rates = f"{flops / t_ref / 1e9:.0f} / {flops / t_ours / 1e9:.0f}"
            print(f"{name:20s} {label:9s} {1e3 * t_ref:12.2f} {1e3 * t_ours:10.2f} {rates:>15s} {t_ref / t_ours:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
