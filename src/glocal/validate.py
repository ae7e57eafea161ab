"""Checks of values where they enter glocal, in glocal's words: typed dataclass fields (architecture overrides, a
checkpoint's saved config, a training recipe), the contract arguments of ``create_model``, and the tensors handed to
a model.

Every check names the argument, what was given and what is accepted, and raises ``TypeError`` (wrong kind of value)
or ``ValueError`` (right kind, unusable value).
"""

from __future__ import annotations

import math
import re
import types
import typing
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["check_count", "check_fields", "check_input_tensor", "describe_type", "MAX_ARCH_INT"]

# Sanity bound on every integer of an architecture config (widths, heads, patch sizes) and on the total depth: far
# above any published model (ViT-G: width 1664, depth 48), far below what would allocate for minutes.
MAX_ARCH_INT = 16384
MAX_ARCH_DEPTH = 1024

# YAML 1.1 (PyYAML) reads "1e12" or "5e-4" without a dot as a string: numbers where a recipe expects one.
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def describe_type(tp: Any) -> str:
    """A type annotation in words: ``tuple[int, ...] | None`` -> ``null or a list of integers``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe_type(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe_type(args[0]).removeprefix('an ').removeprefix('a ')}s"
        return f"a list of {len(args)} ({', '.join(describe_type(a) for a in args)})"
    if origin in (dict, Mapping):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, name: str, numeric_strings: bool = False) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, name, numeric_strings)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{name} must be {describe_type(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if numeric_strings and isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], f"{name}[{i}]", numeric_strings) for i, v in enumerate(value))
            if not args or len(value) == len(args):
                items = enumerate(zip(value, args, strict=False))
                return tuple(_coerce(v, a, f"{name}[{i}]", numeric_strings) for i, (v, a) in items)
    elif origin in (dict, Mapping) or tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
    else:  # a type this checker does not model (a class, a callable): left to the constructor
        return value
    raise TypeError(f"{name} must be {describe_type(tp)}, got {value!r} ({type(value).__name__})")


def check_fields(
    cls: type, values: Mapping[str, Any], *, where: str, bounded: bool = False, numeric_strings: bool = False
) -> dict[str, Any]:
    """``values`` converted to the types the dataclass ``cls`` declares for them (lists to tuples, integers to
    floats where a number is expected); keys that are not fields pass through unchanged. ``numeric_strings=True``
    (YAML recipes) also reads a string such as ``"1e12"`` as the number it spells where a number is expected.

    ``bounded=True`` (architecture configs) also refuses integers larger in magnitude than :data:`MAX_ARCH_INT`
    (negative ones are indices, as ``attn_blocks=(-1,)``)
    and depths summing to more than :data:`MAX_ARCH_DEPTH`, before anything is allocated.
    """
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        checked[key] = _coerce(value, hints[key], f"{where} {key!r}", numeric_strings) if key in hints else value
    if bounded:
        for key, value in checked.items():
            if key not in hints:
                continue
            numbers = value if isinstance(value, tuple) else (value,)
            for n in numbers:
                if isinstance(n, int) and not isinstance(n, bool) and abs(n) > MAX_ARCH_INT:
                    raise ValueError(
                        f"{where} {key!r} = {value!r} is outside the sane range -{MAX_ARCH_INT}..{MAX_ARCH_INT} for an "
                        f"architecture setting; refusing to build it"
                    )
            if "depth" in key and sum(n for n in numbers if isinstance(n, int)) > MAX_ARCH_DEPTH:
                raise ValueError(
                    f"{where} {key!r} = {value!r} asks for more than {MAX_ARCH_DEPTH} blocks; refusing to build it"
                )
    return checked


def check_count(value: Any, name: str, *, minimum: int) -> int:
    """An integer argument of at least ``minimum`` (``num_classes``, ``in_chans``)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_input_tensor(model: nn.Module, x: Any) -> torch.Tensor:
    """The batch ``x`` as ``model`` can take it, or a clear error.

    * not a tensor: ``TypeError`` (a Python list or a numpy array is not converted: images need the model's
      normalisation, see :func:`glocal.data.create_transform`);
    * integer or boolean images (uint8 pixels...): ``TypeError`` for the same reason;
    * another floating dtype than the model's parameters (float64, float16, bfloat16 into float32): converted to the
      model's dtype, with a warning once per call site;
    * NaN or infinite values: ``ValueError`` (they would only come back as NaN logits);
    * a batch of 1 in training mode, with BatchNorm in training mode, at a size whose last map is 1x1 (where
      torch's BatchNorm would fail with one value per channel): ``ValueError``;
    * a batch whose largest feature map alone would not fit in the memory available: ``ValueError`` up front.
    """
    name = type(model).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} expects a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}; build one with "
            f"torch.stack of transformed images (glocal.data.create_transform gives the model's preprocessing)"
        )
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if not x.is_floating_point():
        raise TypeError(
            f"{name} expects floating-point images normalised with its data_config (mean/std), got {x.dtype}; "
            f"convert and normalise them first, e.g. with glocal.data.create_transform"
        )
    if param is not None and x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
        warnings.warn(
            f"{name} has {param.dtype} parameters; converting the {x.dtype} input to {param.dtype}",
            stacklevel=4,
        )
        x = x.to(param.dtype)
    if (
        model.training
        and x.ndim == 4
        and x.shape[0] == 1
        and _single_value_maps(model, x)
        and _batch_norm_in_training(model)
    ):
        raise ValueError(
            f"{name} has BatchNorm layers in training mode, which take their statistics over the batch and its "
            f"positions; at batch 1 and {x.shape[-2]}x{x.shape[-1]} its last feature map is 1x1, one value per "
            f"channel. Use a batch of 2 or more, a larger image, model.eval(), or freeze the BatchNorm layers"
        )
    _check_activation_memory(model, x)
    if x.numel() and x.device.type != "meta" and not _all_finite(x):  # meta: shapes only (FLOP counts)
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} got an input with {bad} NaN or infinite value(s) of {x.numel()}; check the images")
    return x


def _all_finite(x: torch.Tensor) -> bool:
    """``torch.isfinite(x).all()`` at the cost of one sum (50x cheaper for a batch of images on CPU): a NaN or an
    infinity makes the sum non-finite; only a non-finite sum (those, or finite values whose sum overflows) takes the
    exact test."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _single_value_maps(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the model's coarsest tapped map is 1x1 at the size of ``x`` (where torch's BatchNorm fails)."""
    info = getattr(model, "feature_info", None)
    if not info:
        return False
    reduction = max(t["reduction"] for t in info.info)
    return math.ceil(x.shape[-2] / reduction) * math.ceil(x.shape[-1] / reduction) == 1


def _batch_norm_in_training(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


def _check_activation_memory(model: nn.Module, x: torch.Tensor) -> None:
    """Refuse a batch whose largest tapped feature map, kept three times over (input, output, one intermediate),
    exceeds the memory available: a lower bound on what the forward needs, so nothing that fits is refused."""
    info = getattr(model, "feature_info", None)
    if not info or x.device.type != "cpu" or x.ndim != 4:
        return
    batch, _, height, width = x.shape
    largest = max(
        t["num_chs"] * math.ceil(height / t["reduction"]) * math.ceil(width / t["reduction"]) for t in info.info
    )
    needed = 3 * batch * largest * x.element_size()
    available = _available_bytes()
    if available is not None and needed > available:
        raise ValueError(
            f"{type(model).__name__} at batch {batch} and {height}x{width} needs at least {needed / 2**30:.1f} GiB for "
            f"its feature maps, and {available / 2**30:.1f} GiB of memory are available; use a smaller size or batch"
        )
