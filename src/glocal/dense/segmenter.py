"""Segmenters and detection backbones on any glocal backbone.

:func:`create_segmenter` builds backbone -> (neck) -> head:

* hierarchical backbones (ResNet family, BoTNet, Twins) tap their four stages (strides 4-32);
* plain transformers (ViT, T2T-ViT, VOLO; last tap at stride 16) go through ViTDet's
  :class:`~glocal.dense.necks.SimpleFeaturePyramid` on their last map, which stands in for the FPN;
* ``head="semantic_fpn"``: FPN (256 channels) + :class:`~glocal.dense.heads.SemanticFPNHead`;
  ``head="upernet"``: :class:`~glocal.dense.heads.UPerHead` plus the auxiliary FCN head on stage 3.

The image is zero-padded (after normalisation: the mean) at the bottom and right to a multiple of 32 (and of the
backbone's divisor), and the logits are upsampled bilinearly and cropped back, so any input size gives logits of that
size. Twins-SVT stages get a LayerNorm each, as mmseg's SVT configs (``norm_after_stage=True``); Twins-PCPVT's do
not (``norm_after_stage=False`` in ``_base_/models/twins_pcpvt-s_fpn.py`` and ``twins_pcpvt-s_upernet.py``).

A segmenter saves and loads as a classifier does (``save_checkpoint(segmenter, folder)``: ``model.safetensors``
+ ``config.json`` with ``"task": "segment"``, the backbone's name and config, and a ``segment`` entry: head, head
width, label settings, palette and the :class:`~glocal.dense.evaluate.SegInference` settings), and
``create_segmenter(checkpoint=folder_or_last_pt)`` rebuilds it from that alone.

Backbone options dense training uses: ``frozen_stages`` and ``frozen_bn`` (ResNet family, mmdet's ``frozen_stages``
and ``norm_eval``), ``drop_path_rate`` (passed to the families that have stochastic depth), ``grad_checkpointing``
(every residual block recomputed in the backward pass), and :func:`layer_decay_groups` for layer-wise learning-rate
decay of the transformers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from glocal.dense.evaluate import SegInference
from glocal.dense.heads import FCNHead, SemanticFPNHead, UPerHead
from glocal.dense.necks import FPN, LayerNorm2d, SimpleFeaturePyramid
from glocal.factory import _as_tuples, _saved_preprocessing, create_model
from glocal.layers.block import TransformerBlock
from glocal.models._features import FeaturePyramid
from glocal.models.resnet import Bottleneck, ResNet
from glocal.models.twins import Twins
from glocal.weights import Checkpoint, CheckpointMismatchError, open_checkpoint, resolve_model_name

__all__ = [
    "HEADS",
    "BackboneWithFPN",
    "PyramidBackbone",
    "Segmenter",
    "create_segmenter",
    "enable_grad_checkpointing",
    "layer_decay_groups",
    "load_segmenter_weights",
]

HEADS = ("semantic_fpn", "upernet")
AUX_WEIGHT = 0.4  # mmseg's UPerNet configs: auxiliary FCN loss weight


class PyramidBackbone(nn.Module):
    """(B, 3, H, W) -> four maps at strides 4, 8, 16, 32, whatever the backbone family."""

    def __init__(self, backbone: nn.Module, *, sfp_channels: int = 256) -> None:
        super().__init__()
        reductions = backbone.feature_info.reduction()
        self.input_divisor = math.lcm(backbone.export_divisor, 32)
        self.min_input_size = backbone.min_input_size
        self.plain = reductions[-1] != 32
        if self.plain:
            self.body = FeaturePyramid(backbone, [len(reductions) - 1])
            self.sfp = SimpleFeaturePyramid(backbone.feature_info.channels()[-1], reductions[-1], sfp_channels)
            self.channels = [sfp_channels] * 4
        else:
            taps = [reductions.index(s) for s in (4, 8, 16, 32)]
            self.body = FeaturePyramid(backbone, taps)
            self.channels = [backbone.feature_info.channels()[i] for i in taps]
            self.sfp = None
        svt = isinstance(backbone, Twins) and backbone.cfg.window_sizes is not None
        self.stage_norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in self.channels) if svt else None

    @property
    def backbone(self) -> nn.Module:
        return self.body.backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.body(x)
        if self.sfp is not None:
            return self.sfp(maps[-1])
        if self.stage_norms is not None:
            maps = [norm(m) for norm, m in zip(self.stage_norms, maps, strict=True)]
        return maps


class Segmenter(nn.Module):
    """(B, 3, H, W) -> logits (B, num_classes, H, W) for any H, W; ``forward_train`` adds the auxiliary logits.

    What its checkpoint records beside the weights: ``inference`` (how it is evaluated), ``reduce_zero_label`` (the
    label convention it was trained on) and ``palette`` (its classes' colours, when the dataset had them)."""

    task = "segment"

    def __init__(self, pyramid: PyramidBackbone, head: str, num_classes: int, head_channels: int | None = None) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.pyramid = pyramid
        self.head_name = head
        self.head_channels = head_channels
        self.num_classes = num_classes
        self.inference = SegInference()
        self.reduce_zero_label = False
        self.palette: tuple[tuple[int, int, int], ...] | None = None
        self.aux_head = None
        if head == "semantic_fpn":
            self.neck = nn.Identity() if pyramid.plain else FPN(pyramid.channels, 256)
            self.decode_head = SemanticFPNHead([256] * 4, num_classes, channels=head_channels or 128)
        else:
            self.neck = nn.Identity()
            self.decode_head = UPerHead(pyramid.channels, num_classes, channels=head_channels or 512)
            self.aux_head = FCNHead(pyramid.channels[2], num_classes, channels=head_channels or 256)
        self.frozen_bn = False
        self.frozen_modules: list[nn.Module] = []

    @property
    def data_config(self):
        return self.pyramid.backbone.data_config

    @data_config.setter
    def data_config(self, value) -> None:
        self.pyramid.backbone.data_config = value

    @property
    def model_name(self) -> str | None:
        """The backbone's registered name."""
        return getattr(self.pyramid.backbone, "model_name", None)

    @property
    def cfg(self):
        """The backbone's family config (what rebuilds it)."""
        return self.pyramid.backbone.cfg

    @property
    def in_chans(self) -> int:
        return self.pyramid.backbone.in_chans

    def checkpoint_fields(self) -> dict[str, Any]:
        """The ``config.json`` entries a segmenter adds to a backbone's (:func:`glocal.save_checkpoint`)."""
        segment = {
            "head": self.head_name,
            "head_channels": self.head_channels,
            "reduce_zero_label": self.reduce_zero_label,
            "palette": [list(c) for c in self.palette] if self.palette is not None else None,
            **dataclasses.asdict(self.inference),
        }
        return {"task": self.task, "segment": segment}

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        div, low = self.pyramid.input_divisor, self.pyramid.min_input_size
        Hp, Wp = max(math.ceil(H / div) * div, low), max(math.ceil(W / div) * div, low)
        return F.pad(x, (0, Wp - W, 0, Hp - H))

    def _logits(self, x: torch.Tensor, with_aux: bool) -> dict[str, torch.Tensor]:
        H, W = x.shape[-2:]
        padded = self._pad(x)
        maps = self.pyramid(padded)
        out = {"out": self.decode_head(self.neck(maps))}
        if with_aux and self.aux_head is not None:
            out["aux"] = self.aux_head(maps[2])
        size = padded.shape[-2:]
        return {
            k: F.interpolate(v, size=size, mode="bilinear", align_corners=False)[..., :H, :W] for k, v in out.items()
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x, with_aux=False)["out"]

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"out": logits, "aux": auxiliary logits (UPerNet)}``, each (B, num_classes, H, W)."""
        return self._logits(x, with_aux=True)

    def loss(self, logits: dict[str, torch.Tensor], target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        """Cross-entropy over labelled pixels, plus ``AUX_WEIGHT`` x the auxiliary head's."""
        loss = F.cross_entropy(logits["out"].float(), target, ignore_index=ignore_index)
        if "aux" in logits:
            loss = loss + AUX_WEIGHT * F.cross_entropy(logits["aux"].float(), target, ignore_index=ignore_index)
        return loss

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        if self.frozen_bn:
            for module in self.pyramid.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        return {f"pyramid.body.backbone.{n}" for n in self.pyramid.backbone.no_weight_decay()}


