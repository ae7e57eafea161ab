"""ViT family: counts, timm/DeiT key names, the block math, position-embedding resampling, pooling and pyramid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import glocal
from glocal.analysis.complexity import count_params
from glocal.layers import resample_tokens
from glocal.models._plain import even_feature_blocks
from glocal.models.vit import VisionTransformer
from tests.conftest import perturb_

TINY = dict(embed_dim=32, depth=3, num_heads=2)


def _meta(name, **kw):
    with torch.device("meta"):
        return glocal.create_model(name, **kw)


def _tiny(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    return perturb_(glocal.create_model("vit_tiny_patch16_224", **{**TINY, **kw})).eval()


@pytest.mark.parametrize(
    "name, params",
    [
        ("vit_tiny_patch16_224", 5_717_416),
        ("vit_small_patch16_224", 22_050_664),
        ("vit_base_patch16_224", 86_567_656),
        ("vit_large_patch16_224", 304_326_632),
        ("vit_base_patch16_384", 86_859_496),
    ],
)
def test_parameter_counts(name, params):
    assert count_params(_meta(name)) == params


def test_timm_key_names():
    keys = set(_meta("vit_tiny_patch16_224", depth=1).state_dict())
    block = {f"blocks.0.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
             for p in ("weight", "bias")}  # fmt: skip
    top = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    top |= {f"{m}.{p}" for m in ("norm", "head") for p in ("weight", "bias")}
    assert keys == block | top


def _reference_forward(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """ViT written out with functional ops: the paper's equations, class-token head."""
    p = model.cfg.patch_size
    tokens = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=p)
    tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, C)
    x = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], 1) + model.pos_embed
    B, N, C = x.shape
    heads = model.cfg.num_heads
    for blk in model.blocks:
        y = F.layer_norm(x, (C,), blk.norm1.weight, blk.norm1.bias, eps=1e-6)
        q, k, v = F.linear(y, blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(B, N, 3, heads, C // heads).unbind(2)
        attn = torch.einsum("bnhd,bmhd->bhnm", q, k).mul((C // heads) ** -0.5).softmax(-1)
        y = torch.einsum("bhnm,bmhd->bnhd", attn, v).reshape(B, N, C)
        x = x + F.linear(y, blk.attn.proj.weight, blk.attn.proj.bias)
        y = F.layer_norm(x, (C,), blk.norm2.weight, blk.norm2.bias, eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        x = x + y
    x = F.layer_norm(x, (C,), model.norm.weight, model.norm.bias, eps=1e-6)
    return F.linear(x[:, 0], model.head.weight, model.head.bias)


def test_forward_equals_the_equations():
    model = _tiny(img_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_forward(model, x), rtol=1e-5, atol=1e-5)


def test_non_square_input_resamples_the_position_embedding_bicubically():
    model = _tiny()
    x = torch.randn(1, 3, 96, 160)
    tokens, size = model.embed(x)
    assert size == (6, 10) and tokens.shape == (1, 1 + 60, 32)
    patches, _ = model.patch_embed(x)
    pos = F.interpolate(model.pos_embed[:, 1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2), size=(6, 10),
                        mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)  # fmt: skip
    torch.testing.assert_close(tokens[:, 1:], patches + pos)
    torch.testing.assert_close(tokens[:, :1], model.cls_token + model.pos_embed[:, :1])


def test_adapt_state_dict_resamples_a_224_checkpoint_to_384():
    small = glocal.create_model("vit_tiny_patch16_224", depth=1)
    big = glocal.create_model("vit_tiny_patch16_224", depth=1, img_size=384)
    adapted = big.adapt_state_dict(small.state_dict())
    assert adapted["pos_embed"].shape == (1, 1 + 24 * 24, 192)
    torch.testing.assert_close(adapted["pos_embed"], resample_tokens(small.pos_embed, (14, 14), (24, 24), 1))
    big.load_state_dict(adapted)
    with pytest.raises(ValueError, match="square grid"):
        big.adapt_state_dict({"pos_embed": torch.zeros(1, 1 + 6 * 10, 192)})


def test_avg_pool_averages_the_normed_patch_tokens():
    model = _tiny(global_pool="avg")
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 1:].mean(1))
    with pytest.raises(ValueError, match="global_pool"):
        glocal.create_model("vit_tiny_patch16_224", global_pool="max")


def test_default_taps_are_four_evenly_spaced_blocks():
    assert even_feature_blocks(12) == (2, 5, 8, 11)
    assert even_feature_blocks(24) == (5, 11, 17, 23)
    assert even_feature_blocks(3) == (0, 1, 2)
    model = _meta("vit_large_patch16_224")
    assert model.feature_info.module_name() == ["blocks.5", "blocks.11", "blocks.17", "blocks.23"]
    assert set(zip(model.feature_info.channels(), model.feature_info.reduction(), strict=True)) == {(1024, 16)}


def test_last_normed_tap_equals_forward_features_patch_tokens():
    model = _tiny()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = model.forward_intermediates(x, norm=True, intermediates_only=True)
        tokens = model.forward_features(x)
    assert [m.shape for m in maps] == [(1, 32, 4, 6)] * 3
    torch.testing.assert_close(maps[-1], tokens[:, 1:].transpose(1, 2).reshape(1, 32, 4, 6))


def test_chosen_feature_blocks_and_pruning():
    model = _tiny(feature_blocks=(0, 2))
    assert model.feature_info.module_name() == ["blocks.0", "blocks.2"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first = model.forward_intermediates(x, [0], norm=True, intermediates_only=True)[0]
        assert model.prune_intermediate_layers([0]) == [0]
        assert len(model.blocks) == 1 and isinstance(model.head, torch.nn.Identity)
        torch.testing.assert_close(model.forward_intermediates(x, [0], norm=True, intermediates_only=True)[0], first)
        model.prune_intermediate_layers([0], prune_norm=True)
        assert isinstance(model.norm, torch.nn.Identity)
    with pytest.raises(ValueError, match="feature_blocks"):
        glocal.create_model("vit_tiny_patch16_224", feature_blocks=(5, 2))


def test_data_config_and_no_weight_decay():
    assert _meta("vit_base_patch16_384").data_config.input_size == (3, 384, 384)
    assert _meta("vit_base_patch16_384").data_config.crop_pct == 1.0
    assert _meta("vit_tiny_patch16_224").no_weight_decay() == {"pos_embed", "cls_token"}


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "t2t_vit_14"])
def test_reset_classifier_uses_the_construction_init(name):
    model = glocal.create_model(name, depth=1)
    model.reset_classifier(5000)
    weight = model.head.weight.detach()
    # trunc-normal(0.02), zero bias: PyTorch's default would be uniform with std 1/sqrt(3 * 384) ~ 0.029.
    assert abs(weight.std().item() - 0.02) < 0.001
    assert torch.count_nonzero(model.head.bias) == 0
