"""The data layer: one loader per on-disk format, each returning a ClassSplit or a TaskCollection
(types.py); reading and bad-row handling (read.py); the token cache (cache.py); tokenizers."""

from metanlp_cli.data.types import ClassSplit, EncodedSplit, LabeledTexts, Task, TaskCollection, Text

__all__ = ["ClassSplit", "EncodedSplit", "LabeledTexts", "Task", "TaskCollection", "Text"]
