"""Exponential moving average of a model's weights (Polyak averaging), as DeiT and timm keep it."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma(nn.Module):
    """A frozen copy of ``model`` updated after every optimiser step: ``ema = decay * ema + (1 - decay) * weights``.

    Floating-point buffers (BatchNorm running statistics) are averaged the same way; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.lerp_(current[name].detach(), 1.0 - self.decay)
            else:
                value.copy_(current[name])
