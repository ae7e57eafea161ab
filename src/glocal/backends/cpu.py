"""glocal's CPU backend: faster routes for float32 products and attention, taken only where they measure faster.

Off by default: a glocal model is torch's standard path (``nn.Linear``, ``scaled_dot_product_attention``, the
caller's memory layout) until :func:`enable` is called. The ``glocal`` command, the training engine and
``glocal bench`` call it; library users call ``glocal.backends.enable(model)`` once. It switches on, process-wide:

* **malloc**: glibc keeps freed memory for reuse (:func:`glocal.runtime.keep_freed_memory`; 20-35% of a ResNet-50
  training step on 2 cores is page faults of freshly mapped activations otherwise), unless ``malloc=False``.
* **denormal flushing** (``torch.set_flush_denormal``): small weights and momenta decay into denormal floats, which
  x86 CPUs process up to 100x slower.
* **channels-last input**: :meth:`glocal.models._base.Backbone.prepare_input` hands images to convolutional families
  in NHWC strides, the layout oneDNN's convolutions run 1.2-1.4x faster on.
* **routes**, for eager float32 CPU tensors (and bfloat16 ones, for attention and the fused epilogues) outside
  autocast and graph capture, each chosen per shape class by a short measurement at first use against torch's
  default (the fastest candidate, kept only if it is at least ``MARGIN`` faster):

  - ``linear``: ``F.linear`` (MKL's sgemm) or oneDNN's GEMM (``torch.ops.mkldnn._linear_pointwise``, the kernel
    ``torch.compile`` uses on CPU), chosen separately for the forward product (float32; bfloat16 in inference) and
    for the backward's two products (training): on AMD Zen 4 oneDNN's forward product ran ViT-S's layers 1.1-1.3x
    faster than MKL's and its backward products 0.8-0.9x as fast. On AMD Zen 5 MKL's float32 sgemm runs at half of
    oneDNN's; on Intel they are within 0-30% either way: hence measured, not assumed. Weights declared constant
    (:func:`freeze_weights`; :func:`glocal.optimize.optimize_for_inference` does) are packed once in oneDNN's layout.
  - ``attention``: the fused ``scaled_dot_product_attention``, or for short sequences (up to ``EXPLICIT_MAX_KEYS``
    keys; inference and training, float32 and bfloat16) the caller's explicit path (two batched products and a
    softmax; :func:`fast_attention`), or for long float32 inference the same product on oneDNN's GEMM in blocks of query
    rows (:func:`blocked_attention`).

  ``model`` given, its plain ``nn.Linear`` layers are switched to :class:`RoutedLinear` (same class for
  ``isinstance``, same parameters and state dict), whose forward is :func:`linear`: ``F.linear`` while the backend
  is off.

Route choices are cached per process and on disk per CPU model, thread count and torch version
(``$GLOCAL_CACHE_DIR``, default ``~/.cache/glocal``), so calibration runs once per machine; :func:`route_state` /
:func:`load_route_state` carry them with a training checkpoint so that a resumed run takes the same routes (the
routes differ by float32 rounding). :func:`cached_routes`, :func:`recalibrate` and :func:`clear_route_cache` (the
``glocal routes`` command) list, re-measure and forget them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import statistics
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from torch.utils.flop_counter import flop_registry, register_flop_formula
from torch.utils.weak import WeakIdKeyDictionary

from glocal.runtime import keep_freed_memory

__all__ = [
    "MARGIN",
    "RoutedLinear",
    "blocked_attention",
    "cached_routes",
    "capturing_graph",
    "clear_route_cache",
    "cpu_model",
    "disable",
    "enable",
    "fast_attention",
    "freeze_weights",
    "fusable",
    "is_enabled",
    "linear",
    "linear_add",
    "linear_gelu",
    "load_route_state",
    "onednn_gemm",
    "prepare_input",
    "recalibrate",
    "route_cache_path",
    "route_state",
    "use_by_default",
]

# A route replaces torch's default only if it is at least this much faster (relative) in the calibration.
MARGIN = 0.05
# Products with fewer rows (tokens x batch) than this stay on F.linear uncalibrated (a class token, a pooled vector).
MIN_ROWS = 64
# Attention on the blocked route: query blocks of this many rows, from this many keys and queries on.
QUERY_BLOCK = 256
MIN_KEYS = 512
# Attention on the explicit route (materialised logits): up to this many keys, where the logits are at most a few
# times the size of q; in training, which keeps the map for the backward, up to the second bound (Twins' 49-key
# windows gain 1.5-2.0x per forward + backward; ViT-S/16's 197 keys gained nothing measurable in a whole training
# step and would keep 64 x 6 x 197 x 197 floats (60 MB) more per block at batch 64).
EXPLICIT_MAX_KEYS = 256
EXPLICIT_MAX_KEYS_TRAINING = 64
# Calibration: each route timed this many times (the routes taking turns) after one warm-up, the median kept. With 3
# runs, one after the other, choices between routes 5-14% apart flipped from one process to the next on AMD Zen 4;
# the best run instead of the median hid that MKL's sgemm varies from call to call where oneDNN's does not (ViT-S's
# fc1 on Zen 4: best 10.2 vs 9.8 ms, medians 13.3 vs 11.0).
CALIBRATION_RUNS = 5

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_enabled = False
_declined = False  # disable() was called: use_by_default() leaves the backend off
_routes: dict[str, str] = {}  # shape-class key -> route name, for the thread count _routes_threads
_routes_threads: int | None = None  # None: no table taken yet
_tables: dict[int, dict[str, str]] = {}  # the tables of the other thread counts met in this process
_lock = threading.Lock()
_frozen = WeakIdKeyDictionary()  # weight -> None, or ((version, address, dtype, shape), oneDNN-packed copy)


def capturing_graph(*, size_guards: bool = True) -> bool:
    """Whether a graph is being traced, scripted, compiled or exported (which must hold standard operators).

    ``size_guards=False`` leaves out ``torch.compile`` (outside ``torch.export``): it guards the input sizes it saw and
    recompiles for others, so code that branches on a size (Twins' LSA padding, T2T-ViT's position table) may take
    its eager branch there; a trace or an export would freeze that branch into a graph meant for every size."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_exporting():
        return True
    return size_guards and torch.compiler.is_compiling()


