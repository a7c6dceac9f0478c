"""Frozen-encoder features on disk (`FeatureCache` through `cache_frozen_features`), with a fake encoder."""

from __future__ import annotations

import json
import logging

import torch
from torch import nn

from metanlp_cli.data.cache import cache_frozen_features
from metanlp_cli.data.types import EncodedSplit


class CountingFrozenEncoder(nn.Module):
    """Features = token ids x `scale`; counts how often it encodes."""

    def __init__(self, scale: float = 1.0, fingerprint: bool = True) -> None:
        super().__init__()
        self.scale, self.calls = scale, 0
        if fingerprint:
            self.feature_fingerprint = lambda: json.dumps({"scale": self.scale})

    def frozen_features(self, token_ids: torch.Tensor, progress: bool = False) -> torch.Tensor:
        self.calls += 1
        return token_ids.float() * self.scale


def splits(first_row: int = 1) -> dict[str, EncodedSplit]:
    token_ids = {"train": torch.tensor([[first_row, 2, 0], [3, 4, 5]]), "test": torch.tensor([[6, 0], [7, 8]])}
    return {name: EncodedSplit.from_tensors(name, ids, [0, 1], ["a", "b"]) for name, ids in token_ids.items()}


def test_a_second_run_reads_the_features_back_and_any_change_encodes_again(tmp_path, caplog):
    cold = CountingFrozenEncoder()
    features, _ = cache_frozen_features(cold, splits(), progress=False, cache_dir=str(tmp_path))
    assert cold.calls == 2 and len(list(tmp_path.glob("features-*.pt"))) == 2
    assert torch.equal(features["train"].inputs, torch.tensor([[1.0, 2, 0], [3, 4, 5]]))

    warm = CountingFrozenEncoder()
    with caplog.at_level(logging.INFO, logger="metanlp_cli.data.cache"):
        again, _ = cache_frozen_features(warm, splits(), progress=False, cache_dir=str(tmp_path))
    assert warm.calls == 0 and "features from cache: 2 of 2 splits" in caplog.text
    assert all(torch.equal(again[name].inputs, features[name].inputs) for name in features)

    other_ids = CountingFrozenEncoder()  # one split's token ids differ: that split alone is encoded
    cache_frozen_features(other_ids, splits(first_row=9), progress=False, cache_dir=str(tmp_path))
    assert other_ids.calls == 1
    other_encoder = CountingFrozenEncoder(scale=2.0)  # another fingerprint: everything is encoded
    scaled, _ = cache_frozen_features(other_encoder, splits(), progress=False, cache_dir=str(tmp_path))
    assert other_encoder.calls == 2 and torch.equal(scaled["test"].inputs, 2 * features["test"].inputs)


def test_no_cache_dir_no_fingerprint_or_a_torn_file_means_encoding(tmp_path, caplog):
    for encoder, cache_dir in ((CountingFrozenEncoder(), None), (CountingFrozenEncoder(fingerprint=False), tmp_path)):
        cache_frozen_features(encoder, splits(), progress=False, cache_dir=cache_dir and str(cache_dir))
        assert encoder.calls == 2
    assert not list(tmp_path.iterdir())

    cache_frozen_features(CountingFrozenEncoder(), splits(), progress=False, cache_dir=str(tmp_path))
    for path in tmp_path.glob("features-*.pt"):
        path.write_bytes(b"torn")
    recovered = CountingFrozenEncoder()
    features, _ = cache_frozen_features(recovered, splits(), progress=False, cache_dir=str(tmp_path))
    assert recovered.calls == 2 and "is unreadable" in caplog.text
    assert torch.equal(features["test"].inputs, torch.tensor([[6.0, 0], [7, 8]]))
