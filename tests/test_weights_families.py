"""Checkpoint layouts of Twins, VOLO, ViT and T2T-ViT against official key lists written from the releases' code.

Twins (Meituan-AutoML/Twins ``gvt.py``), VOLO (sail-sg/volo ``models/volo.py``) and ViT (DeiT / timm
``vision_transformer.py``) use the same names as timm, and glocal keeps them; T2T-ViT (yitu-opensource/T2T-ViT)
differs in the Performer's feed-forward names; Google's ViT ``.npz`` (google-research/vision_transformer) in
everything. Full-size lists are compared on the meta device; loading runs on reduced depths.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import glocal
from glocal.layers.pos_embed import resample_grid, resample_tokens
from glocal.weights import CheckpointError, export_state_dict, load_checkpoint, load_state_dict

from .test_weights import make_state_dict, same


def _ln(p: str, c: int) -> dict[str, tuple]:
    return {f"{p}.weight": (c,), f"{p}.bias": (c,)}


def _linear(p: str, out: int, inp: int, bias: bool = True) -> dict[str, tuple]:
    return {f"{p}.weight": (out, inp), **({f"{p}.bias": (out,)} if bias else {})}


def _bn(p: str, c: int) -> dict[str, tuple]:
    return {
        **{f"{p}.{x}": (c,) for x in ("weight", "bias", "running_mean", "running_var")},
        f"{p}.num_batches_tracked": (),
    }


# --------------------------------------------------------------------------------------------- official key lists
TWINS = {  # gvt.py constructors: embed_dims, mlp_ratios, depths, window sizes (SVT only); sr_ratios 8, 4, 2, 1
    "twins_pcpvt_small": ((64, 128, 320, 512), (8, 8, 4, 4), (3, 4, 6, 3), None),
    "twins_pcpvt_base": ((64, 128, 320, 512), (8, 8, 4, 4), (3, 4, 18, 3), None),
    "twins_pcpvt_large": ((64, 128, 320, 512), (8, 8, 4, 4), (3, 8, 27, 3), None),
    "twins_svt_small": ((64, 128, 256, 512), (4, 4, 4, 4), (2, 2, 10, 4), 7),
    "twins_svt_base": ((96, 192, 384, 768), (4, 4, 4, 4), (2, 2, 18, 2), 7),
    "twins_svt_large": ((128, 256, 512, 1024), (4, 4, 4, 4), (2, 2, 18, 2), 7),
}


def twins_keys(dims, mlp_ratios, depths, ws) -> dict[str, tuple]:
    keys, prev = {}, 3
    for i, (c, r, depth, sr) in enumerate(zip(dims, mlp_ratios, depths, (8, 4, 2, 1), strict=True)):
        k = 4 if i == 0 else 2
        keys.update({f"patch_embeds.{i}.proj.weight": (c, prev, k, k), f"patch_embeds.{i}.proj.bias": (c,)})
        keys.update(_ln(f"patch_embeds.{i}.norm", c))
        for j in range(depth):
            b = f"blocks.{i}.{j}"
            keys.update(_ln(f"{b}.norm1", c))
            if ws is not None and j % 2 == 0:  # GroupAttention (LSA)
                keys.update(_linear(f"{b}.attn.qkv", 3 * c, c))
            else:  # Attention (GSA)
                keys.update({**_linear(f"{b}.attn.q", c, c), **_linear(f"{b}.attn.kv", 2 * c, c)})
                if sr > 1:
                    keys.update({f"{b}.attn.sr.weight": (c, c, sr, sr), f"{b}.attn.sr.bias": (c,)})
                    keys.update(_ln(f"{b}.attn.norm", c))
            keys.update(_linear(f"{b}.attn.proj", c, c))
            keys.update(_ln(f"{b}.norm2", c))
            keys.update({**_linear(f"{b}.mlp.fc1", int(c * r), c), **_linear(f"{b}.mlp.fc2", c, int(c * r))})
        keys.update({f"pos_block.{i}.proj.0.weight": (c, 1, 3, 3), f"pos_block.{i}.proj.0.bias": (c,)})
        prev = c
    return {**keys, **_ln("norm", prev), **_linear("head", 1000, prev)}


VOLO = {  # volo.py volo_d1..d5: layers, embed_dims, heads, mlp_ratio, stem hidden dim
    "d1": ((4, 4, 8, 2), (192, 384), (6, 12), 3, 64),
    "d2": ((6, 4, 10, 4), (256, 512), (8, 16), 3, 64),
    "d3": ((8, 8, 16, 4), (256, 512), (8, 16), 3, 64),
    "d4": ((8, 8, 16, 4), (384, 768), (12, 16), 3, 64),
    "d5": ((12, 12, 20, 4), (384, 768), (12, 16), 4, 128),
}


def volo_keys(layers, dims, heads, r, hidden, img: int) -> dict[str, tuple]:
    c1, c2 = dims
    keys = {"pos_embed": (1, img // 16, img // 16, c2), "cls_token": (1, 1, c2)}
    keys.update({"patch_embed.conv.0.weight": (hidden, 3, 7, 7), **_bn("patch_embed.conv.1", hidden)})
    keys.update({"patch_embed.conv.3.weight": (hidden, hidden, 3, 3), **_bn("patch_embed.conv.4", hidden)})
    keys.update({"patch_embed.conv.6.weight": (hidden, hidden, 3, 3), **_bn("patch_embed.conv.7", hidden)})
    keys.update({"patch_embed.proj.weight": (c1, hidden, 4, 4), "patch_embed.proj.bias": (c1,)})

    def mlp(p: str, c: int) -> dict[str, tuple]:
        return {
            **_ln(f"{p}.norm2", c),
            **_linear(f"{p}.mlp.fc1", int(c * r), c),
            **_linear(f"{p}.mlp.fc2", c, int(c * r)),
        }

    for i in range(layers[0]):  # Outlookers
        p = f"network.0.{i}"
        keys.update({**_ln(f"{p}.norm1", c1), **_linear(f"{p}.attn.v", c1, c1, bias=False)})
        keys.update({**_linear(f"{p}.attn.attn", heads[0] * 81, c1), **_linear(f"{p}.attn.proj", c1, c1), **mlp(p, c1)})
    keys.update({"network.1.proj.weight": (c2, c1, 2, 2), "network.1.proj.bias": (c2,)})
    for stage, depth in enumerate(layers[1:], start=2):
        for i in range(depth):
            p = f"network.{stage}.{i}"
            keys.update({**_ln(f"{p}.norm1", c2), **_linear(f"{p}.attn.qkv", 3 * c2, c2, bias=False)})
            keys.update({**_linear(f"{p}.attn.proj", c2, c2), **mlp(p, c2)})
    for i in range(2):  # class attention
        p = f"post_network.{i}"
        keys.update({**_ln(f"{p}.norm1", c2), **_linear(f"{p}.attn.kv", 2 * c2, c2, bias=False)})
        keys.update({**_linear(f"{p}.attn.q", c2, c2, bias=False), **_linear(f"{p}.attn.proj", c2, c2), **mlp(p, c2)})
    return {**keys, **_linear("aux_head", 1000, c2), **_ln("norm", c2), **_linear("head", 1000, c2)}


VIT = {  # get_{ti,s,b,l}16_config: hidden, depth, heads (MLP 4x); timm names
    "vit_tiny_patch16_224": (192, 12, 3, 224),
    "vit_small_patch16_224": (384, 12, 6, 224),
    "vit_base_patch16_224": (768, 12, 12, 224),
    "vit_base_patch16_384": (768, 12, 12, 384),
    "vit_large_patch16_224": (1024, 24, 16, 224),
}


def vit_keys(dim, depth, heads, img) -> dict[str, tuple]:
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + (img // 16) ** 2, dim)}
    keys.update({"patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,)})
    for i in range(depth):
        p = f"blocks.{i}"
        keys.update(
            {**_ln(f"{p}.norm1", dim), **_linear(f"{p}.attn.qkv", 3 * dim, dim), **_linear(f"{p}.attn.proj", dim, dim)}
        )
        keys.update(
            {**_ln(f"{p}.norm2", dim), **_linear(f"{p}.mlp.fc1", 4 * dim, dim), **_linear(f"{p}.mlp.fc2", dim, 4 * dim)}
        )
    return {**keys, **_ln("norm", dim), **_linear("head", 1000, dim)}


def vit_npz_keys(dim, depth, heads, img) -> dict[str, tuple]:
    """vit_jax flax parameter paths of a fine-tuned ImageNet ViT (no pre_logits), as in the released .npz."""
    d = dim // heads
    keys = {"embedding/kernel": (16, 16, 3, dim), "embedding/bias": (dim,), "cls": (1, 1, dim)}
    keys["Transformer/posembed_input/pos_embedding"] = (1, 1 + (img // 16) ** 2, dim)
    for i in range(depth):
        p = f"Transformer/encoderblock_{i}"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            keys.update({f"{p}/{ln}/scale": (dim,), f"{p}/{ln}/bias": (dim,)})
        a = f"{p}/MultiHeadDotProductAttention_1"
        for n in ("query", "key", "value"):
            keys.update({f"{a}/{n}/kernel": (dim, heads, d), f"{a}/{n}/bias": (heads, d)})
        keys.update({f"{a}/out/kernel": (heads, d, dim), f"{a}/out/bias": (dim,)})
        keys.update({f"{p}/MlpBlock_3/Dense_0/kernel": (dim, 4 * dim), f"{p}/MlpBlock_3/Dense_0/bias": (4 * dim,)})
        keys.update({f"{p}/MlpBlock_3/Dense_1/kernel": (4 * dim, dim), f"{p}/MlpBlock_3/Dense_1/bias": (dim,)})
    keys.update({"Transformer/encoder_norm/scale": (dim,), "Transformer/encoder_norm/bias": (dim,)})
    return {**keys, "head/kernel": (dim, 1000), "head/bias": (1000,)}


T2T = {  # t2t_vit.py constructors: embed_dim, depth, heads, mlp_ratio; tokens_type from the name
    "t2t_vit_7": (256, 7, 4, 2),
    "t2t_vit_10": (256, 10, 4, 2),
    "t2t_vit_12": (256, 12, 4, 2),
    "t2t_vit_14": (384, 14, 6, 3),
    "t2t_vit_19": (448, 19, 7, 3),
    "t2t_vit_24": (512, 24, 8, 3),
    "t2t_vit_t_14": (384, 14, 6, 3),
    "t2t_vit_t_19": (448, 19, 7, 3),
    "t2t_vit_t_24": (512, 24, 8, 3),
}


def t2t_keys(dim, depth, heads, r, performer: bool) -> dict[str, tuple]:
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, 197, dim)}
    for n, dim_in in ((1, 3 * 49), (2, 64 * 9)):
        p = f"tokens_to_token.attention{n}"
        if performer:  # Token_performer
            keys.update({f"{p}.w": (32, 64), **_linear(f"{p}.kqv", 192, dim_in), **_linear(f"{p}.proj", 64, 64)})
            keys.update({**_ln(f"{p}.norm1", dim_in), **_ln(f"{p}.norm2", 64)})
            keys.update({**_linear(f"{p}.mlp.0", 64, 64), **_linear(f"{p}.mlp.2", 64, 64)})
        else:  # Token_transformer: one head, mlp_ratio 1, no qkv bias
            keys.update({**_ln(f"{p}.norm1", dim_in), **_linear(f"{p}.attn.qkv", 192, dim_in, bias=False)})
            keys.update({**_linear(f"{p}.attn.proj", 64, 64), **_ln(f"{p}.norm2", 64)})
            keys.update({**_linear(f"{p}.mlp.fc1", 64, 64), **_linear(f"{p}.mlp.fc2", 64, 64)})
    keys.update(_linear("tokens_to_token.project", dim, 576))
    for i in range(depth):
        p = f"blocks.{i}"
        keys.update({**_ln(f"{p}.norm1", dim), **_linear(f"{p}.attn.qkv", 3 * dim, dim, bias=False)})
        keys.update({**_linear(f"{p}.attn.proj", dim, dim), **_ln(f"{p}.norm2", dim)})
        keys.update({**_linear(f"{p}.mlp.fc1", int(dim * r), dim), **_linear(f"{p}.mlp.fc2", dim, int(dim * r))})
    return {**keys, **_ln("norm", dim), **_linear("head", 1000, dim)}


def _official(name: str) -> tuple[dict[str, tuple], str]:
    """The official key list of a registered model and the layout its release is in."""
    if name.startswith("twins"):
        return twins_keys(*TWINS[name]), "glocal"
    if name.startswith("volo"):
        variant, img = name.split("_")[1], int(name.split("_")[2])
        return volo_keys(*VOLO[variant], img=img), "glocal"
    if name.startswith("vit"):
        return vit_keys(*VIT[name]), "glocal"
    performer = not name.startswith("t2t_vit_t_")
    return t2t_keys(*T2T[name], performer=performer), "t2t-official" if performer else "glocal"


FAMILY_MODELS = [n for n in glocal.list_models() if n.startswith(("twins", "volo", "vit", "t2t"))]


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return glocal.create_model(name, **kwargs)


def empty(name: str, **kwargs) -> torch.nn.Module:
    """A model with uninitialised CPU tensors (random initialisation is slow, and every load here fills them)."""
    return _meta(name, **kwargs).to_empty(device="cpu")


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_full_size_official_key_list_matches(name):
    official, layout = _official(name)
    exported = {k: tuple(v.shape) for k, v in export_state_dict(_meta(name), layout).items()}
    assert exported == official


@pytest.mark.parametrize("name", list(VIT))
def test_full_size_vit_npz_key_list_matches(name):
    exported = {k: tuple(v.shape) for k, v in export_state_dict(_meta(name), "vit-npz").items()}
    assert exported == vit_npz_keys(*VIT[name])


# --------------------------------------------------------------------------------------------- loading, reduced depth
def test_twins_official_release_loads_and_exports_exactly(tmp_path):
    dims, ratios, _, ws = TWINS["twins_svt_small"]
    official = make_state_dict(twins_keys(dims, ratios, (2, 2, 2, 2), ws))
    torch.save({"model": official, "epoch": 299}, tmp_path / "alt_gvt_small.pth")  # main.py's nesting
    model = empty("twins_svt_small", depths=(2, 2, 2, 2))
    assert load_checkpoint(model, tmp_path / "alt_gvt_small.pth").layout == "glocal"
    assert same(export_state_dict(model, "glocal"), official)


def test_volo_release_with_token_labelling_head_loads(tmp_path, caplog):
    layers, dims, heads, r, hidden = VOLO["d1"]
    official = make_state_dict(volo_keys((1, 1, 1, 1), dims, heads, r, hidden, img=224))
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in official.items()}, "arch": "volo_d1"}, tmp_path / "d1.pth.tar"
    )
    model = empty("volo_d1_224", depths=(1, 1, 1, 1))
    load_checkpoint(model, tmp_path / "d1.pth.tar")
    assert same(model.state_dict(), official)
    assert torch.equal(model.aux_head.weight, official["aux_head.weight"])
    ten = empty("volo_d1_224", depths=(1, 1, 1, 1), num_classes=10)
    with caplog.at_level(logging.WARNING, logger="glocal"):
        result = load_checkpoint(ten, tmp_path / "d1.pth.tar")
    assert sorted(result.reinitialised) == ["aux_head", "head"] and "aux_head" in caplog.text


@pytest.mark.parametrize("img_size", [384, (224, 320)])
def test_volo_pos_embed_is_resampled_for_other_sizes(img_size):
    layers, dims, heads, r, hidden = VOLO["d1"]
    official = make_state_dict(volo_keys((1, 1, 1, 1), dims, heads, r, hidden, img=224))
    model = empty("volo_d1_224", depths=(1, 1, 1, 1), img_size=img_size)
    load_state_dict(model, official)
    grid = (img_size // 16,) * 2 if isinstance(img_size, int) else (img_size[0] // 16, img_size[1] // 16)
    assert model.pos_embed.shape[1:3] == grid
    torch.testing.assert_close(model.pos_embed, resample_grid(official["pos_embed"], grid))


def test_deit_release_loads_with_model_nesting_and_resampled_pos_embed(tmp_path):
    official = make_state_dict(vit_keys(192, 2, 3, 224))
    torch.save({"model": official}, tmp_path / "deit_tiny_patch16_224-a1311bcf.pth")
    model = empty("vit_tiny_patch16_224", depth=2)
    assert load_checkpoint(model, tmp_path / "deit_tiny_patch16_224-a1311bcf.pth").layout == "glocal"
    assert same(model.state_dict(), official)
    wide = empty("vit_tiny_patch16_224", depth=2, img_size=(224, 320))
    load_checkpoint(wide, tmp_path / "deit_tiny_patch16_224-a1311bcf.pth")
    torch.testing.assert_close(wide.pos_embed, resample_tokens(official["pos_embed"], (14, 14), (14, 20), num_prefix=1))


def test_glocal_format_keeps_a_non_square_vit(tmp_path):
    model = glocal.create_model("vit_tiny_patch16_224", depth=1, img_size=(224, 320), num_classes=3)
    glocal.save_checkpoint(model, tmp_path / "vit")
    loaded = glocal.create_model("vit_tiny_patch16_224", checkpoint=tmp_path / "vit")
    assert loaded.pos_embed.shape == (1, 1 + 14 * 20, 192) and loaded.num_classes == 3
    assert same(model.state_dict(), loaded.state_dict())


def _half_norm_patch_embed_agrees(model, kernel_oihw: torch.Tensor, bias: torch.Tensor) -> None:
    """The model's patch embedding on ImageNet-normalised pixels equals Google's on (x - 0.5) / 0.5."""
    x = torch.rand(1, 3, 32, 48)
    mean, std = torch.tensor(model.data_config.mean)[:, None, None], torch.tensor(model.data_config.std)[:, None, None]
    ours = model.patch_embed.proj((x - mean) / std)
    google = torch.nn.functional.conv2d((x - 0.5) / 0.5, kernel_oihw, bias, stride=16)
    torch.testing.assert_close(ours, google, rtol=1e-4, atol=1e-4)


def test_vit_npz_release_loads_and_round_trips(tmp_path):
    official = make_state_dict(vit_npz_keys(192, 2, 3, 384))
    path = tmp_path / "ViT-Ti_16.npz"
    np.savez(path, **{k: v.numpy() for k, v in official.items()})
    model = empty("vit_tiny_patch16_224", depth=2).eval()
    assert load_checkpoint(model, path).layout == "vit-npz"
    # the 24x24 grid of the 384-px release resampled to 14x14
    pos = official["Transformer/posembed_input/pos_embedding"]
    torch.testing.assert_close(model.pos_embed, resample_tokens(pos, (24, 24), (14, 14), num_prefix=1))
    q = official["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"]
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight[:192], q.reshape(192, 192).t())
    _half_norm_patch_embed_agrees(model, official["embedding/kernel"].permute(3, 2, 0, 1), official["embedding/bias"])

    same_size = empty("vit_tiny_patch16_224", depth=2, img_size=384)
    load_checkpoint(same_size, path)
    exported = export_state_dict(same_size, "vit-npz")
    assert exported.keys() == official.keys()
    assert max((exported[k] - official[k]).abs().max().item() for k in official) < 1e-4


def test_vit_npz_with_pre_logits_is_refused(tmp_path):
    keys = vit_npz_keys(192, 2, 3, 224)
    keys.update({"pre_logits/kernel": (192, 192), "pre_logits/bias": (192,)})
    with pytest.raises(CheckpointError, match="pre_logits"):
        load_state_dict(empty("vit_tiny_patch16_224", depth=2), make_state_dict(keys))


def test_timm_augreg_layout_is_named_not_detected():
    official = make_state_dict(vit_keys(192, 2, 3, 224))
    model = empty("vit_tiny_patch16_224", depth=2)
    assert load_state_dict(model, official, layout="timm-vit-augreg").layout == "timm-vit-augreg"
    _half_norm_patch_embed_agrees(model, official["patch_embed.proj.weight"], official["patch_embed.proj.bias"])
    back = export_state_dict(model, "timm-vit-augreg")
    torch.testing.assert_close(back["patch_embed.proj.weight"], official["patch_embed.proj.weight"])
    assert load_state_dict(model, official).layout == "glocal"


def test_t2t_performer_release_loads_random_features_and_exports_exactly(tmp_path):
    official = make_state_dict(t2t_keys(256, 2, 4, 2, performer=True))
    ema = {k: v + 1 for k, v in official.items()}
    torch.save({"state_dict": official, "state_dict_ema": ema}, tmp_path / "71.7_T2T_ViT_7.pth.tar")
    model = empty("t2t_vit_7", depth=2)
    assert load_checkpoint(model, tmp_path / "71.7_T2T_ViT_7.pth.tar", ema=True).layout == "t2t-official"
    assert torch.equal(model.tokens_to_token.attention1.w, ema["tokens_to_token.attention1.w"])
    assert torch.equal(model.tokens_to_token.attention2.mlp.fc2.bias, ema["tokens_to_token.attention2.mlp.2.bias"])
    load_checkpoint(model, tmp_path / "71.7_T2T_ViT_7.pth.tar")
    assert same(export_state_dict(model, "t2t-official"), official)


def test_t2t_sinusoidal_table_is_rebuilt_for_other_sizes():
    official = make_state_dict(t2t_keys(256, 2, 4, 2, performer=True))
    model = empty("t2t_vit_7", depth=2, img_size=(224, 320))
    load_state_dict(model, official)
    assert model.pos_embed.shape == (1, 1 + 14 * 20, 256)


def test_t2t_token_transformer_release_loads_one_to_one():
    official = make_state_dict(t2t_keys(384, 2, 6, 3, performer=False))
    model = empty("t2t_vit_t_14", depth=2)
    assert load_state_dict(model, official).layout == "glocal"
    assert same(model.state_dict(), official)


def test_vit_in_chans_one_sums_the_patch_embedding():
    official = make_state_dict(vit_keys(192, 2, 3, 224))
    model = empty("vit_tiny_patch16_224", depth=2, in_chans=1)
    result = load_state_dict(model, official)
    assert "summed" in result.adapted[0]
    torch.testing.assert_close(model.patch_embed.proj.weight, official["patch_embed.proj.weight"].sum(1, keepdim=True))
