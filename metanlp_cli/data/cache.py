"""Tokenized texts cached on disk, keyed by content: the tokenizer (its class, code and state) and the texts;
and the output of an encoder's frozen layers, keyed by the encoder's fingerprint and the token ids.

A second run on the same data with the same backbone loads the token tensor instead of tokenizing
again (and, over a frozen pretrained encoder, its features instead of encoding again); any change to
the texts, the vocabulary, a tokenizer setting or the tokenizer's code gives a new key (as does any
change to the frozen weights or settings the features depend on). Files are written atomically and
read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from metanlp_cli.data.types import EncodedSplit, Text

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def tokenizer_fingerprint(tokenizer) -> str:
    """Class, source code and public attributes (settings and fitted vocabulary) of a tokenizer."""
    kind = type(tokenizer)
    try:
        code = inspect.getsource(kind)
    except (OSError, TypeError):
        code = ""
    settings = {name: value for name, value in vars(tokenizer).items() if not name.startswith("_")}
    return json.dumps(
        {"format": CACHE_FORMAT, "class": f"{kind.__module__}.{kind.__qualname__}", "code": code, "state": settings},
        sort_keys=True,
        default=repr,
    )


class TokenCache:
    """`encode(texts)` = `tokenizer.encode(texts)`, read from `cache_dir` when it was done before
    (no caching when `cache_dir` is None). The tokenizer must not change while the cache is in use."""

    def __init__(self, tokenizer, cache_dir: str | Path | None) -> None:
        self.tokenizer = tokenizer
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.fingerprint = tokenizer_fingerprint(tokenizer).encode() if cache_dir is not None else b""

    def path(self, texts: Sequence[Text]) -> Path:
        digest = hashlib.sha256(self.fingerprint)
        digest.update(json.dumps(list(texts), ensure_ascii=False).encode())
        return self.cache_dir / f"tokens-{digest.hexdigest()[:32]}.pt"

    def encode(self, texts: Sequence[Text]) -> tuple[torch.Tensor, bool]:
        """The token tensor, and whether it came from the cache."""
        if self.cache_dir is None:
            return self.tokenizer.encode(texts), False
        path = self.path(texts)
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)["inputs"], True
            except Exception as error:  # a torn or foreign file: tokenize again and overwrite it
                log.warning("cache file %s is unreadable (%s); tokenizing again", path, str(error).splitlines()[0])
        inputs = self.tokenizer.encode(texts)
        _write_atomically(path, {"format": CACHE_FORMAT, "inputs": inputs})
        return inputs, False


class FeatureCache:
    """`features(token_ids, compute)` = `compute(token_ids)`, read from `cache_dir` when it was done before.

    The key is the encoder's `feature_fingerprint()` (what its frozen layers' output depends on besides
    the token ids: see `PretrainedEncoder`) and the token ids' content. No caching when `cache_dir` is
    None or the encoder has no fingerprint. `compute` returning None (nothing frozen) is not cached.
    """

    def __init__(self, encoder, cache_dir: str | Path | None) -> None:
        self.encoder = encoder
        usable = cache_dir is not None and hasattr(encoder, "feature_fingerprint")
        self.cache_dir = Path(cache_dir) if usable else None

    @cached_property
    def fingerprint(self) -> bytes:  # computed once, on first use: it may hash the frozen weights
        return json.dumps({"format": CACHE_FORMAT, "encoder": self.encoder.feature_fingerprint()}).encode()

    def path(self, token_ids: torch.Tensor) -> Path:
        digest = hashlib.sha256(self.fingerprint)
        digest.update(f"{tuple(token_ids.shape)} {token_ids.dtype}".encode())
        digest.update(token_ids.detach().cpu().contiguous().numpy().tobytes())
        return self.cache_dir / f"features-{digest.hexdigest()[:32]}.pt"

    def features(
        self, token_ids: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor | None]
    ) -> tuple[torch.Tensor | None, bool]:
        """The features (on the token ids' device), and whether they came from the cache."""
        if self.cache_dir is None:
            return compute(token_ids), False
        path = self.path(token_ids)
        if path.is_file():
            try:
                return torch.load(path, map_location=token_ids.device, weights_only=True)["features"], True
            except Exception as error:  # a torn or foreign file: encode again and overwrite it
                log.warning("cache file %s is unreadable (%s); encoding again", path, str(error).splitlines()[0])
        features = compute(token_ids)
        if features is not None:
            _write_atomically(path, {"format": CACHE_FORMAT, "features": features.cpu()})
        return features, False


def _write_atomically(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def frozen_features_of(
    encoder: nn.Module, token_ids: torch.Tensor, progress: bool, cache: FeatureCache
) -> tuple[torch.Tensor | None, bool]:
    """The output of the encoder's frozen layers for these rows (None where it has none), and whether
    it was read from `cache`."""
    frozen_features = getattr(encoder, "frozen_features", None)
    if frozen_features is None:
        return None, False
    return cache.features(token_ids, lambda rows: frozen_features(rows, progress))


def cache_frozen_features(
    encoder: nn.Module, splits: dict[str, EncodedSplit], progress: bool = True, cache_dir: str | None = None
) -> tuple[dict[str, EncodedSplit], float]:
    """Where the encoder is frozen, put its features in place of each split's token ids, computed once:
    every episode, in training and evaluation, reuses them. With `cache_dir` they are also kept on disk
    for the next run (see `FeatureCache`). Returns the seconds taken too.

    An encoder opts in with `frozen_features(token_ids, progress) -> features | None` (None: it trains),
    and to the disk cache with `feature_fingerprint() -> str`.
    """
    start = time.perf_counter()
    cache, cached, from_cache = FeatureCache(encoder, cache_dir), {}, 0
    for name, split in splits.items():
        features, hit = frozen_features_of(encoder, split.inputs, progress, cache)
        if features is None:
            return splits, 0.0
        cached[name] = dataclasses.replace(split, inputs=features)
        from_cache += hit
    if cache.cache_dir is not None:
        log.info("features from cache: %d of %d splits, in %s", from_cache, len(splits), cache.cache_dir)
    return cached, time.perf_counter() - start