def is_enabled() -> bool:
    return _enabled


def _onednn_linear_flop(x_shape, second, third=None, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``mkldnn._linear_pointwise(input (..., K), weight (N, K), bias, ...)`` and of its ``binary``
    overload ``(input, other, weight (N, K), ...)``: the product's, as ``addmm``."""
    weight_shape = third if third is not None and len(third) == 2 else second
    return 2 * math.prod(x_shape[:-1]) * weight_shape[1] * weight_shape[0]


def enable(model: nn.Module | None = None, *, malloc: bool = True) -> nn.Module | None:
    """Switch the CPU backend on (process-wide; see the module docstring) and, given ``model``, route its
    ``nn.Linear`` layers; returns ``model``. Idempotent."""
    global _enabled, _declined
    _declined = False
    if malloc:
        keep_freed_memory()
    if not _enabled:
        torch.set_flush_denormal(True)
        op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if _ONEDNN else None
        if op is not None and op not in flop_registry:  # FlopCounterMode counts the oneDNN routes as addmm
            register_flop_formula(op)(_onednn_linear_flop)
        _enabled = True
    _follow_threads()
    if model is not None:
        for module in model.modules():
            if type(module) is nn.Linear:
                module.__class__ = RoutedLinear
    return model


def disable() -> None:
    """Switch the routes and channels-last input off again: every glocal model takes torch's standard path, also
    those the engine and bench build later (:func:`use_by_default`). The malloc and denormal settings stay (they are
    process-wide and change no result)."""
    global _enabled, _declined
    _enabled, _declined = False, True


def use_by_default(model: nn.Module) -> nn.Module:
    """:func:`enable` for ``model``, unless :func:`disable` was called in this process (``glocal --standard-path``):
    what the training engine, inference restore and ``glocal bench`` call for CPU models."""
    if _declined:
        return model
    return enable(model)


def prepare_input(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x`` in ``memory_format`` while the backend is on (eager CPU); as given otherwise."""
    if not _enabled or capturing_graph() or x.device.type != "cpu":
        return x
    return x.contiguous(memory_format=memory_format)


def _eligible(*tensors: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the routes may take these tensors: backend on, eager CPU tensors of ``dtype``, no autocast."""
    if not _enabled or capturing_graph():  # first: reading a symbolic tensor's properties would add guards
        return False
    if torch.get_num_threads() != _routes_threads:
        _follow_threads()
    return (
        _ONEDNN
        and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
        and not torch.is_autocast_enabled("cpu")
    )


# --- route choice ------------------------------------------------------------------------------------------------


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU as ``/proc/cpuinfo`` names it, with its family, model and stepping numbers, which route choices are
    cached under: under a hypervisor AMD Zen 4 and Zen 5 both call themselves "AMD EPYC" (family 25 and 26), and
    their GEMMs differ (MKL's float32 sgemm runs at half of oneDNN's on Zen 5, on par on Zen 4)."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():  # the first processor's block is enough
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    labels = {"cpu family": "family", "model": "model", "stepping": "stepping"}
    ids = [f"{label} {fields[k]}" for k, label in labels.items() if fields.get(k)]
    return f"{name} ({', '.join(ids)})" if ids else name


def route_cache_path() -> Path:
    """The file this CPU's route choices are cached in: one per CPU model, thread count and torch version, under
    ``$GLOCAL_CACHE_DIR`` (default ``~/.cache/glocal``)."""
    root = Path(os.environ.get("GLOCAL_CACHE_DIR") or Path.home() / ".cache" / "glocal")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{cpu_model()}-{torch.get_num_threads()}t-torch{torch.__version__}")
    return root / f"cpu-routes-{slug.strip('-')}.json"


def _read_disk_cache() -> dict[str, str]:
    """The cached routes (shape-class key -> route); none for a missing or unreadable file."""
    try:
        saved = json.loads(route_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in saved.items()} if isinstance(saved, dict) else {}


def _load_disk_cache() -> None:
    saved = _read_disk_cache()
    with _lock:
        for key, route in saved.items():
            _routes.setdefault(key, route)


def _follow_threads() -> None:
    """Take the route table of the current thread count: choices are measured and cached per count (the faster
    kernel at 2 threads need not be the faster at 16), and the training engine and ``--threads`` change the count
    after the backend was switched on."""
    global _routes_threads
    threads = torch.get_num_threads()
    if threads == _routes_threads:
        return
    with _lock:
        if _routes_threads is not None:  # the first table taken is what the process holds so far
            _tables[_routes_threads] = dict(_routes)
            _routes.clear()
            _routes.update(_tables.pop(threads, {}))
        _routes_threads = threads
    _load_disk_cache()


def _save_disk_cache() -> None:
    """Write this process's routes over the file's (another process's classes are kept)."""
    from glocal.weights.io import write_bytes_atomic  # here: glocal.weights imports the models, which import this

    try:
        merged = _read_disk_cache()
        with _lock:
            merged.update(_routes)
        write_bytes_atomic(json.dumps(dict(sorted(merged.items())), indent=1).encode(), route_cache_path())
    except OSError:  # a read-only home only costs a calibration next time
        pass


def cached_routes() -> dict[str, str]:
    """Every route cached on disk for this CPU and thread count (shape-class key -> route)."""
    return dict(sorted(_read_disk_cache().items()))


def clear_route_cache() -> int:
    """Forget every route choice for this CPU and thread count, in this process and on disk, so that each shape
    class is measured again at its next use; returns how many were cached on disk."""
    _follow_threads()
    count = len(_read_disk_cache())
    with _lock:
        _routes.clear()
    route_cache_path().unlink(missing_ok=True)
    return count


def recalibrate(step) -> dict[str, str]:
    """Run ``step()`` (a model's forward or training step) as if no route were known, so that every shape class it
    meets is measured now; the new choices replace the old ones, here and on disk (other classes are kept). Returns
    the classes measured (key -> route)."""
    if not _enabled:
        raise RuntimeError("the CPU backend is off: call glocal.backends.enable() before recalibrating its routes")
    _follow_threads()
    with _lock:
        kept = dict(_routes)
        _routes.clear()
    try:
        step()
    finally:
        with _lock:
            measured = dict(_routes)
            _routes.update({k: v for k, v in kept.items() if k not in measured})
    _save_disk_cache()
    return dict(sorted(measured.items()))


def _typical_times(routes: dict) -> dict[str, float]:
    """The median of ``CALIBRATION_RUNS`` timed calls of each route (name -> callable), after one warm-up call each;
    the routes take turns run by run, so that a burst of load from elsewhere hits them alike."""
    for fn in routes.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(CALIBRATION_RUNS):
        for name, fn in routes.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(runs) for name, runs in times.items()}


def _choose(key: str, default, candidates: dict) -> str:
    """The cached route of ``key``, or the fastest of ``candidates`` (route name -> callable) if it is at least
    ``MARGIN`` faster than torch's ``default``; ``"default"`` otherwise, and (uncached) inside a dispatch mode."""
    route = _routes.get(key)
    if route is None:
        if is_in_torch_dispatch_mode():
            # A FLOP counter (or another dispatch mode) would count every timed call and time its own overhead: take
            # torch's default here and calibrate at the next call outside it.
            return "default"
        with torch.no_grad() if "grad" not in key else torch.enable_grad():
            timed = _typical_times({"default": default, **candidates})
        t_default = timed.pop("default")
        best = min(timed, key=timed.get)
        route = best if timed[best] < (1 - MARGIN) * t_default else "default"
        with _lock:
            _routes[key] = route
        _save_disk_cache()
    return route


def _calibration_step(fn, grad: bool):
    """A step to time for a route: ``fn()`` and, with ``grad``, its backward from a dense output gradient. (A
    ``sum()``'s gradient is an expanded view with zero strides, which sends batched-product backwards down a slow
    path: the explicit attention's backward looked no faster than the fused kernel's, where it is 1.5-1.8x.)"""
    seed: list[torch.Tensor] = []

    def step() -> None:
        out = fn()
        if grad:
            if not seed:
                seed.append(torch.ones_like(out))
            out.backward(seed[0])

    return step


def route_state() -> dict[str, str]:
    """Every route chosen so far in this process at the current thread count (shape-class key -> route), for a
    training checkpoint."""
    _follow_threads()
    with _lock:
        return dict(_routes)


def load_route_state(state: dict[str, str]) -> None:
    """Take the routes of ``state`` (from :func:`route_state`) over any measured here, so that a resumed run
    computes what the interrupted one did."""
    _follow_threads()
    with _lock:
        _routes.update({str(k): str(v) for k, v in state.items()})


def _rows_class(rows: int) -> int:
    """Rows rounded up to a power of two: products within a factor of two share a choice."""
    return 1 << max(rows - 1, 1).bit_length()


# --- linear ------------------------------------------------------------------------------------------------------


def onednn_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T + bias on oneDNN; contiguous operands; no autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# The weight gradient sums over the rows; oneDNN computes it from transposed copies of the gradient and the input,
# which pays off up to this many rows per unit of the larger width and loses beyond (benchmarks/linear.py).
WEIGHT_GRAD_ROWS_PER_WIDTH = 4


def _backward_products(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, onednn: bool, need_x: bool = True, need_w: bool = True
):
    """The input and weight gradients of ``x (M, K) @ weight (N, K)^T`` from ``grad`` (M, N) (contiguous), on
    oneDNN or on torch's ``mm`` (MKL)."""
    grad_x = grad_w = None
    if need_x:
        grad_x = onednn_gemm(grad, weight.t().contiguous()) if onednn else grad.mm(weight)  # (M, K)
    if need_w:
        rows, k = x.shape
        if onednn and rows <= WEIGHT_GRAD_ROWS_PER_WIDTH * max(k, grad.shape[1]):
            grad_w = onednn_gemm(grad.t().contiguous(), x.t().contiguous())  # (N, K)
        else:  # a long reduction: transposing the activations costs more than oneDNN saves
            grad_w = grad.t().mm(x)  # (N, K)
    return grad_x, grad_w


class _RoutedLinearFunction(torch.autograd.Function):
    """A linear layer whose forward product and backward products each run on oneDNN or on torch's kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias, onednn_forward: bool, onednn_backward: bool):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.onednn_backward = bias is not None, onednn_backward
        return onednn_gemm(x, weight, bias) if onednn_forward else F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w = _backward_products(grad, x, weight, ctx.onednn_backward, need_x, need_w)
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b, None, None


def freeze_weights(model: nn.Module) -> nn.Module:
    """Declare the weights of ``model``'s linear layers constant (as
    :func:`glocal.optimize.optimize_for_inference` does): the oneDNN inference routes then run them in oneDNN's
    blocked layout, packed once (1-10% faster products on AMD Zen 4 in float32 and bfloat16, ``benchmarks/linear.py``)
    at the cost of a second copy of each weight. An update in place (``copy_``, an optimiser step,
    ``load_state_dict``) or a new ``.data`` repacks it; a change that bypasses the weight's version counter
    (``weight.data.copy_(...)``) is not seen. Weights created under ``torch.inference_mode`` have no version counter
    and stay unpacked (their products run as on an unfrozen model). Returns ``model``."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            _frozen.setdefault(module.weight, None)
    return model


