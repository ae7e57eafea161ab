"""glocal side by side with timm and the official implementations: img/s of inference and of a training step.

One process, one input tensor, the same thread count; the implementations are timed in interleaved rounds (glocal,
peer, glocal, peer, ...) so that load from other processes hits them alike, and the median of each is reported with
the ratio glocal / fastest peer. Peers are imported only when available; see benchmarks/README.md for the peer
environment (timm needs torchvision's native ops disabled on these machines).

    python benchmarks/compare_peers.py resnet50 twins_svt_small volo_d1_224 vit_small_patch16_224 \
        --img-size 224 --batch-size 8 --modes infer train --rounds 7
    python benchmarks/compare_peers.py twins_svt_small --official twins=/tmp/official/Twins
    python benchmarks/compare_peers.py vit_small_patch16_224 --modes infer --no-optimize --compile
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import glocal
from glocal.backends import cpu as cpu_backend
from glocal.optimize import optimize_for_inference
from glocal.runtime import keep_freed_memory

# glocal name -> timm name of the same architecture (same layout, same parameter count).
TIMM_NAMES = {
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "seresnet50": "legacy_seresnet50",
    "seresnet101": "legacy_seresnet101",
    **{f"twins_{k}_{s}": f"twins_{k}_{s}" for k in ("pcpvt", "svt") for s in ("small", "base", "large")},
    **{f"volo_d{i}_224": f"volo_d{i}_224" for i in range(1, 6)},
    **{f"vit_{s}_patch16_224": f"vit_{s}_patch16_224" for s in ("tiny", "small", "base", "large")},
}

# Peers that torch.compile cannot run here: timm 1.0.31's volo_d1_224 compiled by inductor (CPU, torch 2.13.0)
# corrupts the heap and glibc aborts the process ("corrupted size vs. prev_size"), with or without freezing and with
# either malloc setting; glocal's VOLO compiles and runs. The other VOLO sizes share its outlook code.
COMPILE_CRASHES = {f"timm:volo_d{i}_224" for i in range(1, 6)}

# glocal family -> (module file inside the official repository, its constructor of each glocal variant).
OFFICIAL = {
    "twins": ("gvt.py", lambda n: {"pcpvt": "pcpvt", "svt": "alt_gvt"}[n.split("_")[1]] + "_" + n.split("_")[2]
              + ("_v0" if "pcpvt" in n else "")),
    "volo": ("models/volo.py", lambda n: n.rsplit("_", 1)[0]),
    "t2t_vit": ("models/t2t_vit.py", lambda n: n),
}  # fmt: skip


def disable_torchvision_native_ops() -> None:
    """Let torchvision import without its C++ ops (a wheel built for another torch cannot load them).

    torchvision registers fake kernels for ``torchvision::nms``/``qnms`` at import time, which fails when its ``_C``
    library did not load; declaring the two schemas first makes the import succeed. Models never call these ops.
    """
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
        return
    lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 (kept alive below)
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    disable_torchvision_native_ops.library = lib


def import_timm():
    try:
        disable_torchvision_native_ops()
        import timm
    except Exception as err:  # noqa: BLE001 (any import failure means: no timm peer)
        print(f"timm not available ({type(err).__name__}: {err}); comparing without it", file=sys.stderr)
        return None
    return timm


def load_official(family: str, repo: Path):
    """The official model module of ``family`` from a checkout at ``repo``, or None (with the reason) if it fails."""
    rel, _ = OFFICIAL[family]
    path = repo / rel
    sys.path.insert(0, str(repo))
    try:
        spec = importlib.util.spec_from_file_location(f"official_{family}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # timm's register_model looks its caller's module up there
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 (official code pins old timm APIs; report and go on)
        print(f"official {family} from {path} did not import ({type(err).__name__}: {err})", file=sys.stderr)
        return None
    finally:
        sys.path.remove(str(repo))
    return module


def build_glocal(name: str, img_size: int, backend: bool) -> torch.nn.Module:
    """The glocal model built for ``img_size``, on its CPU backend (routes chosen by measurement) unless ``backend``
    is False; the malloc setting is left to ``--keep-freed-memory`` (it applies to the peers too)."""
    model = glocal.create_model(name, img_size=img_size)
    return cpu_backend.enable(model, malloc=False) if backend else model


def build_peers(name: str, img_size: int, timm, official: dict[str, Path]) -> dict[str, torch.nn.Module]:
    peers = {}
    timm_name = TIMM_NAMES.get(name)
    if timm is not None and timm_name is not None:
        kwargs = {} if timm_name.startswith(("resnet", "legacy")) else {"img_size": img_size}
        try:
            peers[f"timm:{timm_name}"] = timm.create_model(timm_name, **kwargs)
        except Exception as err:  # noqa: BLE001 (an older timm may lack the model or the argument)
            print(f"timm {timm_name} could not be built ({type(err).__name__}: {err})", file=sys.stderr)
    family = glocal.registry.get_entry(name).family
    if family in official:
        module = load_official(family, official[family])
        if module is not None:
            ctor = OFFICIAL[family][1](name)
            # Official VOLO mixes tokens in training by default (an augmentation, and it calls the removed np.int).
            kwargs = {"twins": {}, "volo": {"img_size": img_size, "mix_token": False}}.get(
                family, {"img_size": img_size}
            )
            try:
                peers[f"official:{ctor}"] = getattr(module, ctor)(**kwargs)
            except Exception as err:  # noqa: BLE001 (old timm call signatures; report and go on)
                print(f"official {ctor} could not be built ({type(err).__name__}: {err})", file=sys.stderr)
    return peers


def make_step(model: torch.nn.Module, x: torch.Tensor, mode: str, dtype: torch.dtype) -> Callable[[], None]:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast:
                model(x)

        return infer
    model.train()
    target = torch.randint(0, 1000, (x.shape[0],))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(x)
        out = out[0] if isinstance(out, tuple) else out  # official VOLO may return token-label outputs too
        F.cross_entropy(out.float(), target).backward()
        optimizer.step()

    return train


def interleaved(steps: dict[str, Callable[[], None]], warmup: int, rounds: int) -> dict[str, list[float]]:
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, step in steps.items():
            start = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - start)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer", "train"])
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-optimize", action="store_true", help="skip the optimized glocal inference variant")
    p.add_argument("--official", nargs="*", default=[], metavar="FAMILY=DIR", help="official checkouts to compare")
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="apply glocal.runtime.keep_freed_memory (what the glocal command does) to the whole process, peers too",
    )
    p.add_argument("--standard-path", action="store_true", help="glocal without its CPU backend (torch's defaults)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time glocal and every peer through torch.compile (inductor; inference: with freezing), next to "
        "their eager runs",
    )
    args = p.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    official = {k: Path(v) for k, v in (item.split("=", 1) for item in args.official)}
    timm = import_timm()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, timm {getattr(timm, '__version__', '-')}, "
          f"batch {args.batch_size}, {args.img_size}px, {args.dtype}, {args.rounds} rounds, "
          f"{'freed memory kept' if args.keep_freed_memory else 'system malloc'}, "
          f"glocal {'standard path' if args.standard_path else 'CPU backend'}, {cpu_backend.cpu_model()}")  # fmt: skip
    print(f"{'model':24s} {'mode':5s} {'implementation':32s} {'img/s':>8s} {'IQR%':>6s} {'ratio':>6s}")
    for name in args.models:
        torch.manual_seed(0)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        peers = build_peers(name, args.img_size, timm, official)
        for mode in args.modes:
            models = {"glocal": build_glocal(name, args.img_size, not args.standard_path)}
            inputs = {"glocal": x}
            if mode == "infer" and not args.no_optimize:
                eager = models["glocal"].eval()
                for label, freeze in (("glocal optimized", False), ("glocal frozen", True)):
                    models[label] = optimize_for_inference(eager, example=x, dtype=dtype, freeze=freeze)
                    inputs[label] = x.to(memory_format=torch.channels_last, dtype=dtype)
            models.update(peers)
            if args.compile:  # compiled during the warm-up; the CPU backend's routes step aside inside graphs
                options = {"freezing": True} if mode == "infer" else None  # weights as prepacked constants
                for k in ("glocal", *peers):
                    if k in COMPILE_CRASHES:
                        print(f"{k} is not compiled: inductor's code for it corrupts the heap", file=sys.stderr)
                    else:
                        models[f"{k} compiled"] = torch.compile(models[k], options=options)
            # Optimized models run in their own dtype; the others under autocast when --dtype bf16.
            steps = {k: make_step(m, inputs.get(k, x), mode, None if k in inputs and k != "glocal" else dtype)
                     for k, m in models.items()}  # fmt: skip
            times = interleaved(steps, args.warmup, args.rounds)
            rate = {k: args.batch_size / statistics.median(t) for k, t in times.items()}
            # Compiled glocal against the fastest compiled peer, eager against the fastest eager one.
            peer_rates = [(k.endswith(" compiled"), r) for k, r in rate.items() if not k.startswith("glocal")]
            best_peer = {c: max((r for compiled, r in peer_rates if compiled == c), default=0) for c in (False, True)}
            for k, t in times.items():
                q = statistics.quantiles(t, n=4) if len(t) > 1 else [t[0]] * 3
                iqr = 100 * (q[2] - q[0]) / statistics.median(t)
                peer = best_peer[k.endswith(" compiled")]
                ratio = f"{rate[k] / peer:6.2f}" if peer and k.startswith("glocal") else ""
                print(f"{name:24s} {mode:5s} {k:32s} {rate[k]:8.2f} {iqr:6.1f} {ratio:>6s}", flush=True)
            if not peers:
                print(f"{name:24s} {mode:5s} (no peer available)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
