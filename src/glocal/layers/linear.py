"""The linear layer of every glocal model: ``nn.Linear`` whose float32 CPU products run on oneDNN.

PyTorch computes a float32 ``F.linear`` on CPU with MKL's sgemm. On the AMD EPYC (Zen 5) machines glocal is
developed on, MKL runs about 150 GFLOP/s with 2 threads while oneDNN's GEMM, the one PyTorch already uses for
convolutions and for bfloat16 products, runs 300-380 GFLOP/s on the same shapes (``benchmarks/linear.py``). The
transformers spend 65-75% of their time in linear layers, so :func:`linear` sends large float32 products to oneDNN
(``torch.ops.mkldnn._linear_pointwise``, the kernel ``torch.compile`` uses on CPU), with a backward whose two
products go there too:

* forward ``y = x W^T + b``; backward ``dx = dy W``, ``dW = dy^T x`` (on contiguous transposes, or MKL for reductions
  over many rows, where the copies cost more than oneDNN saves), ``db = sum dy``.

Everything else takes ``F.linear``: other devices and dtypes, autocast (whose bfloat16 products are oneDNN's
already), fewer than ``MIN_ROWS`` rows (a class token, a pooled vector: tiny products, where the transposed copies
of the backward cost more than they save), builds without oneDNN, and traced, scripted, compiled or exported graphs
(which must hold standard operators). The result differs from ``F.linear`` by float32 rounding only (another
summation order: about 1e-6 relative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "capturing_graph", "linear", "onednn_available", "onednn_gemm", "MIN_ROWS"]

# Products with fewer rows (tokens x batch) than this stay on F.linear.
MIN_ROWS = 64
# The weight gradient sums over the rows; oneDNN computes it from transposed copies of the gradient and the input,
# which pays off up to this many rows per unit of the larger width and loses beyond (benchmarks/linear.py).
WEIGHT_GRAD_ROWS_PER_WIDTH = 4

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T + bias on oneDNN; contiguous operands; no autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def capturing_graph() -> bool:
    """Whether a graph is being traced, scripted, compiled or exported (which must hold standard operators)."""
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def onednn_available(*tensors: torch.Tensor) -> bool:
    """Whether oneDNN's float32 GEMM may take these eager CPU tensors (no autocast, no graph capture)."""
    if capturing_graph():  # first: reading a symbolic tensor's properties would add guards to the graph
        return False
    return (
        _ONEDNN
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
    )


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_gemm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_gemm(grad, weight.t().contiguous(), None)  # (M, K)
        if ctx.needs_input_grad[1]:
            rows, k = x.shape
            if rows <= WEIGHT_GRAD_ROWS_PER_WIDTH * max(k, grad.shape[1]):
                grad_w = onednn_gemm(grad.t().contiguous(), x.t().contiguous(), None)  # (N, K)
            else:  # a long reduction: transposing the activations costs more than oneDNN saves
                grad_w = grad.t().mm(x)  # (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x (..., K), weight (N, K): oneDNN for large float32 CPU products."""
    if not (onednn_available(x, weight) and x.numel() >= MIN_ROWS * x.shape[-1]):
        return F.linear(x, weight, bias)
    x2d = x.reshape(-1, x.shape[-1]).contiguous()  # (M, K)
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        y = _OneDNNLinear.apply(x2d, weight, bias)
    else:
        y = onednn_gemm(x2d, weight, bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, names and initialisation) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
