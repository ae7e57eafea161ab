"""Attention recording through probes, and the query-independence statistic."""

from __future__ import annotations

import pytest
import torch

import glocal
from glocal.analysis.attention import mean_cosine_distance, query_independence, record_attention
from glocal.layers.probe import is_observed
from tests.conftest import perturb_


def test_record_attention_collects_every_block_and_restores_fused_path():
    model = perturb_(glocal.create_model("resnet50", block_attn="nl", attn_stages=(3, 4), attn_blocks=(-1,))).eval()
    with torch.no_grad():
        plain = model(torch.randn(1, 3, 64, 64))
        with record_attention(model) as maps:
            recorded = model(torch.randn(1, 3, 64, 64))
    assert sorted(maps) == ["layer2.3.context", "layer3.5.context"]
    assert maps["layer2.3.context"][0].attn.shape == (1, 1, 64, 64)  # 8x8 positions attend to 8x8
    torch.testing.assert_close(maps["layer3.5.context"][0].attn.sum(-1), torch.ones(1, 1, 16))
    assert plain.shape == recorded.shape
    assert not any(is_observed(m) for m in model.modules() if isinstance(m, glocal.layers.AttentionProbe))


def test_query_independence_extremes():
    same = torch.softmax(torch.randn(1, 1, 1, 10), -1).expand(2, 3, 7, 10)
    assert query_independence(same) == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.eye(5).expand(1, 1, 5, 5)
    assert query_independence(one_hot) == pytest.approx(1.0)


def test_mean_cosine_distance_matches_pairwise_loop():
    rows = torch.rand(4, 6)
    pairs = [
        1 - torch.nn.functional.cosine_similarity(rows[i], rows[j], dim=0) for i in range(4) for j in range(4) if i != j
    ]
    torch.testing.assert_close(mean_cosine_distance(rows), torch.stack(pairs).mean())


def test_query_independence_rejects_wrong_rank():
    with pytest.raises(ValueError, match="queries, keys"):
        query_independence(torch.rand(3, 4))
