"""Dataset loaders (one function per on-disk format) and tokenizers."""

from metanlp_cli.data.types import ClassSplit, EncodedSplit, LabeledTexts, Text

__all__ = ["ClassSplit", "EncodedSplit", "LabeledTexts", "Text"]
