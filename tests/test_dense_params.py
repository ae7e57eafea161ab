"""Segmenter sizes equal the Twins paper's (Chu et al., arXiv 2104.13840, Tables 4 and 5: ADE20K, Semantic FPN and
UPerNet), counted on the meta device. The paper's counts include the ImageNet classifier the backbone keeps unused
(embed_dim x 1000 + 1000); the segmenter drops it, so it is added back here."""

from __future__ import annotations

import pytest
import torch

import glocal

PAPER_MILLIONS = {
    ("twins_pcpvt_small", "semantic_fpn"): 28.4,
    ("twins_pcpvt_base", "semantic_fpn"): 48.1,
    ("twins_pcpvt_large", "semantic_fpn"): 65.3,
    ("twins_svt_small", "semantic_fpn"): 28.3,
    ("twins_svt_base", "semantic_fpn"): 60.4,
    ("twins_svt_large", "semantic_fpn"): 103.7,
    ("twins_pcpvt_small", "upernet"): 54.6,
    ("twins_svt_small", "upernet"): 54.4,
    ("twins_svt_base", "upernet"): 88.5,
}


@pytest.mark.parametrize(("name", "head"), list(PAPER_MILLIONS))
def test_segmenter_parameters_equal_the_papers(name, head):
    with torch.device("meta"):
        model = glocal.create_segmenter(name, head=head, num_classes=150)
    dim = model.pyramid.channels[-1]
    params = sum(p.numel() for p in model.parameters()) + dim * 1000 + 1000
    assert params / 1e6 == pytest.approx(PAPER_MILLIONS[name, head], abs=0.1)  # the paper rounds to 0.1M
