"""Speed, memory and complexity of models, and how they grow with resolution.

:func:`bench_model` builds one registered model at one input size and returns a :class:`BenchRecord`: parameters,
GMACs (multiply-accumulates per image, attention included, see :mod:`glocal.analysis.complexity`), latency of a
batch (median of repeated runs after warm-up, with the interquartile range as the spread), throughput, peak memory
and the achieved multiply rate as a fraction of this machine's measured matmul peak. ``mode='train'`` times a whole
training step (forward, cross-entropy, backward, SGD update) instead of an inference forward.

:func:`fit_scaling` fits, per model, the exponent ``a`` of ``y ~ tokens^a`` for time, GMACs and memory over several
resolutions (tokens = H * W / 16^2; the exponent does not depend on that constant); :func:`plot_scaling` draws every
model on one figure.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated``; on CPU the growth of the process's resident set
(peak during the timed runs minus the resident set before them, after returning freed heap to the system), which
counts activations, workspaces and, in training, gradients and optimiser state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from glocal.analysis.complexity import count_macs, count_params, count_train_macs
from glocal.backends import cpu as cpu_backend
from glocal.factory import create_model
from glocal.optimize import optimize_for_inference
from glocal.runtime import release_freed_memory

__all__ = ["BenchRecord", "bench_model", "fit_scaling", "matmul_peak_tflops", "plot_scaling"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class BenchRecord:
    """One model at one input size; times are per batch, rates per second, memory in MiB."""

    model: str
    img_size: int
    batch_size: int
    mode: str  # 'infer' | 'train'
    dtype: str  # 'fp32' | 'bf16'
    device: str
    threads: int
    optimized: str  # inference only: '' (eager), 'optimize' (BN folded, channels-last) or 'freeze' (+ TorchScript)
    compiled: bool  # run through torch.compile (inductor); its compilation happens in the warm-up
    params: int
    gmacs: float  # inference forward, per image
    step_gmacs: float  # what one timed iteration computes, per image: the forward, or forward + backward
    tokens: int  # H * W / 16^2
    runs: int
    latency_ms: float  # median over runs
    latency_iqr_ms: float  # interquartile range over runs
    img_per_s: float
    mem_mib: float
    tflops: float  # achieved: 2 * step MACs * batch / latency
    peak_tflops: float  # measured matmul peak for this device, dtype and thread count
    peak_fraction: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def matmul_peak_tflops(device: str = "cpu", dtype: str = "fp32", sizes: tuple[int, ...] = (1024, 2048)) -> float:
    """The best rate of a square matrix product at torch's current thread count, in TFLOP/s (2 FLOPs per MAC): best
    of 5 runs of each kernel at each of ``sizes``. On CPU the kernels are ``torch.mm``, oneDNN's GEMM
    (:func:`glocal.backends.cpu.onednn_gemm`; MKL's float32 sgemm can run at half of what the machine does: AMD Zen
    5) and oneDNN's GEMM on a weight packed ahead for it (as frozen and compiled inference hold it; bfloat16 on AMX
    spends a good part of a plain call repacking the weight), so that the peak is the machine's, not one kernel's.

    :func:`bench_model` measures it right after each model's timed runs, so both see the same load."""
    return max(_square_product_rate(device, DTYPES[dtype], size) for size in sizes)


