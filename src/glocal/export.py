"""Export a glocal model: TorchScript (trace), torch.export, and ONNX with dynamic batch, height and width.

Every model's ``forward`` is written for export (no einops, no data-dependent Python branches on traced values), so
one path serves all families. ONNX goes through the dynamo exporter (``torch.onnx.export(dynamo=True)``, needs the
``export`` extra: onnx, onnxscript); the dynamic height and width are declared as multiples of the model's
``input_divisor`` from 64 px up (below that the last stage of a stride-32 model is 1x1, which the exporter
specialises), so the exported graph accepts every size from 64 to 4096 that the model accepts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from glocal.weights.io import atomic_path

__all__ = ["example_input", "export_onnx", "export_program", "export_torchscript"]

log = logging.getLogger(__name__)

_MIN_DYNAMIC_SIZE = 64


def example_input(model: nn.Module, size: tuple[int, int] | None = None, batch_size: int = 2) -> torch.Tensor:
    """A random batch at ``size`` (default: the model's configured input size). Export with dynamic shapes needs
    an example batch of at least 2 (the exporter specialises dimensions of size 1)."""
    if size is None:
        size = tuple(model.data_config.input_size[1:])
    param = next(model.parameters())
    return torch.randn(batch_size, model.in_chans, *size, dtype=param.dtype, device=param.device)


def _dynamic_shapes(model: nn.Module) -> dict:
    step = max(model.input_divisor, 1)
    low = -(-max(model.min_input_size, _MIN_DYNAMIC_SIZE) // step)
    height = torch.export.Dim("height", min=low, max=4096 // step)
    width = torch.export.Dim("width", min=low, max=4096 // step)
    batch = torch.export.Dim("batch", min=1, max=1024)
    return {"x": {0: batch, 2: step * height, 3: step * width}}


def export_program(model: nn.Module, x: torch.Tensor, *, dynamic: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` of the eval-mode model, with dynamic height and width unless ``dynamic=False``."""
    return torch.export.export(model.eval(), (x,), dynamic_shapes=_dynamic_shapes(model) if dynamic else None)


def export_torchscript(model: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> Path:
    """Trace the eval-mode model on ``x`` and save it; the trace runs at any size the model accepts."""
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), x)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    log.info("wrote TorchScript to %s", path)
    return Path(path)


def export_onnx(
    model: nn.Module, path: str | os.PathLike, x: torch.Tensor, *, opset: int = 18, dynamic: bool = True
) -> Path:
    """ONNX through the dynamo exporter; batch, height and width dynamic unless ``dynamic=False``."""
    try:
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise RuntimeError("ONNX export needs the 'export' extra: pip install 'glocal[export]'") from err
    shapes = _dynamic_shapes(model) if dynamic else None
    program = torch.onnx.export(model.eval(), (x,), dynamo=True, opset_version=opset, dynamic_shapes=shapes)
    with atomic_path(path) as tmp:
        program.save(str(tmp))
    log.info("wrote ONNX (opset %d) to %s", opset, path)
    return Path(path)
