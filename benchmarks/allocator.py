"""What ``glocal.runtime.keep_freed_memory`` (applied by the ``glocal`` command) does to img/s, glocal and peers alike.

The allocator setting is process-wide and can only be applied once, so every measurement runs in a fresh child
process: for each model, mode and round, one child per (implementation, setting), in alternating order. Each child
builds its model, runs ``--warmup`` steps, times ``--steps`` and prints img/s and its peak resident set. The table
gives the medians over rounds and the ratio tuned / system for each implementation.

    python benchmarks/allocator.py resnet50 twins_svt_small volo_d1_224 vit_small_patch16_224 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_peers  # noqa: E402 (a sibling script, imported from its folder)

from glocal.runtime import keep_freed_memory  # noqa: E402

SETTINGS = ("system", "tuned")


def child(args: argparse.Namespace) -> None:
    """Measure one (model, mode, implementation, setting) and print one JSON line."""
    if args.setting == "tuned":
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    name = args.models[0]
    if args.impl == "glocal":
        model = compare_peers.build_glocal(name, args.img_size)
    else:
        peers = compare_peers.build_peers(name, args.img_size, compare_peers.import_timm(), {})
        model = peers[args.impl]
    step = compare_peers.make_step(model, x, args.mode, torch.float32)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"img_s": args.batch_size / statistics.median(times), "rss_mib": rss_mib}))


def run_child(args: argparse.Namespace, model: str, mode: str, impl: str, setting: str) -> dict:
    cmd = [sys.executable, __file__, model, "--child", "--mode", mode, "--impl", impl, "--setting", setting]
    cmd += ["--img-size", str(args.img_size), "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup)] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer", "train"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-peers", action="store_true", help="measure glocal only")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("infer", "train"), help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--setting", choices=SETTINGS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    timm = None if args.no_peers else compare_peers.import_timm()
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, {args.img_size}px, fp32, "
          f"{args.rounds} rounds x {args.steps} steps, one process per measurement")  # fmt: skip
    header = ("model", "mode", "implementation", "system", "tuned", "ratio", "RSS MiB system/tuned")
    print("{:24s} {:5s} {:28s} {:>8s} {:>8s} {:>6s} {}".format(*header))
    for model in args.models:
        impls = ["glocal"]
        if timm is not None and model in compare_peers.TIMM_NAMES:
            impls.append(f"timm:{compare_peers.TIMM_NAMES[model]}")
        for mode in args.modes:
            results = {(i, s): [] for i in impls for s in SETTINGS}
            for r in range(args.rounds):
                order = [(i, s) for i in impls for s in (SETTINGS if r % 2 == 0 else SETTINGS[::-1])]
                for impl, setting in order:
                    results[impl, setting].append(run_child(args, model, mode, impl, setting))
            for impl in impls:
                rate = {s: statistics.median(r["img_s"] for r in results[impl, s]) for s in SETTINGS}
                rss = {s: max(r["rss_mib"] for r in results[impl, s]) for s in SETTINGS}
                ratio = rate["tuned"] / rate["system"]
                print(f"{model:24s} {mode:5s} {impl:28s} {rate['system']:8.2f} {rate['tuned']:8.2f} {ratio:6.2f} "
                      f"{rss['system']:.0f}/{rss['tuned']:.0f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
