"""The attention core shared by every model, and the standard multi-head attention module.

:func:`attend` is the only place where a softmax over positions is taken. It computes
``softmax(q k^T * scale + bias) v`` with the fused ``scaled_dot_product_attention`` kernel by default and with an
explicit path (same numbers up to float rounding) that routes the softmax through an :class:`AttentionProbe` when an
analysis observes it. :func:`attend_logits` is the same core for attention whose logits are not a dot product (the
query-independent pooling of GC and SNL blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glocal.layers.linear import Linear, onednn_available, onednn_gemm
from glocal.layers.probe import AttentionProbe, is_observed

__all__ = ["attend", "attend_logits", "MultiHeadAttention"]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    probe: AttentionProbe | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention.

    q: (B, heads, Nq, d); k: (B, heads, Nk, d); v: (B, heads, Nk, dv); bias: additive logits broadcastable to
    (B, heads, Nq, Nk) (float; ``-inf`` masks a key). ``scale`` defaults to ``d ** -0.5``. Returns (B, heads, Nq, dv).
    Softmax runs in float32 on the explicit path whatever the input dtype, as the fused kernels do.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if not is_observed(probe):
        if bias is None and dropout_p == 0.0 and _long_inference_on_onednn(q, k, v):
            return _onednn_attention(q, k, v, scale)
        if bias is not None:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    logits = (q * scale) @ k.transpose(-2, -1)  # (B, heads, Nq, Nk)
    if bias is not None:
        logits = logits + bias
    return _softmax_probe_matmul(logits, v, probe, dropout_p)


# Long-sequence float32 inference on CPU: queries in blocks of this many rows (a block's logits stay in cache).
ONEDNN_QUERY_BLOCK = 256
# ... from this many keys and queries on; shorter sequences keep the fused kernel (equally fast there).
ONEDNN_MIN_KEYS = 512


def _long_inference_on_onednn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    if not onednn_available(q, k, v):
        return False
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return not grad and k.shape[-2] >= ONEDNN_MIN_KEYS and q.shape[-2] >= ONEDNN_QUERY_BLOCK


def _onednn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v without autograd, on oneDNN's GEMM: per (batch, head), blocks of query rows.

    In float32 the fused CPU kernel runs its block products on MKL's sgemm, which on AMD Zen is half as fast as
    oneDNN's (see :mod:`glocal.layers.linear`); at 640 px this is 1.5-1.9x faster for ViT-S's and VOLO-D1's heads
    (``(8, 6, 1601, 64)``: 127 vs 192 ms). Each block's (rows, Nk) logits are materialised, softmaxed in place and
    multiplied by v; the result equals the fused kernel's to float32 rounding.
    """
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype)  # (B, heads, Nq, dv)
    q = (q * scale).flatten(0, 1)  # (B*heads, Nq, d), scaled once
    k, v, rows = k.flatten(0, 1), v.flatten(0, 1), out.flatten(0, 1)
    for i in range(q.shape[0]):
        keys = k[i].contiguous()  # (Nk, d): the "weight" of q @ k^T
        values_t = v[i].t().contiguous()  # (dv, Nk): the "weight" of attn @ v
        for start in range(0, q.shape[1], ONEDNN_QUERY_BLOCK):
            logits = onednn_gemm(q[i, start : start + ONEDNN_QUERY_BLOCK].contiguous(), keys)  # (rows, Nk)
            torch.softmax(logits, dim=-1, out=logits)
            rows[i, start : start + ONEDNN_QUERY_BLOCK] = onednn_gemm(logits, values_t)  # (rows, dv)
    return out


def attend_logits(
    logits: torch.Tensor, v: torch.Tensor, *, probe: AttentionProbe | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """Attention from precomputed logits: softmax(logits) @ v, the map passing through ``probe``.

    logits: (B, heads, Nq, Nk); v: (B, heads, Nk, dv). Returns (B, heads, Nq, dv).
    """
    return _softmax_probe_matmul(logits, v, probe, dropout_p)


def _softmax_probe_matmul(
    logits: torch.Tensor, v: torch.Tensor, probe: AttentionProbe | None, dropout_p: float
) -> torch.Tensor:
    attn = logits.float().softmax(dim=-1).to(v.dtype)
    if probe is not None:
        attn = probe(attn)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention over tokens (B, N, C) -> (B, N, C), with a fused qkv projection.

    The one implementation of standard multi-head attention in glocal: ViT, T2T-ViT's encoder, VOLO's transformer
    blocks and Twins' windowed attention build on it. ``attn_drop`` is the dropout on the attention map, ``proj_drop``
    after the output projection, ``prefix_tokens`` the class tokens before the grid (for the probe).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        prefix_tokens: int = 0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.probe = AttentionProbe("global", prefix_tokens=prefix_tokens)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        x = attend(
            q,
            k,
            v,
            probe=self.probe,
            bias=bias,
            scale=self.scale,
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj_drop(self.proj(x))
