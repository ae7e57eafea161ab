"""Feed-forward block of transformers: Linear -> activation -> dropout -> Linear -> dropout."""

from __future__ import annotations

import torch
from torch import nn

from glocal.backends import cpu as cpu_backend

__all__ = ["Mlp"]

_LINEAR = (nn.Linear, cpu_backend.RoutedLinear)  # not a quantized or adapted layer, whose weight is not the product


class Mlp(nn.Module):
    """(..., in_features) -> (..., out_features).

    ``drop`` is the dropout after the activation and after the output layer; a pair sets them separately (T2T's
    Performer drops only after the output layer). ``forward(x, residual)`` returns ``residual + mlp(x)``: in eval
    mode with the CPU backend on, ``fc1`` and a GELU run as one oneDNN product with the GELU in its epilogue, and
    ``fc2`` with the addition in its epilogue, each where that measured faster (:func:`glocal.backends.cpu.linear_gelu`,
    :func:`~glocal.backends.cpu.linear_add`); otherwise, and with any hook on the layers, the modules are called.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        *,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float | tuple[float, float] = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        drop1, drop2 = drop if isinstance(drop, tuple) else (drop, drop)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop1)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop2 = nn.Dropout(drop2)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training and self._fusable():  # the dropouts are identities in eval mode
            h = cpu_backend.linear_gelu(x, self.fc1.weight, self.fc1.bias, self.act.approximate)
            if residual is None:
                return self.fc2(h)
            return cpu_backend.linear_add(h, self.fc2.weight, self.fc2.bias, residual)
        out = self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
        return out if residual is None else residual + out

    def _fusable(self) -> bool:
        plain = type(self.fc1) in _LINEAR and type(self.fc2) in _LINEAR and type(self.act) is nn.GELU
        return plain and cpu_backend.fusable(self.fc1, self.act, self.fc2)
