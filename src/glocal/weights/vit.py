"""Checkpoint layouts of ViT.

glocal's ViT keeps timm's and DeiT's names (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``), so DeiT's releases
(``.pth`` files nesting the weights under ``model``, unwrapped on reading) and timm's ``vit_*`` state dicts load with
glocal's own layout. Position embeddings stored for another grid (e.g. 384 px) are resampled by the model's
``adapt_state_dict``. The other sources:

``vit-npz``
    The original JAX releases of google-research/vision_transformer (``ViT-B_16.npz``...), read with numpy. Names
    and conversions as in the repository's ``models_vit.py`` (flax modules): ``embedding/kernel`` (HWIO ->
    OIHW), ``cls``, ``Transformer/posembed_input/pos_embedding``, ``Transformer/encoderblock_{i}/LayerNorm_0``
    (``scale``, ``bias``), ``MultiHeadDotProductAttention_1/{query,key,value}/kernel`` of shape (D, heads, d) fused
    into ``qkv`` (rows q, k, v), ``.../out/kernel`` (heads, d, D), ``LayerNorm_2``, ``MlpBlock_3/Dense_{0,1}``
    (kernels transposed), ``Transformer/encoder_norm``, ``head``. Google's models take inputs normalised with
    mean = std = 0.5; glocal's ViT data config is ImageNet's mean/std, so the patch embedding is rewritten for it:
    with stride = kernel and no padding this is exact, ``W' = W * 2 std`` per input channel and
    ``b' = b + sum W * 2 (mean - 0.5)``. Checkpoints with a ``pre_logits`` layer (the ImageNet-21k originals) are
    refused: glocal's ViT has none.
``timm-vit-augreg``
    timm's ``vit_*`` weights that come from Google (``augreg``, and the original ports), with glocal's key names
    but the mean = std = 0.5 input: the patch embedding is rewritten as for ``vit-npz``. The keys equal DeiT's, so
    this layout is never detected: name it (``layout="timm-vit-augreg"``, ``--layout``).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from glocal.weights.layout import Layout, StateDict, register_layout

__all__ = ["TIMM_VIT_AUGREG", "VIT_NPZ", "from_half_normalisation", "to_half_normalisation"]

_T = "Transformer"
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")


def _norm_terms(model: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(model.data_config.mean, dtype=torch.float64, device=like.device)
    std = torch.tensor(model.data_config.std, dtype=torch.float64, device=like.device)
    return 2 * std, 2 * (mean - 0.5)


def from_half_normalisation(state_dict: StateDict, model: nn.Module, key: str = "patch_embed.proj") -> StateDict:
    """Rewrite a patch embedding trained on ``(x - 0.5) / 0.5`` inputs for the model's mean/std, in place."""
    w, b = state_dict[f"{key}.weight"], state_dict[f"{key}.bias"]
    scale, shift = _norm_terms(model, w)
    w64 = w.double()
    state_dict[f"{key}.bias"] = (b.double() + torch.einsum("ochw,c->o", w64, shift)).to(b.dtype)
    state_dict[f"{key}.weight"] = (w64 * scale[None, :, None, None]).to(w.dtype)
    return state_dict


def to_half_normalisation(state_dict: StateDict, model: nn.Module, key: str = "patch_embed.proj") -> StateDict:
    """The inverse of :func:`from_half_normalisation`, in place."""
    w, b = state_dict[f"{key}.weight"], state_dict[f"{key}.bias"]
    scale, shift = _norm_terms(model, w)
    w64 = w.double() / scale[None, :, None, None]
    state_dict[f"{key}.bias"] = (b.double() - torch.einsum("ochw,c->o", w64, shift)).to(b.dtype)
    state_dict[f"{key}.weight"] = w64.to(w.dtype)
    return state_dict


