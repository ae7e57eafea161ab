"""Analytic complexity of the attention designs, as the papers state it, and a check against the counted MACs.

Every formula gives multiply-accumulates (MACs, what the papers call FLOPs) of one module for one image, counting
the products the papers count (projections, convolutions, the two attention products) and nothing element-wise.
``N = H * W`` is the number of tokens and ``C`` the width; the dominant term shows how each design scales:

=====================  ===========================================  =========================================
design                 MACs                                         growth in N at fixed width
=====================  ===========================================  =========================================
global MHSA (ViT)      4 N C^2 + 2 N^2 C                            quadratic (Swin/Twins papers' Eq. for MSA)
LSA, window k1 x k2    4 N C^2 + 2 N k1 k2 C                        linear (Twins Eq. 1)
GSA / SRA, ratio r     3 N C^2 + 2 N C^2 / r^2 + 2 N^2 C / r^2      quadratic, r^2 smaller (Twins, PVT)
outlook, kernel K      2 N C^2 + N/s^2 (heads K^4 C + K^4 C)        linear (VOLO Eq. 6, stride s)
class attention        2 (N+1) C^2 + 2 C^2 + 2 (N+1) C              linear: one query (CaiT, VOLO's head)
T2T token attention    3 N c C + 2 N^2 C + N C^2                    quadratic, one head, width c -> C
T2T Performer layer    3 N c C + 4 N m C + N m + 3 N C^2            linear, m random features (+ its MLP)
BoT MHSA2d             3 N C^2 + 2 N^2 C + N (H + W) C              quadratic, plus relative logits
BoT, absolute (lj)     3 N C^2 + 3 N^2 C                            quadratic, plus position-content logits
non-local (NL)         N C C' + 2 N' C C' + 2 N N' C' + N C' C      quadratic (N' keys: N, or N/4 pooled)
simplified NL (SNL)    2 N C + C^2                                  linear, query-independent (GCNet)
GC, ratio r            2 N C + 2 r C^2                              linear, query-independent (GCNet)
SE, ratio r            2 r C^2                                      constant (pooling is not a MAC)
=====================  ===========================================  =========================================

:func:`attention_costs` finds every attention module of a model, evaluates its formula at the shape it actually
sees and puts the counted MACs of that module next to it; a test keeps them equal. For BoTNet the compared figure
adds what glocal's fused kernel multiplies beyond the paper's products (:func:`bot_fused_extra_macs`): the position
logits enter as extra query/key columns and the values are zero-padded to that width, so no N x N logit map is
stored (the price of O(N) memory in training, see :func:`glocal.layers.attention.attend`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from glocal.analysis.complexity import module_macs
from glocal.layers.attention import MultiHeadAttention
from glocal.layers.bot import AbsPosMHSA2d, MHSA2d
from glocal.layers.context import GlobalContext
from glocal.layers.non_local import NonLocal2d
from glocal.models.t2t_vit import TokenAttention, TokenPerformer
from glocal.models.twins import GlobalSubsampledAttention, LocallyGroupedAttention
from glocal.models.volo import ClassAttention, OutlookAttention

__all__ = [
    "AttentionCost",
    "attention_costs",
    "abs_bot_mhsa_macs",
    "bot_fused_extra_macs",
    "bot_mhsa_macs",
    "class_attention_macs",
    "context_macs",
    "gc_macs",
    "gsa_macs",
    "lsa_macs",
    "mhsa_macs",
    "nl_macs",
    "outlook_macs",
    "performer_macs",
    "register_analytic",
    "se_macs",
    "snl_macs",
    "token_attention_macs",
]


def mhsa_macs(tokens: int, dim: int, kv_tokens: int | None = None) -> int:
    """Multi-head self-attention over ``tokens`` queries and ``kv_tokens`` keys (default: the same tokens): q, k, v
    and output projections, q k^T and attn v. Heads do not change the count."""
    kv = tokens if kv_tokens is None else kv_tokens
    return 2 * tokens * dim * dim + 2 * kv * dim * dim + 2 * tokens * kv * dim


def lsa_macs(height: int, width: int, dim: int, window: tuple[int, int]) -> int:
    """Twins' locally-grouped self-attention: MHSA inside each k1 x k2 window; the map is padded to whole windows."""
    k1, k2 = window
    padded = -(-height // k1) * k1 * (-(-width // k2) * k2)
    return 4 * padded * dim * dim + 2 * padded * k1 * k2 * dim


def gsa_macs(height: int, width: int, dim: int, sr_ratio: int) -> int:
    """Twins' global sub-sampled attention (PVT's spatial-reduction attention): keys and values from an r x r
    stride-r convolution of the map (none when r = 1), queries from every position."""
    tokens = height * width
    if sr_ratio == 1:
        return mhsa_macs(tokens, dim)
    keys = (height // sr_ratio) * (width // sr_ratio)
    reduce = keys * sr_ratio * sr_ratio * dim * dim
    return reduce + mhsa_macs(tokens, dim, keys)


def outlook_macs(height: int, width: int, dim: int, kernel: int, heads: int, stride: int = 1) -> int:
    """VOLO's outlook attention: value and output projections at every position; at each of the (H/s)(W/s) window
    centres a linear layer predicts heads x K^2 x K^2 weights, which aggregate the K^2 neighbouring values."""
    centres = -(-height // stride) * -(-width // stride)
    k4 = kernel**4
    return 2 * height * width * dim * dim + centres * (heads * k4 * dim + k4 * dim)


def class_attention_macs(tokens: int, dim: int) -> int:
    """CaiT's class attention (VOLO's last blocks): keys and values of the class token and the ``tokens`` patch
    tokens, a query from the class token only, its two attention products and the output projection."""
    keys = tokens + 1
    return 2 * keys * dim * dim + 2 * dim * dim + 2 * keys * dim


def token_attention_macs(tokens: int, in_dim: int, dim: int) -> int:
    """T2T-ViT's single-head token attention (the ``t2t_vit_t_*`` T2T module): q, k, v from width ``in_dim`` to
    ``dim``, the two attention products over all ``tokens`` and the output projection (no input projection back)."""
    return 3 * tokens * in_dim * dim + 2 * tokens * tokens * dim + tokens * dim * dim


def performer_macs(tokens: int, in_dim: int, dim: int, features: int) -> int:
    """A T2T Performer layer (``t2t_vit_*``): k, q, v from ``in_dim`` to ``dim``; the ``features`` random features
    of k and q; phi(k)^T v, its normaliser and phi(q) (phi(k)^T v); the output projection and the layer's
    ``dim -> dim -> dim`` MLP. Linear in the number of tokens."""
    m = features
    return 3 * tokens * in_dim * dim + 4 * tokens * m * dim + tokens * m + 3 * tokens * dim * dim


def bot_mhsa_macs(height: int, width: int, dim: int) -> int:
    """BoTNet's MHSA2d: q, k, v 1x1 projections (no output projection), the two attention products and the 2-D
    relative logits (each query against H height and W width offsets)."""
    tokens = height * width
    return 3 * tokens * dim * dim + 2 * tokens * tokens * dim + tokens * (height + width) * dim


def abs_bot_mhsa_macs(height: int, width: int, dim: int) -> int:
    """leaderj1001's BoT MHSA: biased q, k, v 1x1 convs (biases are additions), the two attention products and the
    content-position product (every position vector against every query)."""
    tokens = height * width
    return 3 * tokens * dim * dim + 3 * tokens * tokens * dim


def bot_fused_extra_macs(height: int, width: int, dim: int, heads: int, *, absolute: bool = False) -> int:
    """MACs glocal's fused BoT attention multiplies beyond the paper's: relative logits as H + W one-hot key columns
    in ``q k^T`` and as many zero columns of the values (2 heads N^2 (H + W)); absolute positions (lj) as d extra
    query/key columns, already counted as the content-position product, plus d zero value columns (N^2 C)."""
    tokens = height * width
    if absolute:
        return tokens * tokens * dim
    return 2 * heads * tokens * tokens * (height + width)


def nl_macs(height: int, width: int, dim: int, ratio: float = 0.5, subsample: bool = False) -> int:
    """Embedded-Gaussian non-local block with inner width C' = int(C * ratio): theta on every position, phi and g on
    the (optionally 2x2 max-pooled) keys, the two attention products and the output 1x1 conv."""
    inner = int(dim * ratio)
    tokens = height * width
    keys = (height // 2) * (width // 2) if subsample else tokens
    return tokens * dim * inner + 2 * keys * dim * inner + 2 * tokens * keys * inner + tokens * inner * dim


def context_macs(height: int, width: int, dim: int, hidden: int | None, pooling: str) -> int:
    """GCNet's framework (Section 4.1): context modelling, then the transform of one C-vector.

    Attention pooling costs a C -> 1 conv and a weighted sum over N positions; average pooling no MAC. The transform
    is one C -> C conv (``hidden=None``) or a C -> hidden -> C bottleneck.
    """
    pool = 2 * height * width * dim if pooling == "att" else 0
    transform = dim * dim if hidden is None else 2 * dim * hidden
    return pool + transform


def snl_macs(height: int, width: int, dim: int) -> int:
    """GCNet's simplified non-local block."""
    return context_macs(height, width, dim, None, "att")


def gc_macs(height: int, width: int, dim: int, ratio: float = 1 / 16) -> int:
    """GCNet's global context block."""
    return context_macs(height, width, dim, int(dim * ratio), "att")


def se_macs(dim: int, ratio: float = 1 / 16) -> int:
    """SENet's squeeze-excitation: only the bottleneck multiplies; the squeeze is an average."""
    return context_macs(1, 1, dim, int(dim * ratio), "avg")


@dataclass(frozen=True)
class AttentionCost:
    """One attention module at the shape it sees: the paper's formula next to the counted MACs (per image)."""

    module: str
    kind: str
    shape: str
    analytic: int
    counted: int

    @property
    def ratio(self) -> float:
        return self.counted / self.analytic if self.analytic else float("nan")


# A call's positional arguments as seen by a formula: tensors by their shape, anything else as it is.
CallArgs = tuple
# Module class (exact type) -> (kind, formula of the module and its call's arguments).
_ANALYTIC: dict[type, tuple[str, Callable[[nn.Module, CallArgs], tuple[str, int]]]] = {}


def register_analytic(cls: type, kind: str):
    """Decorator: ``fn(module, args) -> (shape description, analytic MACs of the call)`` for modules of exactly
    type ``cls``, ``args`` being the call's positional arguments with tensors replaced by their shapes."""

    def decorator(fn: Callable[[nn.Module, CallArgs], tuple[str, int]]):
        _ANALYTIC[cls] = (kind, fn)
        return fn

    return decorator


@register_analytic(MultiHeadAttention, "global MHSA")
def _mhsa(module: MultiHeadAttention, args: CallArgs) -> tuple[str, int]:
    groups, tokens, dim = args[0]  # (B, N, C)
    return f"N={tokens} C={dim}", groups * mhsa_macs(tokens, dim)


@register_analytic(LocallyGroupedAttention, "LSA")
def _lsa(module: LocallyGroupedAttention, args: CallArgs) -> tuple[str, int]:
    (_, _, dim), (height, width) = args  # tokens (B, N, C), grid size
    ws = module.window_size
    return f"{height}x{width} C={dim} window {ws}", lsa_macs(height, width, dim, (ws, ws))


@register_analytic(GlobalSubsampledAttention, "GSA")
def _gsa(module: GlobalSubsampledAttention, args: CallArgs) -> tuple[str, int]:
    (_, _, dim), (height, width) = args
    return f"{height}x{width} C={dim} sr {module.sr_ratio}", gsa_macs(height, width, dim, module.sr_ratio)


@register_analytic(OutlookAttention, "outlook")
def _outlook(module: OutlookAttention, args: CallArgs) -> tuple[str, int]:
    _, height, width, dim = args[0]  # (B, H, W, C)
    macs = outlook_macs(height, width, dim, module.kernel_size, module.num_heads, stride=2)
    return f"{height}x{width} C={dim} K={module.kernel_size}", macs


@register_analytic(ClassAttention, "class attention")
def _class_attention(module: ClassAttention, args: CallArgs) -> tuple[str, int]:
    _, tokens, dim = args[0]  # (B, 1 + N, C)
    return f"N={tokens - 1} C={dim}", class_attention_macs(tokens - 1, dim)


@register_analytic(TokenAttention, "T2T token attention")
def _token_attention(module: TokenAttention, args: CallArgs) -> tuple[str, int]:
    _, tokens, in_dim = args[0]  # (B, N, c)
    return f"N={tokens} c={in_dim} C={module.out_dim}", token_attention_macs(tokens, in_dim, module.out_dim)


@register_analytic(TokenPerformer, "T2T Performer")
def _performer(module: TokenPerformer, args: CallArgs) -> tuple[str, int]:
    _, tokens, in_dim = args[0]  # (B, N, c)
    m = module.num_random_features
    return f"N={tokens} c={in_dim} C={module.out_dim} m={m}", performer_macs(tokens, in_dim, module.out_dim, m)


@register_analytic(AbsPosMHSA2d, "BoT MHSA2d, absolute positions")
def _abs_bot(module: AbsPosMHSA2d, args: CallArgs) -> tuple[str, int]:
    _, dim, height, width = args[0]
    macs = abs_bot_mhsa_macs(height, width, dim)
    return f"{height}x{width} C={dim}", macs + bot_fused_extra_macs(height, width, dim, module.num_heads, absolute=True)


@register_analytic(MHSA2d, "BoT MHSA2d")
def _bot(module: MHSA2d, args: CallArgs) -> tuple[str, int]:
    _, dim, height, width = args[0]
    macs = bot_mhsa_macs(height, width, dim)
    return f"{height}x{width} C={dim}", macs + bot_fused_extra_macs(height, width, dim, module.num_heads)


@register_analytic(NonLocal2d, "non-local")
def _nl(module: NonLocal2d, args: CallArgs) -> tuple[str, int]:
    _, dim, height, width = args[0]
    subsample = not isinstance(module.pool, nn.Identity)
    ratio = module.theta.out_channels / dim
    return f"{height}x{width} C={dim}", nl_macs(height, width, dim, ratio, subsample)


@register_analytic(GlobalContext, "context")
def _context(module: GlobalContext, args: CallArgs) -> tuple[str, int]:
    _, dim, height, width = args[0]
    hidden = None if len(module.transform) == 1 else module.transform[0].out_channels
    return f"{height}x{width} C={dim}", context_macs(height, width, dim, hidden, module.pooling)


def _context_kind(module: GlobalContext) -> str:
    if len(module.transform) == 1:
        return "SNL"
    return "GC" if module.pooling == "att" else "SE"


def attention_costs(model: nn.Module, input_size: tuple[int, int, int]) -> list[AttentionCost]:
    """Every attention module of ``model`` with a registered formula: analytic vs counted MACs for one image.

    Runs on whatever device the model is on (the meta device costs nothing). A module called several times (a
    windowed attention over window batches) adds up its calls.
    """
    seen: dict[str, tuple[nn.Module, list[CallArgs]]] = {}
    handles = []
    for name, module in model.named_modules():
        if type(module) in _ANALYTIC:
            seen[name] = (module, [])

            def hook(mod, args, calls=seen[name][1]):
                calls.append(tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args))

            handles.append(module.register_forward_pre_hook(hook))
    try:
        counted = module_macs(model, input_size)
    finally:
        for h in handles:
            h.remove()
    costs = []
    for name, (module, calls) in seen.items():
        kind, formula = _ANALYTIC[type(module)]
        if isinstance(module, GlobalContext):
            kind = _context_kind(module)
        analytic = 0
        for args in calls:
            described, macs = formula(module, args)
            analytic += macs
        if calls:
            costs.append(AttentionCost(name, kind, described, analytic, counted.get(name, 0)))
    return costs
