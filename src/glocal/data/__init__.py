"""Datasets (ImageFolder, bundled digits), the eval view (``create_transform``) and batched tensor transforms (crops,
flips, normalisation, mixing)."""

from glocal.data.datasets import (
    DIGITS_CLASSES,
    ImageDataset,
    ImageFolder,
    TensorImages,
    load_digits_split,
    load_image,
    open_dataset,
    read_rgb,
)
from glocal.data.transforms import (
    EvalTransform,
    MixConfig,
    create_transform,
    crop_params,
    mix_batch,
    normalize,
    one_hot,
    resized_crop,
)

__all__ = [
    "DIGITS_CLASSES",
    "EvalTransform",
    "ImageDataset",
    "ImageFolder",
    "MixConfig",
    "TensorImages",
    "create_transform",
    "crop_params",
    "load_digits_split",
    "load_image",
    "mix_batch",
    "normalize",
    "one_hot",
    "open_dataset",
    "read_rgb",
    "resized_crop",
]