def _packed(weight: torch.Tensor) -> torch.Tensor:
    """``weight``'s oneDNN-packed copy if :func:`freeze_weights` declared it constant, ``weight`` otherwise."""
    if weight not in _frozen or weight.is_inference():  # an inference tensor keeps no version counter to watch
        return weight
    stamp = (weight._version, weight.data_ptr(), weight.dtype, tuple(weight.shape))
    entry = _frozen[weight]
    if entry is None or entry[0] != stamp:
        # The batch-size hint only picks among equivalent layouts (same speed at hints 1 to 25088 on AMD Zen 4).
        entry = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), MIN_ROWS))
        _frozen[weight] = entry
    return entry[1]


def _calibrate_linear(key: str, x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """The forward product's route of a ``linear:...:infer`` key (timed as it is: frozen weights packed)."""
    x2d = x2d.detach().contiguous()
    weight, bias = weight.detach(), None if bias is None else bias.detach()
    packed = _packed(weight)
    return _choose(key, lambda: F.linear(x2d, weight, bias), {"onednn": lambda: onednn_gemm(x2d, packed, bias)})


def _calibrate_backward(key: str, x2d: torch.Tensor, weight: torch.Tensor) -> str:
    """The backward products' route of a ``linear:...:backward`` key (input and weight gradients together)."""
    x2d, weight = x2d.detach().contiguous(), weight.detach()
    # A generator of its own: a calibration must not move the global random state (a resumed run calibrates nothing).
    grad = torch.randn(x2d.shape[0], weight.shape[0], dtype=x2d.dtype, generator=torch.Generator().manual_seed(0))
    return _choose(
        key,
        lambda: _backward_products(grad, x2d, weight, onednn=False),
        {"onednn": lambda: _backward_products(grad, x2d, weight, onednn=True)},
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x (..., K), weight (N, K), with its forward product (inference: float32 and
    bfloat16) and its backward products (training: float32) each on oneDNN where that measured faster."""
    grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    tensors = (x, weight) if bias is None else (x, weight, bias)
    eligible = _eligible(*tensors) or (not grad and _eligible(*tensors, dtype=torch.bfloat16))
    if not eligible or x.numel() < MIN_ROWS * x.shape[-1]:  # eligibility first: no size read while tracing
        return F.linear(x, weight, bias)
    x2d = x.reshape(-1, x.shape[-1])  # (M, K)
    shape = f"linear:{_rows_class(x2d.shape[0])}x{weight.shape[1]}x{weight.shape[0]}{_tag(x)}"
    forward = (_routes.get(f"{shape}:infer") or _calibrate_linear(f"{shape}:infer", x2d, weight, bias)) == "onednn"
    out_shape = (*x.shape[:-1], weight.shape[0])
    if not grad and forward:
        return onednn_gemm(x2d.contiguous(), _packed(weight), bias).reshape(out_shape)
    if not grad:
        return F.linear(x, weight, bias)
    key = f"{shape}:backward"
    backward = (_routes.get(key) or _calibrate_backward(key, x2d, weight)) == "onednn"
    if not (forward or backward):
        return F.linear(x, weight, bias)
    return _RoutedLinearFunction.apply(x2d.contiguous(), weight, bias, forward, backward).reshape(out_shape)


def fusable(*modules: nn.Module) -> bool:
    """Whether a family may replace the calls of ``modules`` by a fused route: the backend is on and no forward
    hook (of these modules, or global, as analyses and FLOP counters register) expects to see each module called."""
    if not _enabled or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _inference_rows(x: torch.Tensor, *tensors: torch.Tensor | None) -> torch.Tensor | None:
    """``x`` as (M, K) rows if the fused inference routes may take this call (backend on, eager CPU tensors, all
    float32 or all bfloat16 (a model cast for inference), no autograd, at least ``MIN_ROWS`` rows); None otherwise."""
    present = [t for t in tensors if t is not None]
    if not (_eligible(x, *present) or _eligible(x, *present, dtype=torch.bfloat16)):
        return None
    if x.numel() < MIN_ROWS * x.shape[-1]:
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *present)):
        return None
    return x.reshape(-1, x.shape[-1])


def _tag(x: torch.Tensor) -> str:
    """The dtype part of a fused route's key: none for float32 (the keys of earlier caches), ``:bf16``."""
    return ":bf16" if x.dtype == torch.bfloat16 else ""


def linear_gelu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, approximate: str = "none"
) -> torch.Tensor:
    """``F.gelu(linear(x, weight, bias), approximate=approximate)``; in inference on oneDNN with the GELU applied in
    the product's epilogue (one pass over the hidden activations instead of three: bias, product, GELU) where that
    measured faster than torch's ``F.linear`` then ``F.gelu``."""
    x2d = _inference_rows(x, weight, bias)
    if x2d is not None:
        key = f"linear_gelu:{_rows_class(x2d.shape[0])}x{weight.shape[1]}x{weight.shape[0]}:{approximate}{_tag(x)}"
        xc = x2d.contiguous()

        def fused() -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise(xc, _packed(weight), bias, "gelu", [], approximate)

        route = _routes.get(key) or _choose(
            key, lambda: F.gelu(F.linear(x2d, weight, bias), approximate=approximate), {"onednn": fused}
        )
        if route == "onednn":
            return fused().reshape(*x.shape[:-1], weight.shape[0])
    return F.gelu(linear(x, weight, bias), approximate=approximate)


def linear_add(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor
) -> torch.Tensor:
    """``residual + linear(x, weight, bias)``; in inference on oneDNN with the addition in the product's epilogue
    where that measured faster than torch's ``F.linear`` then ``+``. ``residual`` has the output's shape."""
    x2d = _inference_rows(x, weight, bias, residual)
    if x2d is not None and residual.shape == (*x.shape[:-1], weight.shape[0]):
        key = f"linear_add:{_rows_class(x2d.shape[0])}x{weight.shape[1]}x{weight.shape[0]}{_tag(x)}"
        xc, other = x2d.contiguous(), residual.reshape(x2d.shape[0], weight.shape[0]).contiguous()

        def fused() -> torch.Tensor:
            return torch.ops.mkldnn._linear_pointwise.binary(xc, other, _packed(weight), bias, "add")

        route = _routes.get(key) or _choose(key, lambda: residual + F.linear(x, weight, bias), {"onednn": fused})
        if route == "onednn":
            return fused().reshape(residual.shape)
    return residual + linear(x, weight, bias)


class RoutedLinear(nn.Linear):
    """``nn.Linear`` computed by :func:`linear` (``F.linear`` while the backend is off); :func:`enable` switches a
    model's linear layers to it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


# --- attention ---------------------------------------------------------------------------------------------------


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v without autograd, on oneDNN's GEMM: per (batch, head), blocks of query rows.

    In float32 the fused CPU kernel runs its block products on MKL's sgemm, on AMD Zen 5 half as fast as oneDNN's;
    there this is 1.5-1.9x faster at 640 px for ViT-S's and VOLO-D1's heads (``(8, 6, 1601, 64)``). Each block's
    (rows, Nk) logits are materialised, softmaxed in place and multiplied by v; the result equals the fused
    kernel's to float32 rounding.
    """
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype)  # (B, heads, Nq, dv)
    q = (q * scale).flatten(0, 1)  # (B*heads, Nq, d), scaled once
    k, v, rows = k.flatten(0, 1), v.flatten(0, 1), out.flatten(0, 1)
    for i in range(q.shape[0]):
        keys = k[i].contiguous()  # (Nk, d): the "weight" of q @ k^T
        values_t = v[i].t().contiguous()  # (dv, Nk): the "weight" of attn @ v
        for start in range(0, q.shape[1], QUERY_BLOCK):
            logits = onednn_gemm(q[i, start : start + QUERY_BLOCK].contiguous(), keys)  # (rows, Nk)
            torch.softmax(logits, dim=-1, out=logits)
            rows[i, start : start + QUERY_BLOCK] = onednn_gemm(logits, values_t)  # (rows, dv)
    return out


