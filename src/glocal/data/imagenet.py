"""ImageNet-1k's label set: the 1000 WordNet synsets in class-index order, with their names.

``imagenet1k_classes.tsv`` (synset, tab, lemmas) is transcribed from huggingface/pytorch-image-models
``timm/data/_info/imagenet_synsets.txt`` (the order) and ``imagenet_synset_to_lemma.txt`` (the names), commit
aa4b5850c1543fa488abf260f18390eda46cf85d. The order is the sorted synset ids, as ILSVRC2012 folders sort.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources

import torch

from glocal.data.datasets import ImageFolder

__all__ = ["as_imagenet1k", "imagenet1k_classes", "imagenet1k_synsets"]


@functools.cache
def _table() -> tuple[tuple[str, str], ...]:
    text = resources.files("glocal.data").joinpath("imagenet1k_classes.tsv").read_text(encoding="utf-8")
    return tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line)


def imagenet1k_synsets() -> tuple[str, ...]:
    """The 1000 synset ids (``n01440764``...) in class-index order."""
    return tuple(synset for synset, _ in _table())


def imagenet1k_classes() -> tuple[str, ...]:
    """The 1000 class names (the synsets' first lemma: ``tench``...) in class-index order."""
    return tuple(names.split(",")[0] for _, names in _table())


def as_imagenet1k(dataset: ImageFolder) -> ImageFolder:
    """``dataset``, whose class folders are ImageNet-1k synset ids (``n01440764``...; any subset of them, as
    ILSVRC2012 val sorted into folders), relabelled with the 1000 classes' indices; ``classes`` become their names.
    ``ValueError`` names folders that are not synsets of ImageNet-1k."""
    index = {synset: i for i, synset in enumerate(imagenet1k_synsets())}
    unknown = [name for name in dataset.classes if name not in index]
    if unknown:
        raise ValueError(
            f"the class folders of {dataset.root} must be ImageNet-1k synset ids (n01440764 ...) for weights "
            f"trained on ImageNet-1k; not {unknown[:5]}"
        )
    relabelled = copy.copy(dataset)
    relabelled.samples = [(path, index[dataset.classes[label]]) for path, label in dataset.samples]
    relabelled.labels = torch.tensor([label for _, label in relabelled.samples], dtype=torch.int64)
    relabelled.classes = imagenet1k_classes()
    return relabelled
