"""Export a glocal model: TorchScript (trace), torch.export, and ONNX with dynamic batch, height and width.

Every model's ``forward`` is written for export (no einops, no data-dependent Python branches on traced values), so
one path serves all families. ONNX goes through the dynamo exporter (``torch.onnx.export(dynamo=True)``, needs the
``export`` extra: onnx, onnxscript); the dynamic height and width are declared as multiples of the model's
``export_divisor`` from 64 px up (below that the last stage of a stride-32 model is 1x1, which the exporter
specialises), so the exported graph accepts every size from 64 to 4096 that the model accepts; a smaller example
raises ``ValueError`` saying so (export it with ``dynamic=False``). The exporters' own progress messages and logs
(thousands of lines for a large model) are silenced; :func:`max_export_diff` runs an exported graph (onnxruntime,
TorchScript, the program's module) and returns its largest difference from eager mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from glocal.weights.io import atomic_path

__all__ = [
    "example_input",
    "export_onnx",
    "export_program",
    "export_torchscript",
    "max_export_diff",
    "min_dynamic_size",
]

log = logging.getLogger(__name__)

_MIN_DYNAMIC_SIZE = 64
# Loggers of the exporters and the ONNX optimiser, which report every pass and rewrite at INFO.
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "torch._export")


def example_input(model: nn.Module, size: tuple[int, int] | None = None, batch_size: int = 2) -> torch.Tensor:
    """A random batch at ``size`` (default: the model's configured input size). Export with dynamic shapes needs
    an example batch of at least 2 (the exporter specialises dimensions of size 1)."""
    if size is None:
        size = tuple(model.data_config.input_size[1:])
    param = next(model.parameters())
    return torch.randn(batch_size, model.in_chans, *size, dtype=param.dtype, device=param.device)


def min_dynamic_size(model: nn.Module) -> int:
    """The smallest height and width of an example input for an export with dynamic sizes."""
    step = model.export_divisor
    return step * -(-max(model.min_input_size, _MIN_DYNAMIC_SIZE) // step)


def _dynamic_shapes(model: nn.Module, x: torch.Tensor) -> dict:
    low = min_dynamic_size(model)
    if min(x.shape[-2:]) < low or x.shape[0] < 2:
        raise ValueError(
            f"an export with dynamic sizes needs an example batch of at least 2 images of at least {low}x{low} px "
            f"for {type(model).__name__} (smaller sizes are specialised by the exporter); got "
            f"{tuple(x.shape)}. Export with a larger example, or with a fixed size (dynamic=False, --static)"
        )
    step = model.export_divisor
    height = torch.export.Dim("height", min=low // step, max=4096 // step)
    width = torch.export.Dim("width", min=low // step, max=4096 // step)
    batch = torch.export.Dim("batch", min=1, max=1024)
    return {"x": {0: batch, 2: step * height, 3: step * width}}


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """The exporters' loggers at ERROR and their deprecation notices hidden for the duration (INFO is one line per
    optimisation pass; WARNING lists the torchvision operators it cannot register when torchvision is absent)."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_program(model: nn.Module, x: torch.Tensor, *, dynamic: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of the eval-mode model, with dynamic batch, height and width unless ``dynamic=False``."""
    shapes = _dynamic_shapes(model, x) if dynamic else None
    with _quiet_exporters():
        return torch.export.export(model.eval(), (x,), dynamic_shapes=shapes)


def export_torchscript(model: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> Path:
    """Trace the eval-mode model on ``x`` and save it; the trace runs at any size the model accepts."""
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), x)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    log.info("wrote TorchScript to %s", path)
    return Path(path)


# The oldest opset torch's dynamo exporter writes when asked for it.
MIN_OPSET = 17


def export_onnx(
    model: nn.Module, path: str | os.PathLike, x: torch.Tensor, *, opset: int = 18, dynamic: bool = True
) -> Path:
    """ONNX through the dynamo exporter; batch, height and width dynamic unless ``dynamic=False``. ``opset`` must be
    one the exporter writes as asked: from 17 (below it, torch writes 18 whatever is asked) to the newest the
    installed ``onnx`` knows."""
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise RuntimeError("ONNX export needs the 'export' extra: pip install 'glocal[export]'") from err
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"ONNX opset must be an integer from {MIN_OPSET} to {newest} (onnx {onnx.__version__}), got {opset!r}"
        )
    shapes = _dynamic_shapes(model, x) if dynamic else None
    with _quiet_exporters():
        program = torch.onnx.export(
            model.eval(), (x,), dynamo=True, opset_version=opset, dynamic_shapes=shapes, verbose=False
        )
    with atomic_path(path) as tmp:
        program.save(str(tmp))
    log.info("wrote ONNX (opset %d) to %s", opset, path)
    return Path(path)


@torch.no_grad()
def max_export_diff(model: nn.Module, path: str | os.PathLike, fmt: str, x: torch.Tensor) -> float:
    """The largest absolute difference between the exported graph at ``path`` (``fmt``: ``"onnx"`` run by
    onnxruntime, ``"torchscript"``, ``"program"``) and the eager model on ``x``."""
    expected = model.eval()(x).float()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.cpu().numpy()}
        got = torch.from_numpy(session.run(None, feed)[0])
    elif fmt == "torchscript":
        got = torch.jit.load(str(path))(x)
    elif fmt == "program":
        got = torch.export.load(str(path)).module()(x)
    else:
        raise ValueError(f"unknown export format {fmt!r}; expected 'onnx', 'torchscript' or 'program'")
    return float((got.float() - expected).abs().max())