def load_segmenter_weights(segmenter: Segmenter, path: str | os.PathLike | Checkpoint, *, ema: bool = False) -> None:
    """Load a segmenter's weights from a model folder, a training state (``last.pt``; ``ema`` picks ``model_ema``)
    or a state-dict file, read by :func:`glocal.weights.open_checkpoint` (tensors only, nothing unpickled)."""
    ckpt = path if isinstance(path, Checkpoint) else open_checkpoint(path, ema=ema)
    try:
        segmenter.load_state_dict(ckpt.tensors)
    except RuntimeError as err:
        raise CheckpointMismatchError(
            f"{ckpt.path} does not hold this segmenter's weights ({segmenter.model_name} + {segmenter.head_name}, "
            f"{segmenter.num_classes} classes): {str(err).splitlines()[0]}"
        ) from err


def _checkpointed_forward(self: nn.Module, *args):
    if torch.is_grad_enabled():
        return checkpoint(type(self).forward, self, *args, use_reentrant=False)
    return type(self).forward(self, *args)


def enable_grad_checkpointing(module: nn.Module) -> int:
    """Recompute every residual block (transformer block, bottleneck) of ``module`` in the backward pass instead of
    keeping its activations; returns how many blocks. State-dict keys are unchanged."""
    count = 0
    for block in module.modules():
        if isinstance(block, (TransformerBlock, Bottleneck)):
            block.forward = types.MethodType(_checkpointed_forward, block)
            count += 1
    return count


