"""Where an optimized model's inference time goes, module by module: time, MACs and rate of the matmul peak.

Times the outermost calls of the modules of the given classes (default: the transformer parts of every family:
token mixers, MLPs, LayerNorms, patch embeddings, PEGs, stems) during whole forwards of
``optimize_for_inference(model)`` on the CPU backend, grouped by class (and with ``--stages`` by stage, the first
number in the module's name), and prints each group's milliseconds per forward, share of the forward, MACs (counted
on the standard path, ``glocal.analysis.complexity.module_macs``) and rate as a fraction of the measured matmul peak.
The modules' own ``forward`` is wrapped, not hooked, so the backend's fused routes (which a hook on an MLP turns
off) stay on.

    PYTHONPATH=src python benchmarks/module_share.py twins_svt_small volo_d1_224 --dtype fp32 bf16 --stages
"""

from __future__ import annotations

import argparse
import collections
import functools
import re
import sys
import time
from pathlib import Path

import torch

import glocal
from glocal.analysis.bench import matmul_peak_tflops
from glocal.analysis.complexity import module_macs
from glocal.backends import cpu as cpu_backend

sys.path.insert(0, str(Path(__file__).parent))
from product_share import timed_forward  # noqa: E402 (a sibling script)

CLASSES = (
    "MultiHeadAttention",
    "LocallyGroupedAttention",
    "GlobalSubsampledAttention",
    "OutlookAttention",
    "ClassAttention",
    "Mlp",
    "LayerNorm",
    "PatchEmbed",
    "PosConv",
    "ConvStem",
)


def group(name: str, module: torch.nn.Module, stages: bool) -> str:
    """``Class``, or with ``stages`` ``Class:stage``, the stage being the first number in the dotted name (Twins'
    ``blocks.2.3.attn`` and ``patch_embeds.2``, VOLO's ``network.2.1.mlp``; ViT's ``blocks.5`` is its sixth block)."""
    stage = re.search(r"\.(\d+)", "." + name) if stages else None
    return type(module).__name__ + (f":{stage.group(1)}" if stage else "")


def timed_modules(
    model: torch.nn.Module, classes: tuple[str, ...], spent: collections.Counter, stages: bool
) -> dict[str, str]:
    """Wrap the ``forward`` of every module of ``classes`` so that its outermost calls add their seconds to
    ``spent[group]``; returns module name -> group."""
    depth = [0]
    groups = {}
    for name, module in model.named_modules():
        if type(module).__name__ not in classes:
            continue
        key = groups[name] = group(name, module, stages)

        def timed(*args, _forward=module.forward, _key=key, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return _forward(*args, **kwargs)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    spent[_key] += time.perf_counter() - start

        module.forward = timed
    return groups


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--dtype", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    p.add_argument("--classes", nargs="+", default=list(CLASSES), help="module class names to time")
    p.add_argument("--stages", action="store_true", help="one row per class and stage")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu_backend.enable()
    print(f"b{args.batch_size}@{args.img_size}, {args.threads} threads, {cpu_backend.cpu_model()}")
    for name in args.models:
        macs = module_macs(glocal.create_model(name, img_size=args.img_size).eval(), (3, args.img_size, args.img_size))
        for dtype in args.dtype:
            spent: collections.Counter = collections.Counter()
            wrap = functools.partial(timed_modules, classes=tuple(args.classes), spent=spent, stages=args.stages)
            groups, forward = timed_forward(name, dtype, args.batch_size, args.img_size, args.runs, spent, wrap)
            peak = matmul_peak_tflops("cpu", dtype) * 1e12
            group_macs: collections.Counter = collections.Counter()
            for module_name, key in groups.items():
                if not any(module_name.startswith(outer + ".") for outer in groups):  # outermost modules only
                    group_macs[key] += macs.get(module_name, 0) * args.batch_size
            rate = 2 * macs[""] * args.batch_size / forward / peak
            print(f"\n{name} {dtype}: forward {1e3 * forward:.1f} ms, {rate:.0%} of the peak")
            print(f"  {'module:stage':32s} {'ms':>8s} {'share':>6s} {'GMACs':>7s} {'of peak':>8s}")
            for key, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
                t = seconds / args.runs
                rate = f"{2 * group_macs[key] / t / peak:8.0%}" if group_macs[key] else f"{'':8s}"
                print(f"  {key:32s} {1e3 * t:8.2f} {t / forward:6.1%} {group_macs[key] / 1e9:7.2f} {rate}")
            rest = forward - sum(spent.values()) / args.runs
            rest_macs = macs[""] * args.batch_size - sum(group_macs.values())
            print(f"  {'(everything else)':32s} {1e3 * rest:8.2f} {rest / forward:6.1%} {rest_macs / 1e9:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
