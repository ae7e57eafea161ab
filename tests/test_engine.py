"""Engine pieces: weight-decay groups, schedules, EMA, atomic checkpoints, evaluation, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from glocal import create_model
from glocal.backends import cpu as cpu_backend
from glocal.data import TensorImages
from glocal.engine import TrainConfig, evaluate, load_train_state, train
from glocal.engine.checkpoint import atomic_save, capture_rng, restore_rng
from glocal.engine.ema import ModelEma
from glocal.engine.optim import lr_factor, param_groups

TINY_RESNET = dict(depths=[1, 1, 1, 1], widths=[4, 4, 8, 8], stem_width=8)


class _WithPosEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def test_weight_decay_skips_norms_biases_and_named_parameters():
    model = _WithPosEmbed()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for p in decay["params"]] == ["proj.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["norm.bias", "norm.weight", "pos_embed", "proj.bias"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)


def test_schedules_warm_up_then_decay():
    cfg = TrainConfig(model="resnet50", lr=1.0, warmup_epochs=1, schedule="cosine", min_lr=0.1)
    factors = [lr_factor(s, cfg, steps_per_epoch=10, total_steps=100) for s in range(100)]
    assert factors[0] == pytest.approx(1 / 11) and factors[9] == pytest.approx(10 / 11)
    assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    step = TrainConfig(model="resnet50", lr=1.0, schedule="step", step_epochs=(2, 4), step_gamma=0.1)
    assert [lr_factor(s * 10, step, 10, 100) for s in (0, 1, 2, 3, 4)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_ema_follows_the_equation():
    model = nn.Linear(2, 2)
    ema = ModelEma(model, decay=0.9, warmup=False)
    start = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)
    torch.testing.assert_close(ema.module.weight, 0.9 * start + 0.1 * model.weight)
    assert not ema.module.weight.requires_grad


def test_atomic_save_never_leaves_a_torn_file(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    atomic_save({"x": torch.ones(3)}, path)

    def crash(obj, f):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        atomic_save({"x": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np

    atomic_save({"rng": capture_rng()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_evaluate_counts_and_confusion():
    class Oracle(nn.Module):
        """Predicts class 0 for dark images and 1 for bright ones."""

        def forward(self, x):
            bright = (x.mean((1, 2, 3)) > 0).float()
            return torch.stack([1 - bright, bright, torch.zeros_like(bright)], 1)

    images = torch.cat([torch.zeros(3, 3, 4, 4), torch.full((3, 3, 4, 4), 255)]).to(torch.uint8)
    data = TensorImages(images=images, labels=torch.tensor([0, 0, 1, 1, 1, 2]), classes=("a", "b", "c"))
    result = evaluate(
        Oracle(), data, img_size=(4, 4), mean=(0.5,) * 3, std=(0.5,) * 3, batch_size=4,
        device=torch.device("cpu"),
    )  # fmt: skip
    assert result.count == 6 and result.top1 == pytest.approx(400 / 6)
    assert result.per_class == pytest.approx([100.0, 200 / 3, 0.0])
    assert result.confusion.tolist() == [[2, 0, 0], [1, 2, 0], [0, 1, 0]]
    assert result.top5 == 100.0


def _tiny_config(out: Path, **overrides) -> TrainConfig:
    values = dict(
        model="resnet50", model_kwargs=TINY_RESNET, img_size=32, epochs=3, batch_size=64, max_steps=None,
        lr=0.05, warmup_epochs=0.5, output=str(out), crop_scale=(0.5, 1.0), hflip=0.0, mixup=0.2, cutmix=1.0,
        label_smoothing=0.1, ema_decay=0.9, clip_grad=1.0, threads=1,
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides})


def test_resume_from_a_stopped_run_ends_with_the_same_weights(tmp_path):
    """A run stopped mid-epoch (max_steps) and resumed equals an uninterrupted one, bit for bit, EMA included, on
    the CPU routes the stopped run recorded."""
    full = train(_tiny_config(tmp_path / "full", epochs=2))
    stopped = train(_tiny_config(tmp_path / "resumed", epochs=2, max_steps=30))
    assert stopped.steps == 30 and load_train_state(stopped.checkpoint)["step_in_epoch"] == 30 - 22
    routes = flip_recorded_routes(stopped.checkpoint)
    resumed = train(_tiny_config(tmp_path / "resumed", epochs=2, resume=True))
    assert resumed.steps == full.steps == 44
    assert_resumed_exactly(full.checkpoint, resumed.checkpoint, routes)
    assert len(resumed.log.read_text().splitlines()) == 2


def flip_recorded_routes(state_path: Path) -> dict[str, str]:
    """The CPU routes a stopped run recorded in its ``last.pt`` (asserted non-empty); this process is made to
    "measure" the opposite ones, which a resumed run must not take."""
    routes = load_train_state(state_path)["cpu_routes"]
    assert routes  # the CPU backend's choices, recorded with the run
    cpu_backend._routes.update({k: "default" if v == "onednn" else "onednn" for k, v in routes.items()})
    return routes


def assert_resumed_exactly(full: Path, resumed: Path, routes: dict[str, str]) -> None:
    """The resumed run took the recorded ``routes`` and ended with the uninterrupted run's live and EMA weights, bit
    for bit."""
    assert cpu_backend.route_state().items() >= routes.items()
    a, b = load_train_state(full), load_train_state(resumed)
    for key in ("model", "model_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"


def test_fine_tune_from_a_run_with_other_classes(tmp_path):
    """A training state loads into a model with another head; the body's weights carry over."""
    result = train(_tiny_config(tmp_path / "run", epochs=1, max_steps=2, mixup=0.0, cutmix=0.0, ema_decay=None))
    model = create_model(num_classes=4, checkpoint=result.checkpoint)  # the run's architecture, another head
    saved = load_train_state(result.checkpoint)["model"]
    assert torch.equal(model.conv1.weight, saved["conv1.weight"])
    assert model.fc.weight.shape == (4, 8 * 4)
    with pytest.raises(ValueError, match="no EMA weights"):
        create_model(checkpoint=result.checkpoint, ema=True)


def test_train_refuses_to_overwrite_and_to_resume_nothing(tmp_path):
    train(_tiny_config(tmp_path / "run", epochs=1, max_steps=1))
    with pytest.raises(ValueError, match="already holds a run"):
        train(_tiny_config(tmp_path / "run", epochs=1, max_steps=1))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_tiny_config(tmp_path / "other", resume=True))
    with pytest.raises(KeyError, match="Did you mean"):
        train(_tiny_config(tmp_path / "x", model="resnet5"))


def test_unknown_recipe_keys_suggest_names():
    with pytest.raises(ValueError, match="did you mean lr"):
        TrainConfig.from_dict({"model": "resnet50", "lrr": 0.1})
