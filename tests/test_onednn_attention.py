"""attend() on oneDNN for long float32 CPU inference: the fused kernel's numbers, and only where it may run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glocal.layers import attention
from glocal.layers import linear as linear_mod
from tests.test_linear import _ran_onednn

needs_onednn = pytest.mark.skipif(not linear_mod._ONEDNN, reason="this torch build has no oneDNN linear kernel")


def _qkv(nq: int, nk: int, requires_grad: bool = False):
    torch.manual_seed(0)
    q = torch.randn(2, 3, nq, 16, requires_grad=requires_grad)
    k = torch.randn(2, 3, nk, 16, requires_grad=requires_grad)
    v = torch.randn(2, 3, nk, 24, requires_grad=requires_grad)
    return q, k, v


@needs_onednn
def test_long_inference_equals_the_fused_kernel():
    nq = attention.ONEDNN_QUERY_BLOCK + 37  # a partial last block of queries
    q, k, v = _qkv(nq, attention.ONEDNN_MIN_KEYS + 5)
    # Non-contiguous operands, as the heads of a fused qkv projection are.
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    with torch.inference_mode():
        assert _ran_onednn(lambda: attention.attend(q, k, v, scale=0.3))
        out = attention.attend(q, k, v, scale=0.3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["grad", "short", "bias", "dropout"])
def test_other_calls_keep_the_fused_kernel(case):
    nk = 64 if case == "short" else attention.ONEDNN_MIN_KEYS
    q, k, v = _qkv(attention.ONEDNN_QUERY_BLOCK, nk, requires_grad=case == "grad")
    kwargs = {"bias": torch.zeros(1, nk)} if case == "bias" else {"dropout_p": 0.5} if case == "dropout" else {}
    assert not _ran_onednn(lambda: attention.attend(q, k, v, **kwargs))