def fast_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, explicit) -> torch.Tensor | None:
    """The attention of an eager CPU call (float32 or bfloat16, no mask, no dropout) on a route that measured faster
    than the fused kernel for its shape class; None where the caller should run torch's fused kernel. The routes:

    - ``explicit`` (the caller's explicit path, ``explicit(q, k, v, scale)``: the logits materialised, two batched
      products and a softmax, autograd's own backward), for up to ``EXPLICIT_MAX_KEYS`` keys
      (``EXPLICIT_MAX_KEYS_TRAINING`` in training). For short sequences torch's fused CPU kernel spends its time on
      per-block set-up rather than on the products: on AMD Zen 4 (2 threads) the explicit form ran Twins-SVT's 7x7
      windows (49 keys, head width 32) 1.35-1.9x faster at inference in float32 and bfloat16 and 1.5-2.0x per
      forward + backward, ViT-S/16's heads (197 keys, width 64) 1.9x faster in bfloat16 inference and equal in
      float32; at 640 px (1601 keys) it is 2x slower in training. In training it keeps the (B, heads, Nq, Nk) map
      for the backward where the fused kernel keeps its output and log-sum-exp, hence the lower bound there.
    - ``explicit_native_softmax``, for bfloat16 inference: the same with torch's bfloat16 softmax kernel, which
      computes in float32 and rounds once, so no float32 copy of the map is made: 1.15-1.25x the ``explicit`` route
      on 196-197 keys (VOLO-D1's and ViT-S's heads) on AMD Zen 4, slower on 49 (Twins' windows), hence a candidate.
    - ``blocked`` (:func:`blocked_attention`), for long float32 inference.
    """
    if not (_eligible(q, k, v) or _eligible(q, k, v, dtype=torch.bfloat16)):
        return None
    if not (q.dim() == 4 and q.shape[:2] == k.shape[:2] == v.shape[:2]):  # no broadcasting over batch or heads
        return None
    B, heads, nq, d = q.shape
    nk = k.shape[-2]
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    candidates = {}
    if nk <= (EXPLICIT_MAX_KEYS_TRAINING if grad else EXPLICIT_MAX_KEYS):
        candidates["explicit"] = explicit
        if q.dtype == torch.bfloat16 and not grad:
            candidates["explicit_native_softmax"] = functools.partial(explicit, native_softmax=True)
    if not grad and q.dtype == torch.float32 and nk >= MIN_KEYS and nq >= QUERY_BLOCK:
        candidates["blocked"] = blocked_attention
    if not candidates:
        return None
    key = (
        f"attention:{_rows_class(B * heads)}x{_rows_class(nq)}x{_rows_class(nk)}x{d}x{v.shape[-1]}{_tag(q)}"
        f":{'grad' if grad else 'infer'}"
    )
    route = _routes.get(key)
    if route is None:
        qs, ks, vs = (t.detach().clone().requires_grad_(grad) for t in (q, k, v))
        route = _choose(
            key,
            _calibration_step(lambda: F.scaled_dot_product_attention(qs, ks, vs, scale=scale), grad),
            {name: _calibration_step(lambda fn=fn: fn(qs, ks, vs, scale), grad) for name, fn in candidates.items()},
        )
    fn = candidates.get(route)
    return None if fn is None else fn(q, k, v, scale)
