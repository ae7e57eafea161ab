"""Exponential moving average of a model's weights (Polyak averaging), as DeiT and timm keep it, with a warmup."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEma"]

# The warmup of timm's ModelEmaV3 (and TensorFlow's num_updates): decay_t = 1 - (1 + t) ** -power, capped at decay.
_WARMUP_POWER = 0.75


class ModelEma(nn.Module):
    """A frozen copy of ``model`` updated after every optimiser step: ``ema = d * ema + (1 - d) * weights``.

    With ``warmup`` (the default) the decay ``d`` ramps up with the step count, ``d_t = min(decay, 1 - (1 + t) **
    -0.75)``: 0 at the first step (a copy), 0.99 after 460 steps, 0.999 after 10,000, so the average forgets the
    initialisation; without it a decay such as DeiT's 0.99996 keeps the random initial weights for ~25,000 steps.
    Floating-point buffers (BatchNorm running statistics) are averaged the same way; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup

    def decay_at(self, step: int) -> float:
        """The decay applied at optimiser step ``step`` (0-based)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + step) ** -_WARMUP_POWER)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average in ``model``'s weights after optimiser step ``step`` (0-based; the warmup reads it)."""
        weight = 1.0 - self.decay_at(step)
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.lerp_(current[name].detach(), weight)
            else:
                value.copy_(current[name])
