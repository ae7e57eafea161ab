"""glocal: vision backbones that join local and global information aggregation."""

from glocal import models as _models  # noqa: F401  (registers every family)
from glocal.dense import create_segmenter
from glocal.factory import create_model
from glocal.layers.probe import explicit_attention
from glocal.pretrained import list_pretrained
from glocal.registry import list_models, model_info
from glocal.weights import load_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "create_model",
    "create_segmenter",
    "explicit_attention",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "model_info",
    "save_checkpoint",
]
