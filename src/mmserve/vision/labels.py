"""Class names shipped with the package, read without importing any runtime.

`imagenet_labels.txt` (1000 lines, in ImageNet-1k class-index order) was derived from the
WordNet lemmas of the ImageNet-1k synsets (timm's `imagenet_synsets.txt` and
`imagenet_synset_to_lemma.txt`): the first lemma, or a later one that extends it ("tabby" ->
"tabby cat", "pickup" -> "pickup truck"); the two names ImageNet uses twice are told apart
("crane (bird)" / "crane (machine)", "maillot (tights)" / "tank suit").
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["imagenet_labels"]


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, by class index."""
    text = resources.files("mmserve.vision").joinpath("imagenet_labels.txt").read_text("utf-8")
    return tuple(text.splitlines())
