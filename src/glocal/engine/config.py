"""The training configuration: one typed dataclass, filled from a YAML recipe and then from command-line flags."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glocal.data.transforms import INTERPOLATIONS
from glocal.validate import check_fields

__all__ = ["TrainConfig", "load_recipe"]


@dataclass
class TrainConfig:
    """Everything a training run depends on. Saved as ``config.yaml`` beside the checkpoints.

    ``batch_size`` is the global batch: data-parallel ranks split it, so a recipe means the same optimisation on any
    number of processes. ``lr`` and ``min_lr`` are for ``lr_base_size`` images and scaled linearly to the global
    batch (Goyal et al. 2017; DeiT's lr 5e-4 x batch / 512); without ``lr_base_size`` they are used as given.
    """

    # Registered model name; None takes the one saved in ``checkpoint``.
    model: str | None = None
    # create_model overrides: run-time options (drop_path_rate, drop_rate) or architecture fields (depths, widths).
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # ImageFolder root with train/ and val/ class folders; None trains on the bundled digits.
    data: str | None = None
    # Input size, S or [H, W]; None takes the checkpoint's, else the model's default (data_config.input_size).
    img_size: int | tuple[int, int] | None = None
    # Fine-tuning: initial weights from any checkpoint glocal can load; the classifier is re-made for the new classes.
    checkpoint: str | None = None
    # Fine-tuning from published weights instead: true (the model's default tag) or a tag (see `glocal weights`).
    pretrained: bool | str = False
    output: str | None = None
    resume: bool = False
    epochs: int = 10
    batch_size: int = 128
    # Stop after this many optimiser steps in all (None: run every epoch); a checkpoint is written on stopping.
    max_steps: int | None = None
    # Data-loading processes; None: none for the in-memory digits, else up to 8 of the CPUs this process may use.
    workers: int | None = None
    # Intra-op CPU threads per process; None: the CPUs this process may use (os.sched_getaffinity and the cgroup
    # quota, not the machine's core count) shared among the processes of this node, less the data workers.
    threads: int | None = None
    seed: int = 0
    device: str = "auto"  # 'auto' | 'cpu' | 'cuda'
    # Mixed precision: 'none' | 'bf16' | 'fp16' (CUDA only, with a gradient scaler) | 'auto' (bf16 on CUDA, none on CPU)
    amp: str = "auto"

    optimizer: str = "sgd"  # 'sgd' (momentum, Nesterov optional) | 'adamw'
    lr: float = 0.1
    # The batch size ``lr`` and ``min_lr`` are given for (256 for SGD recipes, 512 for DeiT's); None: as given.
    lr_base_size: int | None = None
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # 'cosine' | 'step' | 'poly' | 'constant', applied per step after the warmup
    # 'poly': lr = (lr - min_lr) * (1 - progress) ** poly_power + min_lr (mmseg's PolyLR).
    poly_power: float = 0.9
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    step_epochs: tuple[int, ...] = (30, 60, 90)
    step_gamma: float = 0.1
    clip_grad: float | None = None
    ema_decay: float | None = None
    # Ramp the EMA decay up with the step count (ModelEmaV3's warmup), so a short run's average is not its init.
    ema_warmup: bool = True

    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    # The eval view (glocal.data.create_transform): crop fraction and resize filter; None takes the model's
    # data_config (for the bundled digits: the whole image, bilinear, as the training crops are sampled).
    crop_pct: float | None = None
    interpolation: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from plain data (a parsed recipe), converting lists to tuples; unknown keys raise ``ValueError``."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=2)
                hints.append(f"{key!r} (did you mean {', '.join(close)}?)" if close else repr(key))
            raise ValueError(f"unknown training option(s): {', '.join(hints)}; see `glocal train --help`")
        if not values.get("model") and not values.get("checkpoint"):
            raise ValueError(
                "the training config needs a model name (--model NAME or `model:` in the recipe) or a --checkpoint "
                "that holds one"
            )
        return cls(**check_fields(cls, values, where="training option", numeric_strings=True))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        """Raise ``ValueError`` on settings that cannot run."""
        choices = {"optimizer": ("sgd", "adamw"), "schedule": ("cosine", "step", "poly", "constant")}
        choices |= {"amp": ("auto", "none", "bf16", "fp16"), "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.lr_base_size is not None and self.lr_base_size < 1:
            raise ValueError(f"lr_base_size must be a positive number of images, got {self.lr_base_size}")
        inf = math.inf
        # name: (low, high, low included, high included)
        ranges = {
            "lr": (0, inf, False, False), "min_lr": (0, inf, True, False), "weight_decay": (0, inf, True, False),
            "momentum": (0, 1, True, False), "label_smoothing": (0, 1, True, False),
            "warmup_epochs": (0, inf, True, False), "step_gamma": (0, inf, False, False),
            "mixup": (0, inf, True, False), "cutmix": (0, inf, True, False), "mix_prob": (0, 1, True, True),
            "mix_switch_prob": (0, 1, True, True), "hflip": (0, 1, True, True),
        }  # fmt: skip
        for name, (low, high, low_in, high_in) in ranges.items():
            value = getattr(self, name)
            above = low <= value if low_in else low < value
            below = value <= high if high_in else value < high
            if not (above and below):
                interval = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
                raise ValueError(f"{name} must be in {interval}, got {value}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"clip_grad must be a positive gradient norm (or null), got {self.clip_grad}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) (or null), got {self.ema_decay}")
        for name in ("crop_scale", "crop_ratio"):
            low, high = getattr(self, name)
            top = 1.0 if name == "crop_scale" else math.inf
            if not 0 < low <= high <= top:
                rule = "0 < min <= max <= 1 (fractions of the image area)" if top == 1 else "0 < min <= max"
                raise ValueError(f"{name} must be [min, max] with {rule}, got {[low, high]}")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 2:
            raise ValueError(f"crop_pct must be in (0, 2], got {self.crop_pct}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS} (or null), got {self.interpolation!r}")
        if self.pretrained and self.checkpoint is not None:
            raise ValueError(
                f"give the weights once: checkpoint {self.checkpoint!r} or pretrained {self.pretrained!r} to start "
                f"from, not both"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 (or null: what the machine can give), got {self.threads}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be 0 or more data-loading processes (or null), got {self.workers}")
        size = self.img_size
        sizes = (size,) if isinstance(size, int) else tuple(size) if size is not None else (1,)
        if len(sizes) not in (1, 2) or any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"img_size must be one positive size or [height, width], got {size!r}")

    def scaled_lr(self) -> tuple[float, float]:
        """The peak and final learning rates for the global batch (``lr`` and ``min_lr`` scaled from
        ``lr_base_size`` images)."""
        factor = self.batch_size / self.lr_base_size if self.lr_base_size else 1.0
        return self.lr * factor, self.min_lr * factor


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A YAML recipe as a dict of training options."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(
            f"recipe {str(path)!r} is not valid YAML{line}: {problem} (recipes hold plain values only; YAML tags such "
            f"as !!python/object are refused)"
        ) from err
    if not isinstance(values, dict):
        raise ValueError(f"recipe {str(path)!r} must be a mapping of option: value")
    return values
