"""Parameter and MAC counts.

MACs are multiply-accumulates (papers call them FLOPs): ``torch.utils.flop_counter`` FLOPs / 2, matmuls and
convolutions only. Attention is counted: the count runs inside :func:`~glocal.layers.probe.explicit_attention`, so
every attention product is a visible matmul (the CPU fused kernel is invisible to the counter).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from glocal.layers.probe import explicit_attention

__all__ = ["count_params", "count_macs"]


def count_params(model: nn.Module) -> int:
    """Every parameter, trainable or not, as the papers and official code count them."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass at ``input_size`` (C, H, W), per image."""
    param = next(model.parameters())
    x = torch.zeros((batch_size, *input_size), device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with explicit_attention(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2 // batch_size
