"""Token arrays: embedding inputs given as ids in the model's own vocabulary.

A token array is what the model's tokenizer makes of a text, without the special tokens: the
backend adds those as the tokenizer does for a text, so the ids of "hello world" embed exactly
as "hello world" does. An id the vocabulary lacks is the client's mistake, most often a client
that tokenized with another model's tokenizer (LangChain's OpenAIEmbeddings does, with
OpenAI's): the 400 says so, and what to send instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmserve.errors import InvalidRequest

__all__ = ["SpecialTokens", "check_vocabulary", "split_inputs"]


@dataclass(frozen=True)
class SpecialTokens:
    """The ids a tokenizer puts around a text's own: [CLS] ... [SEP], a BOS..."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @classmethod
    def around(cls, plain: list[int], full: list[int]) -> SpecialTokens:
        """Learned from one text tokenized without (`plain`) and with (`full`) its special
        tokens: what the tokenizer adds is what `full` has before and after `plain`."""
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return cls(tuple(full[:start]), tuple(full[start + len(plain) :]))
        raise ValueError(f"the tokenizer's special tokens do not surround the text: {full}")

    def wrap(self, ids: list[int], limit: int) -> list[int]:
        """`ids` as the tokenizer would give them for their text, cut (as a text is) so that
        the whole is at most `limit` ids."""
        room = max(0, limit - len(self.prefix) - len(self.suffix))
        return [*self.prefix, *ids[:room], *self.suffix]


def split_inputs(inputs: list[str | list[int]]) -> tuple[dict[int, str], dict[int, list[int]]]:
    """The texts and the token arrays of `inputs`, each by its position."""
    texts = {i: x for i, x in enumerate(inputs) if isinstance(x, str)}
    arrays = {i: x for i, x in enumerate(inputs) if not isinstance(x, str)}
    return texts, arrays


def check_vocabulary(arrays: list[list[int]], size: int, model: str) -> None:
    """InvalidRequest naming the first id of `arrays` outside a vocabulary of `size` ids."""
    for ids in arrays:
        for token in ids:
            if not 0 <= token < size:
                raise InvalidRequest(
                    f"token {token} is not in the vocabulary of model {model!r} (ids 0 to "
                    f"{size - 1}): token arrays are read in the model's own vocabulary. A "
                    "client that tokenized with another model's tokenizer should send the text "
                    "instead (LangChain's OpenAIEmbeddings: check_embedding_ctx_length=False)",
                    param="input",
                )