def _npz_to_glocal(state_dict: StateDict, model: nn.Module) -> StateDict:
    src = dict(state_dict)
    out: StateDict = {}

    def take(name: str) -> torch.Tensor:
        return src.pop(name)

    out["patch_embed.proj.weight"] = take("embedding/kernel").permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
    out["patch_embed.proj.bias"] = take("embedding/bias")
    out["cls_token"] = take("cls")
    out["pos_embed"] = take(f"{_T}/posembed_input/pos_embedding")
    depth = 1 + max(int(m.group(1)) for k in src if (m := _BLOCK.match(k)))
    for i in range(depth):
        p, q = f"{_T}/encoderblock_{i}/", f"blocks.{i}."
        att = f"{p}MultiHeadDotProductAttention_1/"
        dim = src[f"{att}query/kernel"].shape[0]
        out[q + "norm1.weight"], out[q + "norm1.bias"] = take(f"{p}LayerNorm_0/scale"), take(f"{p}LayerNorm_0/bias")
        kernels = [take(f"{att}{n}/kernel").reshape(dim, dim).t() for n in ("query", "key", "value")]
        out[q + "attn.qkv.weight"] = torch.cat(kernels).contiguous()  # (3D, D): rows q, k, v
        out[q + "attn.qkv.bias"] = torch.cat([take(f"{att}{n}/bias").reshape(dim) for n in ("query", "key", "value")])
        out[q + "attn.proj.weight"] = take(f"{att}out/kernel").reshape(dim, dim).t().contiguous()  # (heads*d, D)^T
        out[q + "attn.proj.bias"] = take(f"{att}out/bias")
        out[q + "norm2.weight"], out[q + "norm2.bias"] = take(f"{p}LayerNorm_2/scale"), take(f"{p}LayerNorm_2/bias")
        for j in (0, 1):
            out[q + f"mlp.fc{j + 1}.weight"] = take(f"{p}MlpBlock_3/Dense_{j}/kernel").t().contiguous()
            out[q + f"mlp.fc{j + 1}.bias"] = take(f"{p}MlpBlock_3/Dense_{j}/bias")
    out["norm.weight"], out["norm.bias"] = take(f"{_T}/encoder_norm/scale"), take(f"{_T}/encoder_norm/bias")
    if "head/kernel" in src:
        out["head.weight"], out["head.bias"] = take("head/kernel").t().contiguous(), take("head/bias")
    out.update(src)  # anything left (pre_logits...) is reported by the strict check
    return from_half_normalisation(out, model)


def _npz_from_glocal(state_dict: StateDict, model: nn.Module) -> StateDict:
    src = to_half_normalisation(dict(state_dict), model)
    heads = model.cfg.num_heads
    out: StateDict = {
        "embedding/kernel": src["patch_embed.proj.weight"].permute(2, 3, 1, 0).contiguous(),
        "embedding/bias": src["patch_embed.proj.bias"],
        "cls": src["cls_token"],
        f"{_T}/posembed_input/pos_embedding": src["pos_embed"],
    }
    for i in range(len(model.blocks)):
        p, q = f"{_T}/encoderblock_{i}/", f"blocks.{i}."
        att = f"{p}MultiHeadDotProductAttention_1/"
        dim = src[q + "norm1.weight"].shape[0]
        out[f"{p}LayerNorm_0/scale"], out[f"{p}LayerNorm_0/bias"] = src[q + "norm1.weight"], src[q + "norm1.bias"]
        for n, w, b in zip(
            ("query", "key", "value"),
            src[q + "attn.qkv.weight"].chunk(3),
            src[q + "attn.qkv.bias"].chunk(3),
            strict=True,
        ):
            out[f"{att}{n}/kernel"] = w.t().reshape(dim, heads, dim // heads).contiguous()
            out[f"{att}{n}/bias"] = b.reshape(heads, dim // heads).contiguous()
        out[f"{att}out/kernel"] = src[q + "attn.proj.weight"].t().reshape(heads, dim // heads, dim).contiguous()
        out[f"{att}out/bias"] = src[q + "attn.proj.bias"]
        out[f"{p}LayerNorm_2/scale"], out[f"{p}LayerNorm_2/bias"] = src[q + "norm2.weight"], src[q + "norm2.bias"]
        for j in (0, 1):
            out[f"{p}MlpBlock_3/Dense_{j}/kernel"] = src[q + f"mlp.fc{j + 1}.weight"].t().contiguous()
            out[f"{p}MlpBlock_3/Dense_{j}/bias"] = src[q + f"mlp.fc{j + 1}.bias"]
    out[f"{_T}/encoder_norm/scale"], out[f"{_T}/encoder_norm/bias"] = src["norm.weight"], src["norm.bias"]
    if "head.weight" in src:
        out["head/kernel"], out["head/bias"] = src["head.weight"].t().contiguous(), src["head.bias"]
    return out


VIT_NPZ = register_layout(
    Layout(
        name="vit-npz",
        family="vit",
        description="google-research/vision_transformer JAX .npz (flax names, mean = std = 0.5 inputs)",
        markers=(r"^Transformer/posembed_input/pos_embedding$", r"^embedding/kernel$"),
        to_glocal=_npz_to_glocal,
        from_glocal=_npz_from_glocal,
    )
)

TIMM_VIT_AUGREG = register_layout(
    Layout(
        name="timm-vit-augreg",
        family="vit",
        description="timm vit_* weights from Google (augreg): glocal's names, mean = std = 0.5 inputs (named only)",
        markers=(),  # never detected: its keys are DeiT's
        to_glocal=lambda sd, model: from_half_normalisation(dict(sd), model),
        from_glocal=lambda sd, model: to_half_normalisation(dict(sd), model),
    )
)
