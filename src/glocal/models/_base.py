"""The model contract every glocal backbone implements, and the helpers it is written with.

A :class:`Backbone` maps (B, in_chans, H, W) images to logits and exposes:

* ``forward_features(x)``: unpooled features (NCHW for convolutional and pyramid models, (B, N, C) tokens for
  plain transformers);
* ``forward_head(x, pre_logits=False)``: logits, or the pooled (B, num_features) vector;
* ``forward(x)``: logits, the same type in train and eval;
* ``forward_intermediates(x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
  intermediates_only=False)``: timm's signature and return value, ``(final, intermediates)`` or the intermediates
  alone;
* ``feature_info``: a :class:`FeatureInfo` (timm's ``channels()``, ``reduction()``, ``module_name()``,
  ``get_dicts()``, indexing), and ``prune_intermediate_layers(indices, prune_norm, prune_head)`` to drop what the
  taps do not use;
* ``reset_classifier(num_classes)``, ``no_weight_decay()``; ``data_config`` with the input size and normalisation.

Input checks (rank, channels, minimum size) live here, once, in :meth:`Backbone.check_input`; every family's
first step is :meth:`Backbone.prepare_input`, which checks and, while the CPU backend (:mod:`glocal.backends.cpu`)
is on, hands the image over in channels-last memory layout (NHWC strides, same shape and values). On CPU, oneDNN's
convolutions and their backward run about 1.2-1.4x faster on channels-last tensors (ResNet-50, batch 8), and the
layout propagates through convolutions, norms and activations; token models gain less (their first conv turns into a
reshape-free flatten). With the backend off the image keeps the caller's layout (torch's standard path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from glocal.backends import cpu as cpu_backend
from glocal.validate import check_input_tensor

__all__ = ["Backbone", "DataConfig", "FeatureInfo", "resolve_indices", "tap", "to_2tuple"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureInfo:
    """The pyramid taps of a model, with the behaviour of timm's ``FeatureInfo``.

    ``info`` holds one dict per tap (``num_chs``, ``reduction``, ``module``, ``index``); ``out_indices`` the taps a
    ``features_only`` model returns (every tap on a full model). ``channels()``, ``reduction()`` and
    ``module_name()`` answer for ``out_indices`` by default, for one tap with an int ``idx`` or for a list of taps;
    ``info[i]`` is the dict of tap ``i`` and ``len(info)`` counts every tap, as in timm. Detection and segmentation
    wrappers (mmdet's ``TIMMBackbone``, segmentation_models_pytorch's ``tu-`` encoders, Hugging Face's timm wrapper)
    read exactly these.
    """

    def __init__(self, taps: list[dict], out_indices: tuple[int, ...] | list[int] | None = None) -> None:
        self.info = [{**tap, "index": i} for i, tap in enumerate(taps)]
        self.out_indices = tuple(range(len(taps)) if out_indices is None else out_indices)

    def from_other(self, out_indices: tuple[int, ...] | list[int]) -> FeatureInfo:
        """The same taps, answering for ``out_indices``."""
        return FeatureInfo(self.info, out_indices)

    def get(self, key: str, idx: int | list[int] | tuple[int, ...] | None = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: list[str] | None = None, idx: int | list[int] | tuple[int, ...] | None = None):
        """The taps' dicts (restricted to ``keys`` when given), for ``out_indices`` or ``idx``."""

        def pick(i: int) -> dict:
            return dict(self.info[i]) if keys is None else {k: self.info[i][k] for k in keys}

        if idx is None:
            return [pick(i) for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [pick(i) for i in idx]
        return pick(idx)

    def channels(self, idx: int | list[int] | tuple[int, ...] | None = None):
        return self.get("num_chs", idx)

    def reduction(self, idx: int | list[int] | tuple[int, ...] | None = None):
        return self.get("reduction", idx)

    def module_name(self, idx: int | list[int] | tuple[int, ...] | None = None):
        return self.get("module", idx)

    def __getitem__(self, item: int) -> dict:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo({self.get_dicts(['num_chs', 'reduction', 'module'])}, out_indices={self.out_indices})"


def tap(num_chs: int, reduction: int, module: str) -> dict:
    """One pyramid tap for :class:`FeatureInfo`: its channels, its stride relative to the input, its module."""
    return {"num_chs": num_chs, "reduction": reduction, "module": module}


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
    feature_info: FeatureInfo
    data_config: DataConfig
    # The smallest input height and width (every family states its rule; any size from here runs).
    min_input_size: int = 32
    # Checkpoint adaptation: the module whose weight takes the image channels (adapted for in_chans != 3) and the
    # classifier modules (re-initialised when num_classes differs), as dotted module names.
    first_conv: str = ""
    classifier: tuple[str, ...] = ()
    # Exports with dynamic sizes are built over multiples of this: every input size runs eagerly, but branches on
    # the size (BoTNet's position tables, LSA's padding, floored strides) are only generic over such a lattice.
    export_divisor: int = 1
    # Attribute holding the final norm ("" for none), replaced by ``nn.Identity`` when pruned.
    final_norm: str = ""
    # ``features_only`` taps when ``out_indices`` is not given, as timm's (every tap of a hierarchical model; the
    # last three of a plain or single-scale one): None for every tap, n for the last n.
    default_out_indices: int | None = None
    # Memory layout the image is converted to before the first layer (see the module docstring).
    memory_format: torch.memory_format = torch.channels_last

    def __init__(self, cfg, *, num_classes: int, in_chans: int) -> None:
        """Store what every model keeps: its config ``cfg`` (a frozen dataclass with an ``img_size`` field, the one
        place an input size is given: ``create_model(name, img_size=...)`` for every family), ``num_classes``,
        ``in_chans`` and ``img_size`` as an (H, W) pair."""
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = to_2tuple(cfg.img_size)

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
        low = self.min_input_size
        if H < low or W < low:
            raise ValueError(f"{type(self).__name__} accepts heights and widths of at least {low}, got {H}x{W}")

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
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        """timm's ``forward_intermediates``: ``(final, intermediates)``, or the intermediates alone.

        ``indices``: ``None`` for every tap of :attr:`feature_info`, an int ``n`` for the last n, or tap indices
        (negative ones count from the end). The intermediates are (B, C, H / reduction, W / reduction) maps in tap
        order (``output_fmt="NLC"``: (B, H*W / reduction^2, C) tokens). ``norm=True`` applies the final norm to the
        taps it fits (a family's docstring says which). ``final`` is ``forward_features(x)``; with ``stop_early``
        the model stops after the last requested tap and ``final`` is the last computed features instead.
        ``intermediates_only=True`` returns the list and always stops early (nothing after the last tap is seen).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        taps = resolve_indices(indices, len(self.feature_info))
        final, maps = self._intermediates(x, taps, norm=norm, stop_early=stop_early or intermediates_only)
        if output_fmt == "NLC":
            maps = [m.flatten(2).transpose(1, 2) for m in maps]  # each (B, H_i * W_i, C_i)
        return maps if intermediates_only else (final, maps)

    def _intermediates(
        self, x: torch.Tensor, taps: list[int], *, norm: bool, stop_early: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The family's part of :meth:`forward_intermediates`: final features and NCHW maps at sorted ``taps``."""
        raise NotImplementedError

    def prune_intermediate_layers(
        self,
        indices: int | list[int] | tuple[int, ...] | None = None,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """timm's pruning: remove every module after the last requested tap, the classifier (``prune_head``) and
        the final norm (``prune_norm``; a norm the remaining taps cannot use goes regardless); returns the taps.

        Pruned modules become ``nn.Identity`` (the norm) or disappear, so a pruned model's remaining parameters all
        take part in ``forward_intermediates`` and DistributedDataParallel needs no ``find_unused_parameters``."""
        taps = resolve_indices(indices, len(self.feature_info))
        self._prune_after(taps[-1])
        if prune_head:
            self._prune_head()
        if prune_norm and self.final_norm:
            setattr(self, self.final_norm, nn.Identity())
        return taps

    def _prune_after(self, last_tap: int) -> None:
        """Remove the modules that only run after tap ``last_tap``."""
        raise NotImplementedError

    def _prune_head(self) -> None:
        self.reset_classifier(0)

    def reset_classifier(self, num_classes: int) -> None:
        """New classifier(s) for ``num_classes`` (0: none, ``forward`` returns pooled features), initialised as at
        construction."""
        self.num_classes = num_classes
        for name in self.classifier:
            head = self._make_head(num_classes)
            head.apply(self._init_head)
            setattr(self, name, head)

    def _init_head(self, module: nn.Module) -> None:
        """The construction's initialisation of a classifier layer; PyTorch's default unless a family overrides it."""

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adapt size-dependent tensors of a checkpoint (absolute position embeddings, relative tables) to this
        model's configured input size; families with such tensors override it. Keys are this model's names."""
        return state_dict

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (besides norms and biases) that optimisers should not decay."""
        return set()

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
