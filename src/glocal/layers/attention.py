"""The attention core shared by every model, and the standard multi-head attention module.

:func:`attend` is the only place where a softmax over positions is taken. It computes
``softmax(q k^T * scale + bias) v`` with the fused ``scaled_dot_product_attention`` kernel by default and with an
explicit path (same numbers up to float rounding) that routes the softmax through an :class:`AttentionProbe` when an
analysis observes it. :func:`attend_logits` is the same core for attention whose logits are not a dot product (the
query-independent pooling of GC and SNL blocks).

Additive position logits that factor as a product ``a b^T`` (BoTNet's relative and absolute position terms) are
passed as ``bias_factors`` rather than as an (Nq, Nk) ``bias``: the fused path appends them to the queries and keys
(``[q * scale, a] . [k, b] = q k^T * scale + a b^T``) and so keeps torch's flash kernel, whose forward and backward
hold O(N) memory, where a materialised bias would send training to the O(N^2) math kernel (at 2048 px BoTNet's first
c5 block attends over 128 x 128 positions: 4 GiB per copy of its logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glocal.backends.cpu import fast_attention
from glocal.layers.probe import AttentionProbe, is_observed

__all__ = ["attend", "attend_logits", "MultiHeadAttention"]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    probe: AttentionProbe | None = None,
    bias: torch.Tensor | None = None,
    bias_factors: tuple[torch.Tensor, torch.Tensor] | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention.

    q: (B, heads, Nq, d); k: (B, heads, Nk, d); v: (B, heads, Nk, dv); bias: additive logits broadcastable to
    (B, heads, Nq, Nk) (float; ``-inf`` masks a key); bias_factors: ``(a, b)``, a (B, heads, Nq, r) and
    b (B, heads, Nk, r) (either broadcastable over B and heads), adding the logits ``a b^T`` without materialising
    them on the fused path. ``scale`` defaults to ``d ** -0.5`` and applies to ``q k^T`` only. Returns
    (B, heads, Nq, dv). Softmax runs in at least float32 on the explicit path (bf16/fp16 upcast), as the fused
    kernels do. Attention dropout (``dropout_p > 0``) in training runs torch's math kernel, which keeps the map.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if bias is not None and bias_factors is not None:
        raise ValueError("attend takes bias or bias_factors, not both")
    if not is_observed(probe):
        if bias_factors is not None:
            q, k, v, dv = _fold_factors(q, k, v, scale, *bias_factors)
            return _fused(q, k, v, None, 1.0, dropout_p)[..., :dv]
        return _fused(q, k, v, bias, scale, dropout_p)
    if bias_factors is not None:
        a, b = bias_factors
        bias = a @ b.transpose(-2, -1)  # (B, heads, Nq, Nk)
    return _explicit(q, k, v, scale, bias, probe, dropout_p)


def _explicit(
    q,
    k,
    v,
    scale: float,
    bias=None,
    probe: AttentionProbe | None = None,
    dropout_p: float = 0.0,
    *,
    native_softmax: bool = False,
):
    """The explicit path: the (B, heads, Nq, Nk) logits materialised, the softmax through ``probe``. Also the CPU
    backend's explicit route for short unobserved sequences (:func:`glocal.backends.cpu.fast_attention`), which may
    ask for ``native_softmax``: torch's softmax kernel in the logits' own dtype, which for bfloat16 on CPU computes in
    float32 and rounds once (the float32 softmax's values to one bfloat16 rounding, ``tests/test_cpu_backend.py``)
    and skips the float32 copies of the map."""
    logits = (q * scale) @ k.transpose(-2, -1)  # (B, heads, Nq, Nk)
    if bias is not None:
        logits = logits + bias
    return _softmax_probe_matmul(logits, v, probe, dropout_p, native_softmax)


def _fused(q, k, v, bias: torch.Tensor | None, scale: float, dropout_p: float) -> torch.Tensor:
    # torch's CPU flash kernel takes only inputs whose head dimension is contiguous; any other stride (NL's and
    # BoTNet's channel-major projections) silently runs the math kernel, which materialises the N x N map.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if bias is None and dropout_p == 0.0 and (out := fast_attention(q, k, v, scale, _explicit)) is not None:
        return out  # the CPU backend's explicit or blocked route, where it is on and measured faster
    if bias is not None:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


def _fold_factors(q, k, v, scale: float, a: torch.Tensor, b: torch.Tensor):
    """``[q * scale, a]``, ``[k, b]`` and v, zero-padded to one head width (the flash kernel needs one), and dv."""
    lead = torch.broadcast_shapes(q.shape[:2], k.shape[:2], v.shape[:2], a.shape[:2], b.shape[:2])  # (B, heads)
    q = torch.cat([(q * scale).expand(*lead, -1, -1), a.to(q.dtype).expand(*lead, -1, -1)], dim=-1)  # (.., Nq, d+r)
    k = torch.cat([k.expand(*lead, -1, -1), b.to(k.dtype).expand(*lead, -1, -1)], dim=-1)  # (.., Nk, d + r)
    dv, width = v.shape[-1], max(q.shape[-1], v.shape[-1])
    q, k = F.pad(q, (0, width - q.shape[-1])), F.pad(k, (0, width - k.shape[-1]))
    v = F.pad(v.expand(*lead, -1, -1), (0, width - dv))  # (B, heads, Nk, width)
    return q, k, v, dv


def attend_logits(
    logits: torch.Tensor, v: torch.Tensor, *, probe: AttentionProbe | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """Attention from precomputed logits: softmax(logits) @ v, the map passing through ``probe``.

    logits: (B, heads, Nq, Nk); v: (B, heads, Nk, dv). Returns (B, heads, Nq, dv).
    """
    return _softmax_probe_matmul(logits, v, probe, dropout_p)


def _softmax_probe_matmul(
    logits: torch.Tensor, v: torch.Tensor, probe: AttentionProbe | None, dropout_p: float, native: bool = False
) -> torch.Tensor:
    # At least float32 inside the softmax (the cast folded into its kernel: no float32 copy of the logits).
    dtype = logits.dtype if native else torch.promote_types(logits.dtype, torch.float32)
    attn = _softmax_in_memory_order(logits, dtype).to(v.dtype)
    if probe is not None:
        attn = probe(attn)
    if dropout_p > 0.0:
        attn = F.dropout(attn, p=dropout_p)
    return attn @ v


def _softmax_in_memory_order(logits: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``logits.softmax(-1, dtype=dtype)``, computed on the tensor as it lies in memory and returned in the same
    layout.

    Torch's CPU kernel runs a short contiguous last axis row by row, 40-60x slower than the same softmax across a long
    inner axis (VOLO's outlook attention: 9 keys per row, ``benchmarks/outlook_attention.py``); a caller that stores
    its logits with the keys outermost (a permuted view) gets the fast kernel. A contiguous tensor takes the plain
    call.
    """
    if logits.is_contiguous():
        return logits.softmax(dim=-1, dtype=dtype)
    order = sorted(range(logits.ndim), key=lambda d: logits.stride(d), reverse=True)  # outermost axis first
    stored = logits.permute(order)
    if not stored.is_contiguous():  # overlapping or gapped strides: no memory order to follow
        return logits.softmax(dim=-1, dtype=dtype)
    attn = stored.softmax(dim=order.index(logits.ndim - 1), dtype=dtype)
    return attn.permute(sorted(range(logits.ndim), key=order.__getitem__))  # back to the caller's axis order


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
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
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
