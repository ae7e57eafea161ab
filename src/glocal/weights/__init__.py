"""Checkpoints: glocal's own format, and import/export of the official releases' and timm's layouts.

``open_checkpoint(path)`` decides once what a checkpoint is (a glocal folder, a training state, a foreign file) and
returns a :class:`Checkpoint` with its model name, overrides, classes, input size, preprocessing and tensors.
``save_checkpoint(model, folder)`` writes ``model.safetensors`` + ``config.json``; ``load_checkpoint(model, path)``
reads that folder or any supported file (``.safetensors``, ``.npz``, ``.pth``/``.pt``/``.bin``), detects the
layout from its keys and maps, adapts and checks it; ``export_state_dict(model, layout)`` writes a layout back.
Importing this package registers every family's layouts. Twins, VOLO, ViT (DeiT, timm) and the T2T-ViT_t releases
use glocal's own names and need no map; ``docs/checkpoints.md`` lists every source and its layout.
"""

from glocal.weights import resnet as _resnet  # noqa: F401  (each family module registers its layouts)
from glocal.weights import t2t_vit as _t2t_vit  # noqa: F401
from glocal.weights import vit as _vit  # noqa: F401
from glocal.weights.adapt import CheckpointMismatchError
from glocal.weights.checkpoint import STATE_FORMAT, Checkpoint, is_train_state, open_checkpoint, resolve_model_name
from glocal.weights.glocal_format import checkpoint_config, is_glocal_checkpoint, read_glocal_config, save_checkpoint
from glocal.weights.io import CheckpointError, read_state_dict
from glocal.weights.layout import KeyMap, Layout, detect_layout, get_layout, layouts_for, register_layout
from glocal.weights.load import LoadResult, export_state_dict, import_state_dict, load_checkpoint, load_state_dict

__all__ = [
    "STATE_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "CheckpointMismatchError",
    "KeyMap",
    "Layout",
    "LoadResult",
    "checkpoint_config",
    "detect_layout",
    "export_state_dict",
    "get_layout",
    "import_state_dict",
    "is_glocal_checkpoint",
    "is_train_state",
    "layouts_for",
    "load_checkpoint",
    "load_state_dict",
    "open_checkpoint",
    "read_glocal_config",
    "read_state_dict",
    "register_layout",
    "resolve_model_name",
    "save_checkpoint",
]