def _freeze(segmenter: Segmenter, frozen_stages: int, frozen_bn: bool) -> None:
    backbone = segmenter.pyramid.backbone
    if (frozen_stages >= 0 or frozen_bn) and not isinstance(backbone, ResNet):
        raise ValueError(f"frozen_stages and frozen_bn apply to the ResNet family, not {type(backbone).__name__}")
    if frozen_stages > 4:
        raise ValueError(f"frozen_stages counts 0 (stem) to 4 (layer4), got {frozen_stages}")
    if frozen_stages >= 0:
        modules = [backbone.conv1, backbone.bn1] + [getattr(backbone, f"layer{i}") for i in range(1, frozen_stages + 1)]
        for module in modules:
            module.requires_grad_(False)
        segmenter.frozen_modules = modules
    if frozen_bn:
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.requires_grad_(False)
        segmenter.frozen_bn = True
    segmenter.train(segmenter.training)


def create_segmenter(
    name: str | None = None,
    *,
    head: str | None = None,
    num_classes: int | None = None,
    pretrained: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | Checkpoint | None = None,
    ema: bool = False,
    frozen_stages: int = -1,
    frozen_bn: bool = False,
    grad_checkpointing: bool = False,
    head_channels: int | None = None,
    **backbone_kwargs: Any,
) -> Segmenter:
    """A semantic segmenter on registered backbone ``name`` (default head ``"upernet"``, 150 classes: ADE20K).

    ``pretrained``: backbone weights (any checkpoint ``glocal.load_checkpoint`` reads; the classifier is dropped).
    ``checkpoint``: a whole segmenter. A model folder or ``last.pt`` of ``glocal train --task segment`` rebuilds it
    from the checkpoint alone (backbone and its config, head, classes, preprocessing, inference settings); ``name``,
    ``head``, ``num_classes`` and ``head_channels`` may be left out and must not contradict it; ``ema`` takes a
    training state's EMA weights. A plain state-dict file of a segmenter needs them all. ``head_channels`` replaces
    the heads' widths (mmseg's 128 for Semantic FPN, 512 and 256 for UPerNet and its auxiliary head; smaller for
    quick experiments). ``backbone_kwargs`` go to ``create_model`` (``drop_path_rate=0.2``, ``depths=...``).
    """
    ckpt = None
    if checkpoint is not None:
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint, ema=ema)
        if ckpt.task == "classify" and ckpt.layout == "glocal":
            raise ValueError(
                f"{ckpt.path} is a classifier's checkpoint, not a segmenter's; pass it as pretrained= (backbone "
                f"weights) or use glocal.create_model"
            )
    saved = ckpt.segment if ckpt is not None and ckpt.segment is not None else {}
    if saved:
        name = resolve_model_name(name, ckpt)
        head = _agree("head", head, saved["head"], ckpt)
        num_classes = _agree("num_classes", num_classes, ckpt.num_classes, ckpt)
        head_channels = _agree("head_channels", head_channels, saved.get("head_channels"), ckpt)
        backbone_kwargs = {**{k: _as_tuples(v) for k, v in ckpt.config.items()}, **backbone_kwargs}
    elif name is None:
        raise ValueError("create_segmenter needs a backbone name (see glocal.list_models()) or a segmenter checkpoint")
    backbone = create_model(name, num_classes=0, checkpoint=pretrained, **backbone_kwargs)
    segmenter = Segmenter(PyramidBackbone(backbone), head or "upernet", 150 if num_classes is None else num_classes,
                          head_channels)  # fmt: skip
    if saved:
        segmenter.data_config = _saved_preprocessing(segmenter.data_config, ckpt.data_config or {})
        if ckpt.input_size is not None:  # the crop it was trained on
            segmenter.data_config = dataclasses.replace(
                segmenter.data_config, input_size=(segmenter.in_chans, *ckpt.input_size)
            )
        segmenter.inference = SegInference(
            **{f.name: _as_tuples(saved[f.name]) for f in dataclasses.fields(SegInference)}
        )
        segmenter.reduce_zero_label = saved["reduce_zero_label"]
        segmenter.palette = _as_tuples(saved.get("palette"))
    if ckpt is not None:
        load_segmenter_weights(segmenter, ckpt)
    _freeze(segmenter, frozen_stages, frozen_bn)
    if grad_checkpointing:
        enable_grad_checkpointing(segmenter.pyramid)
    return segmenter


