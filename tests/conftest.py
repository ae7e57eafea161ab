"""Shared helpers for the registry-wide contract tests."""

from __future__ import annotations

import math

import torch

import glocal

# Architecture overrides that keep the heaviest variants cheap in tests that run real computation (gradients,
# pyramids, fused-vs-explicit). Parameter counts and MACs are always checked on the full models, on the meta device.
SMALL_OVERRIDES: dict[str, dict] = {}


def build(name: str, **kwargs) -> torch.nn.Module:
    return glocal.create_model(name, **{**SMALL_OVERRIDES.get(name, {}), **kwargs})


def small_size(model) -> tuple[int, int]:
    """The smallest convenient non-square input the model accepts (height < width)."""
    div = model.input_divisor
    h = math.ceil(max(model.min_input_size, 64) / div) * div
    w = h + math.ceil(32 / div) * div
    return h, w


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so zero-initialised branches (GC, NL, BoT) contribute and get gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def pytest_generate_tests(metafunc):
    if "model_name" in metafunc.fixturenames:
        metafunc.parametrize("model_name", glocal.list_models())
