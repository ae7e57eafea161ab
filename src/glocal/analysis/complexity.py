"""Parameter and MAC counts, attention included.

Convention: **MACs** are multiply-accumulates, what the papers call FLOPs; one MAC is two FLOPs. A count is
``torch.utils.flop_counter`` FLOPs / 2 and covers matrix products (``mm``, ``bmm``, ``addmm``, ``einsum`` and
``matmul`` reduce to them), convolutions and attention; element-wise work (norms, softmax, activations, additions,
pooling) is not counted, as in the papers and in fvcore/timm's tables.

Attention is counted whichever path runs. The explicit path's products are plain matmuls; torch's counter has no
formula for the CPU fused kernel (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward), so a fused
forward would read low (timm's Twins-PCPVT-S: 3.67 instead of 3.81 GMACs). Importing this module registers those
formulas, the same as torch's for the GPU kernels: ``2 * B * heads * Nq * Nk * d`` MACs forward (q k^T and attn v),
two and a half times that backward. On the meta device ``scaled_dot_product_attention`` decomposes into matmuls.
The CPU backend registers the formula of its oneDNN linear kernel itself (:mod:`glocal.backends.cpu`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from glocal.layers.probe import explicit_attention

__all__ = ["count_params", "count_macs", "count_train_macs", "module_macs"]

_aten = torch.ops.aten
_CPU_SDPA = _aten._scaled_dot_product_flash_attention_for_cpu
_CPU_SDPA_BACKWARD = _aten._scaled_dot_product_flash_attention_for_cpu_backward


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``(query, key, value, dropout_p, is_causal, *, attn_mask, scale) -> (out, logsumexp)``."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """``(grad_out, query, key, value, out, logsumexp, dropout_p, is_causal, *, attn_mask, scale)``."""
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# Registration is global and once per process; a future torch that counts these ops itself keeps its own formula.
if _CPU_SDPA not in flop_registry:
    register_flop_formula(_CPU_SDPA)(_cpu_sdpa_flop)
if _CPU_SDPA_BACKWARD not in flop_registry:
    register_flop_formula(_CPU_SDPA_BACKWARD)(_cpu_sdpa_backward_flop)


def count_params(model: nn.Module) -> int:
    """Every parameter, trainable or not, as the papers and official code count them."""
    return sum(p.numel() for p in model.parameters())


def _input(model: nn.Module, input_size: tuple[int, int, int], batch_size: int) -> torch.Tensor:
    param = next(model.parameters())
    return torch.zeros((batch_size, *input_size), device=param.device, dtype=param.dtype)


def _run_counted(model: nn.Module, x: torch.Tensor, *, explicit: bool, train: bool) -> FlopCounterMode:
    was_training = model.training
    model.train(train)
    try:
        forced = explicit_attention() if explicit else contextlib.nullcontext()
        with forced, FlopCounterMode(display=False) as counter:
            if train:
                model(x).float().sum().backward()
            else:
                with torch.no_grad():
                    model(x)
    finally:
        model.train(was_training)
    return counter


def count_macs(
    model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1, *, explicit: bool = False
) -> int:
    """Multiply-accumulates of one inference forward pass at ``input_size`` (C, H, W), per image.

    ``explicit`` forces the materialised-softmax attention path; the count is the same either way (tested), except
    in BoTNet's attention, where the fused kernel also multiplies the values' zero padding (heads * (HW)^2 * (H + W)
    per block, see :func:`glocal.layers.attention.attend`'s ``bias_factors``).
    Without it, whichever path the call would take runs (the fused kernel, unless a probe is observed).
    """
    counter = _run_counted(model, _input(model, input_size, batch_size), explicit=explicit, train=False)
    return counter.get_total_flops() // 2 // batch_size


def count_train_macs(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1) -> int:
    """Multiply-accumulates of one training step's forward and backward pass (train mode), per image.

    Gradients the count creates are dropped again; parameters that held a gradient before keep it.
    """
    had_grad = {p for p in model.parameters() if p.grad is not None}
    try:
        counter = _run_counted(model, _input(model, input_size, batch_size), explicit=False, train=True)
    finally:
        for p in model.parameters():
            if p not in had_grad:
                p.grad = None
    return counter.get_total_flops() // 2 // batch_size


def module_macs(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, int]:
    """MACs of one inference forward pass of one image, per module: dotted module name -> MACs, the root as ``''``.

    A module's count includes its children's.
    """
    counter = _run_counted(model, _input(model, input_size, 1), explicit=False, train=False)
    root = type(model).__name__
    out = {}
    for name, by_op in counter.get_flop_counts().items():
        if name == "Global":
            continue
        key = "" if name == root else name.removeprefix(root + ".")
        out[key] = sum(by_op.values()) // 2
    return out
