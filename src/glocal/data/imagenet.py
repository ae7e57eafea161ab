"""ImageNet-1k's label set: the 1000 WordNet synsets in class-index order, with their names.

``imagenet1k_classes.tsv`` (synset, tab, lemmas) is transcribed from huggingface/pytorch-image-models
``timm/data/_info/imagenet_synsets.txt`` (the order) and ``imagenet_synset_to_lemma.txt`` (the names), commit
aa4b5850c1543fa488abf260f18390eda46cf85d. The order is the sorted synset ids, as ILSVRC2012 folders sort.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["imagenet1k_classes", "imagenet1k_synsets"]


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
