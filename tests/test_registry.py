"""Registry, factory and model_info behaviour."""

from __future__ import annotations

import pytest
import torch

import glocal


def test_list_models_glob():
    everything = glocal.list_models()
    assert everything == sorted(everything)
    resnets = glocal.list_models("*resnet50")
    assert "gcresnet50" in resnets and "resnet101" not in resnets
    assert glocal.list_models("no_such_*") == []


def test_model_info_has_figures_and_sources():
    info = glocal.model_info("gcresnet50")
    assert info["paper_params"] > 0 and info["paper_gmacs"] > 0 and info["top1"] == 77.70
    assert "GCNet" in info["source"]
    assert info["input_size"] == (3, 224, 224)
    assert info["config"]["block_attn"] == "gc"


def test_unknown_model_suggests_close_names():
    with pytest.raises(KeyError, match="gcresnet50"):
        glocal.create_model("gcresnet5")


def test_unknown_override_lists_valid_names():
    with pytest.raises(TypeError, match="depths") as err:
        glocal.create_model("resnet50", not_a_field=1)
    assert "drop_rate" in str(err.value) and "not_a_field" in str(err.value)


def test_out_indices_requires_features_only():
    with pytest.raises(ValueError, match="features_only"):
        glocal.create_model("resnet50", out_indices=(1,))


def test_bad_out_indices():
    with pytest.raises(ValueError, match="out of range"):
        glocal.create_model("resnet50", features_only=True, out_indices=(5,))


def test_create_model_in_bfloat16_computes_in_it_and_rejects_other_types():
    torch.manual_seed(0)
    full = glocal.create_model("vit_small_patch16_224", depth=1, img_size=64).eval()
    half = glocal.create_model("vit_small_patch16_224", depth=1, img_size=64, dtype=torch.bfloat16).eval()
    half.load_state_dict(full.state_dict())  # cast back to bfloat16 by load_state_dict's copy
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        y = half(x.to(torch.bfloat16))
        ref = full(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    with pytest.raises(TypeError, match="floating torch.dtype"):
        glocal.create_model("resnet50", dtype="bf16")