def _agree(what: str, given: Any, saved: Any, ckpt: Checkpoint) -> Any:
    """The checkpoint's ``what`` unless ``given`` contradicts it (then a ValueError saying so)."""
    if given is not None and given != saved:
        raise ValueError(
            f"{what}={given!r} contradicts the checkpoint {ckpt.path}, which holds a segmenter with {what} {saved!r}; "
            f"leave it out (the checkpoint knows it)"
        )
    return saved


def _block_order(segmenter: Segmenter) -> tuple[dict[str, int], int]:
    """Layer id of every backbone module: embeddings 0, the i-th residual block executed i, modules between blocks
    (patch merging, position convs) the id of the block before them. Found by running one small image."""
    backbone = segmenter.pyramid.body
    names = {m: n for n, m in backbone.named_modules()}
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, _: order.append(names[mod])) for m in backbone.modules()]
    size = segmenter.pyramid.input_divisor * max(1, math.ceil(segmenter.pyramid.min_input_size / 32))
    was_training = backbone.training
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, backbone.backbone.in_chans, size, size))
    finally:
        backbone.train(was_training)
        segmenter.train(segmenter.training)
        for h in hooks:
            h.remove()
    layer_of, current, inside = {}, 0, None
    block_names = {n for n, m in backbone.named_modules() if isinstance(m, (TransformerBlock, Bottleneck))}
    for name in order:
        if name in layer_of:
            continue
        if name in block_names:
            current += 1
            inside = name
        elif inside is not None and not name.startswith(inside + "."):
            inside = None
        layer_of[name] = current
    return layer_of, current


def layer_decay_groups(segmenter: Segmenter, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """Parameter groups with ``lr * layer_decay ** (L + 1 - layer)`` (BEiT/MAE layer-wise decay): the neck and heads
    at ``lr``, the last block at ``lr * decay``, the embeddings at ``lr * decay ** (L + 1)``; norms, biases and
    ``no_weight_decay()`` names without weight decay."""
    from glocal.engine.optim import param_groups

    layer_of, depth = _block_order(segmenter)
    prefix = "pyramid.body."
    groups: dict[tuple[int, bool], dict] = {}
    for group in param_groups(segmenter, weight_decay):
        ids = {id(p) for p in group["params"]}
        for name, param in segmenter.named_parameters():
            if id(param) not in ids:
                continue
            layer = depth + 1
            if name.startswith(prefix):
                module = name[len(prefix) :].rsplit(".", 1)[0]
                while module not in layer_of and "." in module:
                    module = module.rsplit(".", 1)[0]
                layer = layer_of.get(module, 0)
            key = (layer, group["weight_decay"] > 0)
            scale = layer_decay ** (depth + 1 - layer)
            groups.setdefault(key, {"params": [], "weight_decay": group["weight_decay"], "lr": lr * scale,
                                    "lr_scale": scale})["params"].append(param)  # fmt: skip
    return list(groups.values())


class BackboneWithFPN(nn.Module):
    """torchvision's detection-backbone interface: (B, 3, H, W) -> ``OrderedDict`` of FPN maps ``"0"``..``"3"``
    (strides 4-32) and ``"pool"`` (stride 64, max pool of the last, torchvision's ``LastLevelMaxPool``), all with
    ``out_channels`` channels. H and W must be multiples of 32 (detectors pad their batches to that)."""

    def __init__(self, name: str, *, out_channels: int = 256, pretrained=None, **backbone_kwargs: Any) -> None:
        super().__init__()
        backbone = create_model(name, num_classes=0, checkpoint=pretrained, **backbone_kwargs)
        self.body = PyramidBackbone(backbone, sfp_channels=out_channels)
        self.fpn = nn.Identity() if self.body.plain else FPN(self.body.channels, out_channels, extra_levels=None)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.fpn(self.body(x))
        out = OrderedDict((str(i), m) for i, m in enumerate(maps))
        out["pool"] = F.max_pool2d(maps[-1], 1, stride=2)
        return out