def _square_product_rate(device: str, dtype: torch.dtype, size: int) -> float:
    """TFLOP/s of the fastest kernel of :func:`matmul_peak_tflops` at one size."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    fns = [lambda: a @ b]
    if device == "cpu" and cpu_backend._ONEDNN:
        packed = torch.ops.mkldnn._reorder_linear_weight(b, size)
        fns += [lambda: cpu_backend.onednn_gemm(a, b), lambda: cpu_backend.onednn_gemm(a, packed)]
    seconds = min(min(_time_runs(fn, device, warmup=1, runs=5)) for fn in fns)
    return 2 * size**3 / seconds / 1e12


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_runs(fn: Callable[[], object], device: str, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _rss_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM); None where there is no procfs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_heap() -> None:
    """Collect garbage and hand freed heap back to the system, so the resident set measures live memory."""
    gc.collect()
    release_freed_memory()


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _memory_meter(device: str):
    """Yields a dict whose ``mib`` is the peak memory growth of the block, filled on exit."""
    result = {"mib": float("nan")}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield result
        torch.cuda.synchronize()
        result["mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return
    _release_heap()
    base = _rss_kib("VmRSS")
    resettable = _reset_rss_peak()
    yield result
    peak = _rss_kib("VmHWM")
    if base is not None and peak is not None and resettable:
        result["mib"] = (peak - base) / 1024


def _build(name: str, img_size: int, device: str) -> torch.nn.Module:
    """The model built for ``img_size`` (a config field of every family), on the CPU backend when on CPU."""
    model = create_model(name, img_size=img_size).to(device)
    return cpu_backend.use_by_default(model) if device == "cpu" else model


def _count(name: str, img_size: int, mode: str) -> tuple[int, int, int]:
    """(params, forward MACs, step MACs) per image, counted on the meta device."""
    with torch.device("meta"):
        model = _build(name, img_size, "meta")
    size = (model.in_chans, img_size, img_size)
    forward = count_macs(model, size)
    step = count_train_macs(model, size) if mode == "train" else forward
    return count_params(model), forward, step


def bench_model(
    name: str,
    img_size: int = 224,
    *,
    batch_size: int = 8,
    mode: str = "infer",
    dtype: str = "fp32",
    device: str = "cpu",
    optimize: bool = False,
    freeze: bool = False,
    compile: bool = False,
    warmup: int = 2,
    runs: int = 10,
) -> BenchRecord:
    """Measure one registered model at ``img_size`` x ``img_size``; see the module docstring for each figure.

    ``dtype='bf16'`` runs under autocast (weights stay float32), except with ``optimize``, which casts weights and
    input to bfloat16. ``optimize`` applies :func:`glocal.optimize.optimize_for_inference` (inference only);
    ``freeze`` implies it and also freezes the model to TorchScript for this input shape. ``compile`` runs the
    model through ``torch.compile`` (inductor; the CPU backend's routes step aside inside compiled graphs), compiling
    during the warm-up; in inference with inductor's ``freezing`` (weights folded in as constants and prepacked).
    """
    optimize = optimize or freeze
    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if optimize and mode == "train":
        raise ValueError("optimize applies to inference only (BN folding freezes the statistics)")
    if compile and freeze:
        raise ValueError("compile and freeze are two ways of building a graph; choose one")
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    params, macs, step_macs = _count(name, img_size, mode)
    torch.manual_seed(0)
    model = _build(name, img_size, device)
    x = torch.randn(batch_size, model.in_chans, img_size, img_size, device=device)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bf16" and not optimize)
    if mode == "infer":
        model.eval()
        if optimize:
            x_opt = x.to(memory_format=torch.channels_last, dtype=DTYPES[dtype])
            model = optimize_for_inference(model, example=x, dtype=DTYPES[dtype], freeze=freeze, inplace=True)
            x = x_opt
    if compile:  # inference: inductor's freezing folds the weights in as constants, prepacked for oneDNN
        model = torch.compile(model, options={"freezing": True} if mode == "infer" else None)
    if mode == "infer":

        def step() -> None:
            with torch.inference_mode(), autocast:
                model(x)

    else:
        model.train()
        target = torch.randint(0, max(model.num_classes, 1), (batch_size,), device=device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(model(x).float(), target)
            loss.backward()
            optimizer.step()

    with _memory_meter(device) as mem:
        times = _time_runs(step, device, warmup, runs)
    latency = statistics.median(times)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [latency] * 3
    threads = torch.get_num_threads()
    tflops = 2 * step_macs * batch_size / latency / 1e12
    peak = matmul_peak_tflops(device, dtype)
    return BenchRecord(
        model=name,
        img_size=img_size,
        batch_size=batch_size,
        mode=mode,
        dtype=dtype,
        device=device,
        threads=threads,
        optimized="freeze" if freeze else "optimize" if optimize else "",
        compiled=compile,
        params=params,
        gmacs=macs / 1e9,
        step_gmacs=step_macs / 1e9,
        tokens=img_size * img_size // 256,
        runs=runs,
        latency_ms=latency * 1e3,
        latency_iqr_ms=(quartiles[2] - quartiles[0]) * 1e3,
        img_per_s=batch_size / latency,
        mem_mib=mem["mib"],
        tflops=tflops,
        peak_tflops=peak,
        peak_fraction=tflops / peak,
    )


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x; NaN with fewer than two usable points."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(points) < 2:
        return float("nan")
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return float("nan")
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx


def fit_scaling(records: list[BenchRecord]) -> dict[str, dict[str, float]]:
    """Per model: the exponents of latency, GMACs and memory in the number of tokens, and their growth (largest size
    over smallest) across the measured sizes."""
    out = {}
    for name in dict.fromkeys(r.model for r in records):
        rows = sorted((r for r in records if r.model == name), key=lambda r: r.tokens)
        tokens = [r.tokens for r in rows]
        first, last = rows[0], rows[-1]
        out[name] = {
            "time_exponent": _slope(tokens, [r.latency_ms for r in rows]),
            "gmacs_exponent": _slope(tokens, [r.gmacs for r in rows]),
            "mem_exponent": _slope(tokens, [r.mem_mib for r in rows]),
            "time_growth": last.latency_ms / first.latency_ms,
            "gmacs_growth": last.gmacs / first.gmacs,
            "mem_growth": last.mem_mib / first.mem_mib if first.mem_mib > 0 else float("nan"),
        }
    return out


def plot_scaling(records: list[BenchRecord], path: str | Path) -> Path:
    """One PNG with three log-log panels (latency per image, GMACs, memory against tokens), a line per model with
    its fitted exponent in the legend. matplotlib is imported here, so that importing glocal stays light."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exponents = fit_scaling(records)
    panels = (
        ("latency_ms", "time_exponent", "latency per image (ms)", True),
        ("gmacs", "gmacs_exponent", "GMACs per image", False),
        ("mem_mib", "mem_exponent", "peak memory growth (MiB)", False),
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, (field, exponent, label, per_image) in zip(axes, panels, strict=True):
        for name, fits in exponents.items():
            rows = sorted((r for r in records if r.model == name), key=lambda r: r.tokens)
            ys = [getattr(r, field) / (r.batch_size if per_image else 1) for r in rows]
            ax.plot([r.tokens for r in rows], ys, marker="o", label=f"{name} (N^{fits[exponent]:.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N = H W / 16^2")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    first = records[0]
    fig.suptitle(f"glocal bench: {first.mode}, {first.dtype}, batch {first.batch_size}, {first.device}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
