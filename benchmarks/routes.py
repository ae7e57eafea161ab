"""One of the CPU backend's routes on and off, for one glocal model in one process (and timm next to it).

Both glocal variants run on the CPU backend with the same calibrated routes except the one under test, which the
"off" variant cannot take: ``--route fused`` has ``glocal.backends.cpu.fusable`` answer False (the MLPs call
``fc1``, GELU, ``fc2`` and the residual addition one by one); ``--route explicit`` sets ``EXPLICIT_MAX_KEYS`` and
``EXPLICIT_MAX_KEYS_TRAINING`` to -1 (every attention call runs the fused kernel, or the blocked route where that was
chosen); ``--route native_softmax`` runs the shape classes that chose ``explicit_native_softmax`` on ``explicit``
(bfloat16 inference); ``--route packed`` freezes the model's weights (:func:`glocal.backends.cpu.freeze_weights`, as
``optimize_for_inference`` does) and has the "off" variant read them unpacked; ``--route linear_forward`` runs the
linear forward products that chose oneDNN on torch's ``F.linear`` (the backward products keep their routes).
Interleaved rounds, median img/s and the ratio on / off; ``--dtype bf16`` casts the models to bfloat16 (inference).

    PYTHONPATH=src:/tmp/peers_pkgs python benchmarks/routes.py vit_small_patch16_224 --route fused --rounds 7
    PYTHONPATH=src:/tmp/peers_pkgs python benchmarks/routes.py twins_svt_small vit_small_patch16_224 \
        --route explicit --modes infer train --dtype fp32 bf16
    PYTHONPATH=src:/tmp/peers_pkgs python benchmarks/routes.py volo_d1_224 --route packed --dtype fp32 bf16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from unittest import mock

import torch

import glocal
from glocal.backends import cpu as cpu_backend

sys.path.insert(0, str(Path(__file__).parent))
from compare_peers import TIMM_NAMES, import_timm, interleaved, make_step  # noqa: E402 (a sibling script)

# --route NAME for a route chosen per shape class: (key prefix, key suffix, chosen route, what "off" runs instead).
CHOSEN = {
    "native_softmax": ("attention:", "", "explicit_native_softmax", "explicit"),
    "linear_forward": ("linear:", ":infer", "onednn", "default"),
}


@contextlib.contextmanager
def chosen_route_off(prefix: str, suffix: str, route: str, instead: str):
    """The shape classes that chose ``route`` run ``instead`` for the duration of the block (classes calibrated
    inside it are kept)."""
    flipped = {k: instead for k, v in cpu_backend._routes.items() if k.startswith(prefix) and k.endswith(suffix)
               and v == route}  # fmt: skip
    cpu_backend._routes.update(flipped)
    try:
        yield
    finally:
        cpu_backend._routes.update(dict.fromkeys(flipped, route))


def route_off(route: str):
    """The backend without ``route`` for the duration of the block."""
    if route == "fused":
        return mock.patch.object(cpu_backend, "fusable", lambda *modules: False)
    if route == "packed":
        return mock.patch.object(cpu_backend, "_packed", lambda weight: weight)
    if route in CHOSEN:
        return chosen_route_off(*CHOSEN[route])
    return mock.patch.multiple(cpu_backend, EXPLICIT_MAX_KEYS=-1, EXPLICIT_MAX_KEYS_TRAINING=-1)


def without(route: str, step):
    """``step`` run with ``route`` off."""

    def run() -> None:
        with route_off(route):
            step()

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--route", choices=("fused", "explicit", "packed", *CHOSEN), required=True)
    p.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer"])
    p.add_argument("--dtype", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    timm = import_timm()
    print(f"b{args.batch_size}@{args.img_size}, {args.threads} threads, route {args.route}, {cpu_backend.cpu_model()}")
    print(
        f"{'model':24s} {'mode':5s} {'dtype':5s} {'variant':8s} {'img/s':>8s} {'IQR%':>6s} {'on/off':>7s} {'/timm':>6s}"
    )
    for name in args.models:
        for mode in args.modes:
            for dtype in args.dtype:
                if mode == "train" and dtype == "bf16":
                    continue  # a bfloat16 cast is an inference model
                cast = torch.bfloat16 if dtype == "bf16" else torch.float32
                torch.manual_seed(0)
                x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, dtype=cast)
                model = glocal.create_model(name, img_size=args.img_size).to(cast)
                if args.route == "packed":
                    cpu_backend.freeze_weights(model)
                step = make_step(cpu_backend.enable(model, malloc=False), x, mode, None)
                steps = {"on": step, "off": without(args.route, step)}
                if timm is not None and name in TIMM_NAMES:
                    kwargs = {} if TIMM_NAMES[name].startswith(("resnet", "legacy")) else {"img_size": args.img_size}
                    steps["timm"] = make_step(timm.create_model(TIMM_NAMES[name], **kwargs).to(cast), x, mode, None)
                times = interleaved(steps, warmup=2, rounds=args.rounds)  # the warm-up calibrates
                median = {k: statistics.median(t) for k, t in times.items()}
                for k, t in times.items():
                    q = statistics.quantiles(t, n=4)
                    peer = f"{median['timm'] / median[k]:6.3f}" if "timm" in median else ""
                    print(f"{name:24s} {mode:5s} {dtype:5s} {k:8s} {args.batch_size / median[k]:8.2f} "
                          f"{100 * (q[2] - q[0]) / median[k]:6.1f} {median['off'] / median[k]:7.3f} {peer:>6s}",
                          flush=True)  # fmt: skip
    prefixes = {"fused": ("linear_gelu", "linear_add"), "packed": ("linear",), "linear_forward": ("linear:",)}
    prefix = prefixes.get(args.route, ("attention",))
    chosen = sorted(f"{k}={v}" for k, v in cpu_backend.route_state().items() if k.startswith(prefix))
    print("routes chosen:", ", ".join(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
