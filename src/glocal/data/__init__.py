"""Datasets (ImageFolder, bundled digits) and batched tensor transforms (crops, flips, normalisation, mixing)."""

from glocal.data.datasets import (
    DIGITS_CLASSES,
    ImageDataset,
    ImageFolder,
    TensorImages,
    load_digits_split,
    load_image,
    open_dataset,
)
from glocal.data.transforms import (
    MixConfig,
    center_crop,
    create_transform,
    crop_params,
    mix_batch,
    normalize,
    one_hot,
    resized_crop,
)

__all__ = [
    "DIGITS_CLASSES",
    "ImageDataset",
    "ImageFolder",
    "MixConfig",
    "TensorImages",
    "center_crop",
    "create_transform",
    "crop_params",
    "load_digits_split",
    "load_image",
    "mix_batch",
    "normalize",
    "one_hot",
    "open_dataset",
    "resized_crop",
]
