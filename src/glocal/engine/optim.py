"""Optimisers with the papers' weight-decay exclusions, and learning-rate schedules with linear warmup."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and the parameters no recipe decays.

    Norm weights and biases (every parameter of fewer than 2 dimensions) and what the model names in
    ``no_weight_decay()`` (position embeddings, class tokens, relative-position tables; a name or a module prefix)
    get no weight decay, as in DeiT, Twins and VOLO.
    """
    skip_names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skipped = param.ndim <= 1 or any(name == s or name.startswith(s + ".") for s in skip_names)
        (no_decay if skipped else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg, groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """SGD with momentum (ResNet, BoTNet) or AdamW (the transformers) over ``groups`` (default:
    :func:`param_groups`; segmenters pass their layer-wise decayed groups)."""
    groups = groups if groups is not None else param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, cfg, steps_per_epoch: int, total_steps: int) -> float:
    """Learning rate at optimiser step ``step`` as a fraction of ``cfg.lr``.

    Linear warmup from 0 over ``warmup_epochs``, then cosine or polynomial (``poly_power``, mmseg's PolyLR) decay to
    ``min_lr`` at ``total_steps``, steps of ``step_gamma`` at each of ``step_epochs``, or constant. Evaluated per
    step, so warmup and decay are smooth.
    """
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "poly":
        return floor + (1 - floor) * (1 - progress) ** cfg.poly_power
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.step_gamma ** sum(epoch >= e for e in cfg.step_epochs)
    return 1.0


def build_scheduler(optimizer, cfg, steps_per_epoch: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step :class:`LambdaLR` over :func:`lr_factor`; its state is just the step count."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, total_steps))
