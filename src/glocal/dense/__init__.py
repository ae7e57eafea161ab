"""Dense prediction: necks (FPN, simple feature pyramid), segmentation heads, segmenters, detection backbones."""

from glocal.dense.evaluate import SegMetrics, confusion_matrix, metrics_from_confusion, save_overlay, slide_inference
from glocal.dense.heads import FCNHead, PooledBatchNorm2d, SemanticFPNHead, UPerHead
from glocal.dense.necks import FPN, SimpleFeaturePyramid
from glocal.dense.segmenter import (
    HEADS,
    BackboneWithFPN,
    Segmenter,
    create_segmenter,
    enable_grad_checkpointing,
    layer_decay_groups,
    load_segmenter_weights,
)

__all__ = [
    "FPN",
    "HEADS",
    "BackboneWithFPN",
    "FCNHead",
    "PooledBatchNorm2d",
    "SegMetrics",
    "Segmenter",
    "SemanticFPNHead",
    "SimpleFeaturePyramid",
    "UPerHead",
    "confusion_matrix",
    "create_segmenter",
    "enable_grad_checkpointing",
    "layer_decay_groups",
    "load_segmenter_weights",
    "metrics_from_confusion",
    "save_overlay",
    "slide_inference",
]
