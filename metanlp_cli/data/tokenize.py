"""Word-level tokenizer for the from-scratch backbones; its vocabulary comes from meta-train text only."""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence

import torch

from metanlp_cli.data.types import Text

PAD, UNK, SEP = "<pad>", "<unk>", "<sep>"
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


class WordTokenizer:
    """Splits on words and punctuation; ids 0/1/2 are padding, unknown and the sentence-pair separator.

    Words outside the meta-train vocabulary map to <unk>, or, with `oov_buckets > 0`, to one of that
    many hashed ids after the vocabulary (as fastText does for n-grams): an unseen word then keeps an
    identity of its own (a random, untrained embedding) instead of merging with every other unseen word.
    """

    def __init__(
        self,
        max_length: int = 64,
        lowercase: bool = True,
        min_count: int = 1,
        max_vocab_size: int | None = None,
        oov_buckets: int = 0,
        min_length: int = 5,
    ) -> None:
        self.max_length = max_length
        self.lowercase = lowercase
        self.min_count = min_count
        self.max_vocab_size = max_vocab_size
        self.oov_buckets = oov_buckets
        self.min_length = min_length  # the CNN's widest filter must fit
        self.vocabulary: list[str] = [PAD, UNK, SEP]
        self._index = {word: i for i, word in enumerate(self.vocabulary)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + self.oov_buckets

    def words(self, sentence: str) -> list[str]:
        return WORD_PATTERN.findall(sentence.lower() if self.lowercase else sentence)

    def fit(self, texts: Sequence[Text]) -> WordTokenizer:
        counts: Counter[str] = Counter()
        for text in texts:
            for sentence in (text,) if isinstance(text, str) else text:
                counts.update(self.words(sentence))
        kept = [word for word, count in counts.most_common(self.max_vocab_size) if count >= self.min_count]
        self.vocabulary = [PAD, UNK, SEP] + sorted(kept)
        self._index = {word: i for i, word in enumerate(self.vocabulary)}
        return self

    def ids(self, text: Text) -> list[int]:
        if isinstance(text, str):
            words = self.words(text)
        else:
            words = self.words(text[0]) + [SEP] + self.words(text[1])
        return [self._id(word) for word in words[: self.max_length]] or [1]  # empty text -> <unk>

    def _id(self, word: str) -> int:
        index = self._index.get(word)
        if index is not None:
            return index
        if self.oov_buckets:
            return len(self.vocabulary) + zlib.crc32(word.encode("utf-8")) % self.oov_buckets
        return 1

    def encode(self, texts: Sequence[Text]) -> torch.Tensor:
        """All texts at once into one [len(texts), L] tensor, L = the longest (capped at max_length)."""
        rows = [self.ids(text) for text in texts]
        length = max([self.min_length] + [len(row) for row in rows])
        token_ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            token_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return token_ids

    def state_dict(self) -> dict:
        return {"vocabulary": list(self.vocabulary)}

    def load_state_dict(self, state: dict) -> None:
        self.vocabulary = list(state["vocabulary"])
        self._index = {word: i for i, word in enumerate(self.vocabulary)}
