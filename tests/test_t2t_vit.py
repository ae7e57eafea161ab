"""T2T-ViT family: official counts, T2T layer math, fixed tables, real-grid re-structurization, no qk_scale trap."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import glocal
from glocal.analysis.complexity import count_params
from glocal.models.t2t_vit import (
    T2TViT,
    TokenPerformer,
    TokenTransformer,
    orthogonal_random_features,
    sinusoid_table,
)
from tests.conftest import perturb_

TINY = dict(embed_dim=32, depth=3, num_heads=2)


def _meta(name, **kw):
    with torch.device("meta"):
        return glocal.create_model(name, **kw)


def _tiny(name="t2t_vit_7", **kw) -> T2TViT:
    torch.manual_seed(0)
    return perturb_(glocal.create_model(name, **{**TINY, **kw})).eval()


# Parameter counts of the official code (models/t2t_vit.py), including the fixed random features and sinusoids.
OFFICIAL_PARAMS = {
    "t2t_vit_7": 4_310_222,
    "t2t_vit_10": 5_889_230,
    "t2t_vit_12": 6_941_902,
    "t2t_vit_14": 21_545_550,
    "t2t_vit_19": 39_177_422,
    "t2t_vit_24": 64_105_934,
    "t2t_vit_t_14": 21_541_070,
    "t2t_vit_t_19": 39_172_942,
    "t2t_vit_t_24": 64_101_454,
}


@pytest.mark.parametrize("name", OFFICIAL_PARAMS)
def test_parameter_counts_equal_the_official_code(name):
    assert count_params(_meta(name)) == OFFICIAL_PARAMS[name]


def test_official_key_names():
    keys = set(_meta("t2t_vit_7", depth=1).state_dict())
    performer = {"kqv.weight", "kqv.bias", "proj.weight", "proj.bias", "norm1.weight", "norm1.bias", "norm2.weight",
                 "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "w"}  # fmt: skip
    expected = {f"tokens_to_token.attention{i}.{k}" for i in (1, 2) for k in performer}
    expected |= {"tokens_to_token.project.weight", "tokens_to_token.project.bias", "cls_token", "pos_embed"}
    expected |= {f"blocks.0.{m}.{p}" for m in ("norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                 for p in ("weight", "bias")} | {"blocks.0.attn.qkv.weight"}  # fmt: skip
    expected |= {f"{m}.{p}" for m in ("norm", "head") for p in ("weight", "bias")}
    assert keys == expected
    transformer = set(_meta("t2t_vit_t_14", depth=1).state_dict())
    assert "tokens_to_token.attention1.attn.qkv.weight" in transformer
    assert "tokens_to_token.attention1.attn.qkv.bias" not in transformer


def test_token_transformer_residual_is_v_and_scale_uses_the_input_width():
    torch.manual_seed(0)
    layer = perturb_(TokenTransformer(147, 64)).eval()
    x = torch.randn(2, 10, 147)
    y = F.layer_norm(x, (147,), layer.norm1.weight, layer.norm1.bias)
    q, k, v = F.linear(y, layer.attn.qkv.weight).split(64, dim=-1)
    attn = (q * 147**-0.5 @ k.transpose(1, 2)).softmax(-1)
    out = v + F.linear(attn @ v, layer.attn.proj.weight, layer.attn.proj.bias)
    out = out + layer.mlp(F.layer_norm(out, (64,), layer.norm2.weight, layer.norm2.bias))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), out)
        with glocal.explicit_attention():
            torch.testing.assert_close(layer(x), out)


def test_token_performer_equals_the_official_formula():
    torch.manual_seed(0)
    layer = perturb_(TokenPerformer(576, 64)).eval()
    x = torch.randn(2, 12, 576)
    y = F.layer_norm(x, (576,), layer.norm1.weight, layer.norm1.bias)
    k, q, v = F.linear(y, layer.kqv.weight, layer.kqv.bias).split(64, dim=-1)

    def phi(t):  # exp(w^T t - |t|^2 / 2) / sqrt(m)
        return torch.exp(torch.einsum("bti,mi->btm", t, layer.w) - (t * t).sum(-1, keepdim=True) / 2) / math.sqrt(32)

    kp, qp = phi(k), phi(q)
    D = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(2)
    kptv = torch.einsum("bin,bim->bnm", v, kp)
    att = torch.einsum("bti,bni->btn", qp, kptv) / (D + 1e-8)
    out = v + F.linear(att, layer.proj.weight, layer.proj.bias)
    out = out + layer.mlp(F.layer_norm(out, (64,), layer.norm2.weight, layer.norm2.bias))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), out)
    assert not hasattr(layer, "probe")


def test_random_features_are_fixed_orthogonal_and_seeded():
    w = orthogonal_random_features(32, 64, seed=3)
    torch.testing.assert_close(w @ w.t(), 32 * torch.eye(32), rtol=0, atol=1e-4)
    torch.manual_seed(1)
    a = TokenPerformer(147, 64, seed=3)
    torch.manual_seed(2)
    b = TokenPerformer(147, 64, seed=3)
    assert torch.equal(a.w, b.w) and torch.equal(a.w, w) and not a.w.requires_grad
    assert not torch.equal(TokenPerformer(147, 64, seed=4).w, w)
    model = _meta("t2t_vit_7")
    assert model.tokens_to_token.attention1.w.shape == (32, 64)
    seeded = glocal.create_model("t2t_vit_7", depth=1, random_feature_seed=7)
    assert torch.equal(seeded.tokens_to_token.attention1.w, orthogonal_random_features(32, 64, 7))
    assert torch.equal(seeded.tokens_to_token.attention2.w, orthogonal_random_features(32, 64, 8))
    assert "tokens_to_token.attention1.w" in seeded.state_dict()


def test_sinusoid_table_equals_the_official_formula():
    table = sinusoid_table(5, 6)
    for pos in range(5):
        for j in range(6):
            angle = pos / 10000 ** (2 * (j // 2) / 6)
            assert table[0, pos, j].item() == pytest.approx(math.sin(angle) if j % 2 == 0 else math.cos(angle))
    model = glocal.create_model("t2t_vit_7", depth=1)
    assert torch.equal(model.pos_embed, sinusoid_table(197, 256)) and not model.pos_embed.requires_grad


def test_restructurization_uses_the_real_grid():
    model = _tiny()
    t2t = model.tokens_to_token
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        tokens, size = t2t(x)
        assert size == (4, 6) and tokens.shape == (1, 24, 32)
        y = t2t.attention1(F.unfold(x, 7, stride=4, padding=2).transpose(1, 2))  # (1, 16*24, 64)
        y = y.transpose(1, 2).reshape(1, 64, 16, 24)
        y = t2t.attention2(F.unfold(y, 3, stride=2, padding=1).transpose(1, 2)).transpose(1, 2).reshape(1, 64, 8, 12)
        expected = t2t.project(F.unfold(y, 3, stride=2, padding=1).transpose(1, 2))
        torch.testing.assert_close(tokens, expected)
        # Any other grid gets its own sinusoidal table (1 + h*w positions).
        embedded, _ = model.embed(x)
        torch.testing.assert_close(embedded[:, 1:], tokens + sinusoid_table(25, 32)[:, 1:])


def test_adapt_state_dict_rebuilds_the_sinusoid_table():
    model = glocal.create_model("t2t_vit_7", depth=1, img_size=384)
    adapted = model.adapt_state_dict({"pos_embed": sinusoid_table(197, 256)})
    assert torch.equal(adapted["pos_embed"], sinusoid_table(1 + 24 * 24, 256))


@pytest.mark.parametrize("name", ["t2t_vit_14", "t2t_vit_t_24"])
def test_backbone_scale_is_head_dim_not_the_pretrained_qk_scale(name, tmp_path, monkeypatch):
    model = _meta(name)
    assert all(block.attn.scale == 64**-0.5 for block in model.blocks)
    # pretrained=True only fetches the release (here: offline, not cached), it never switches the scale the official
    # constructors set under pretrained=True; tests/test_pretrained.py checks the loaded logits.
    monkeypatch.setenv("GLOCAL_HOME", str(tmp_path))
    monkeypatch.setenv("GLOCAL_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="checkpoint=PATH"):
        glocal.create_model(name, pretrained=True)


def test_last_normed_tap_equals_forward_features_patch_tokens():
    model = _tiny("t2t_vit_t_14")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = model.forward_intermediates(x, norm=True, intermediates_only=True)
        tokens = model.forward_features(x)
    assert [m.shape for m in maps] == [(1, 32, 4, 6)] * 3
    torch.testing.assert_close(maps[-1], tokens[:, 1:].transpose(1, 2).reshape(1, 32, 4, 6))


def test_frozen_tables_get_no_gradient_and_no_weight_decay():
    model = _tiny()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_embed", "tokens_to_token.attention1.w", "tokens_to_token.attention2.w"}
    assert model.no_weight_decay() == {"cls_token"}
    assert model.data_config.crop_pct == 0.9 and model.data_config.interpolation == "bicubic"


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_first_conv_names_the_linear_over_unfolded_patches(name):
    model = _meta(name, depth=1, in_chans=2)
    layer = dict(model.named_modules())[model.first_conv]
    assert isinstance(layer, torch.nn.Linear) and layer.in_features == 2 * 7 * 7
