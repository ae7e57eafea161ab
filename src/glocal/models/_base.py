"""The model contract every glocal backbone implements, and the helpers it is written with.

A :class:`Backbone` maps (B, in_chans, H, W) images to logits and exposes:

* ``forward_features(x)``: unpooled features (NCHW for convolutional and pyramid models, (B, N, C) tokens for
  plain transformers);
* ``forward_head(x, pre_logits=False)``: logits, or the pooled (B, num_features) vector;
* ``forward(x)``: logits, the same type in train and eval;
* ``forward_intermediates(x, indices=None, norm=False)``: a list of NCHW maps, one per requested tap;
* ``feature_info``: the channels and reduction of every tap, ``prune_intermediate_layers(indices)`` to drop what the
  taps do not use;
* ``reset_classifier(num_classes)``, ``no_weight_decay()``; ``data_config`` with the input size and normalisation.

Input checks (rank, channels, size divisibility) live here, once, in :meth:`Backbone.check_input`; every family's
first step is :meth:`Backbone.prepare_input`, which checks and, while the CPU backend (:mod:`glocal.backends.cpu`)
is on, hands the image over in channels-last memory layout (NHWC strides, same shape and values). On CPU, oneDNN's
convolutions and their backward run about 1.2-1.4x faster on channels-last tensors (ResNet-50, batch 8), and the
layout propagates through convolutions, norms and activations; token models gain less (their first conv turns into a
reshape-free flatten). With the backend off the image keeps the caller's layout (torch's standard path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from glocal.backends import cpu as cpu_backend
from glocal.validate import check_input_tensor

__all__ = ["Backbone", "DataConfig", "FeatureInfo", "resolve_indices", "to_2tuple"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FeatureInfo:
    """One pyramid tap: its channels, its stride relative to the input, and the module producing it."""

    num_chs: int
    reduction: int
    module: str


@dataclass(frozen=True)
class DataConfig:
    """How images should reach the model: default size, normalisation, evaluation crop and interpolation."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    # Whether any size accepted by ``check_input`` may be fed (position tables adapt on the fly).
    dynamic_size: bool = True
    extra: dict = field(default_factory=dict)


def to_2tuple(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(size)
    if len(size) != 2:
        raise ValueError(f"expected an int or an (H, W) pair, got {size!r}")
    return size


def resolve_indices(indices: int | list[int] | tuple[int, ...] | None, num_taps: int) -> list[int]:
    """Tap indices as sorted non-negative ints: ``None`` means all, an int ``n`` the last n, negatives count back."""
    if indices is None:
        return list(range(num_taps))
    if isinstance(indices, int):
        if not 1 <= indices <= num_taps:
            raise ValueError(f"asked for the last {indices} taps, but the model has {num_taps}")
        return list(range(num_taps - indices, num_taps))
    out = []
    for i in indices:
        if not -num_taps <= i < num_taps:
            raise ValueError(f"tap index {i} out of range for a model with {num_taps} taps (0..{num_taps - 1})")
        out.append(i % num_taps)
    if len(set(out)) != len(out):
        raise ValueError(f"tap indices {list(indices)} name the same tap twice")
    return sorted(out)


class Backbone(nn.Module):
    """Base class of every registered model; subclasses set the attributes below in ``__init__``."""

    num_classes: int
    num_features: int
    in_chans: int
    feature_info: list[FeatureInfo]
    data_config: DataConfig
    # Input height and width must be multiples of this and at least ``min_input_size``.
    input_divisor: int = 1
    min_input_size: int = 32
    # Checkpoint adaptation: the module whose weight takes the image channels (adapted for in_chans != 3) and the
    # classifier modules (re-initialised when num_classes differs), as dotted module names.
    first_conv: str = ""
    classifier: tuple[str, ...] = ()
    # Memory layout the image is converted to before the first layer (see the module docstring).
    memory_format: torch.memory_format = torch.channels_last

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming what is accepted when ``x`` is not a (B, in_chans, H, W) batch of usable size."""
        if x.ndim != 4:
            raise ValueError(
                f"{type(self).__name__} expects a 4-D (B, {self.in_chans}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__} was built for {self.in_chans} input channels, got {x.shape[1]} "
                f"(shape {tuple(x.shape)}); pass in_chans={x.shape[1]} to create_model"
            )
        H, W = x.shape[-2:]
        div, low = self.input_divisor, self.min_input_size
        if H < low or W < low or H % div or W % div:
            raise ValueError(
                f"{type(self).__name__} accepts heights and widths that are multiples of {div} and at least {low}, "
                f"got {H}x{W}"
            )

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """:func:`glocal.validate.check_input_tensor` (a tensor of the model's dtype, finite, of a size that fits in
        memory), ``check_input``, then, while the CPU backend is on, ``x`` in this model's ``memory_format`` (a copy
        only when the layout differs); with it off ``x`` as given.

        Traced and exported graphs get ``x`` as it is: a layout is an eager-mode speed matter (ONNX has none), and
        strides baked into a graph with dynamic sizes can make its reshapes fail."""
        if cpu_backend.capturing_graph():
            self.check_input(x)
            return x
        x = check_input_tensor(self, x)
        self.check_input(x)
        return cpu_backend.prepare_input(x, self.memory_format)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | tuple[int, ...] | None = None, norm: bool = False
    ) -> list[torch.Tensor]:
        raise NotImplementedError

    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] | None = None, *, prune_norm: bool = True
    ) -> list[int]:
        """Remove every module the requested taps do not need (head, later stages, and the final norm unless
        ``prune_norm=False`` keeps it for ``forward_intermediates(norm=True)``); returns the taps."""
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adapt size-dependent tensors of a checkpoint (absolute position embeddings, relative tables) to this
        model's configured input size; families with such tensors override it. Keys are this model's names."""
        return state_dict

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (besides norms and biases) that optimisers should not decay."""
        return set()

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
