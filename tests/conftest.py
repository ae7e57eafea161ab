"""Shared helpers for the registry-wide contract tests, and the small image tree the training tests share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import glocal
from glocal.backends import cpu as cpu_backend

# Test workloads are tiny: one intra-op thread per test process is as fast and never oversubscribes the cores (two
# threads on a busy 2-core machine slowed a 64x96 ResNet forward from 0.01 s to 0.8 s). `make test` runs two worker
# processes instead.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cpu_backend_state(tmp_path, monkeypatch):
    """Each test starts with the CPU backend off and its own route cache (the engine and bench switch it on), and
    leaves the process as it found it."""
    monkeypatch.setenv("GLOCAL_CACHE_DIR", str(tmp_path / "glocal-cache"))
    state = (cpu_backend._enabled, cpu_backend._declined, dict(cpu_backend._routes), cpu_backend._routes_threads)
    tables = dict(cpu_backend._tables)
    cpu_backend._enabled, cpu_backend._declined, cpu_backend._routes_threads = False, False, None
    cpu_backend._routes.clear()
    cpu_backend._tables.clear()
    yield
    cpu_backend._enabled, cpu_backend._declined, cpu_backend._routes_threads = state[0], state[1], state[3]
    cpu_backend._routes.clear()
    cpu_backend._routes.update(state[2])
    cpu_backend._tables.clear()
    cpu_backend._tables.update(tables)


@pytest.fixture
def cpu_backend_on(_cpu_backend_state):
    """The CPU backend switched on for one test (malloc left alone)."""
    cpu_backend.enable(malloc=False)


# Architecture overrides that keep the heaviest variants cheap in tests that run real computation (gradients,
# pyramids, fused-vs-explicit). Parameter counts and MACs are always checked on the full models, on the meta device.
SMALL_OVERRIDES: dict[str, dict] = {
    # Twins: one block per PCPVT stage (GSA + PEG); SVT at SVT-S widths with one LSA and one GSA block per stage.
    **{name: dict(depths=(1, 1, 1, 1)) for name in ("twins_pcpvt_small", "twins_pcpvt_base", "twins_pcpvt_large")},
    **{
        name: dict(depths=(2, 2, 2, 2), embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16))
        for name in ("twins_svt_small", "twins_svt_base", "twins_svt_large")
    },
    # VOLO: one block per group (still 4 pyramid taps and both class-attention blocks); D4/D5 at D2's widths (their
    # own stem and MLP ratio), the real widths of every variant being counted on the meta device.
    **{name: dict(depths=(1, 1, 1, 1)) for name in glocal.list_models("volo_d[123]_*")},
    **{
        name: dict(depths=(1, 1, 1, 1), embed_dims=(256, 512, 512, 512), num_heads=(8, 16, 16, 16))
        for name in glocal.list_models("volo_d[45]_*")
    },
    # ResNet family: the real widths and block kinds, fewer blocks (c4 keeps two, so NL/SNL still sit before its
    # last block; BoTNet's c5 keeps a strided and a plain MHSA block).
    **{name: dict(depths=(1, 1, 2, 1)) for name in glocal.list_models("*resnet*")},
    "botnet50": dict(depths=(1, 1, 2, 2)),
    "botnet50_lj": dict(depths=(1, 1, 2, 2)),
    # ViT/T2T: the real widths, 4 blocks (still 4 pyramid taps).
    "vit_small_patch16_224": dict(depth=4),
    "t2t_vit_10": dict(depth=4),
    "t2t_vit_12": dict(depth=4),
    "t2t_vit_14": dict(depth=4),
    "t2t_vit_t_14": dict(depth=4),
    "vit_base_patch16_224": dict(depth=4),
    "vit_base_patch16_384": dict(depth=4),
    "vit_large_patch16_224": dict(depth=4),
    "t2t_vit_19": dict(depth=4),
    "t2t_vit_24": dict(depth=4),
    "t2t_vit_t_19": dict(depth=4),
    "t2t_vit_t_24": dict(depth=4),
}


def build(name: str, **kwargs) -> torch.nn.Module:
    return glocal.create_model(name, **{**SMALL_OVERRIDES.get(name, {}), **kwargs})


def small_size(model) -> tuple[int, int]:
    """The smallest convenient non-square input the model accepts (height < width)."""
    h = max(model.min_input_size, 64)
    w = h + 32
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


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A two-class ImageFolder root (cat, dog): 16 training and 4 validation images per class."""
    from tests.test_data import write_image_tree

    root = tmp_path_factory.mktemp("images")
    write_image_tree(root / "train", classes=("cat", "dog"), per_class=16, seed=0)
    write_image_tree(root / "val", classes=("cat", "dog"), per_class=4, seed=1)
    return root
