"""Named evaluation protocols: how a (meta-)trained model is scored. Every protocol has one interface:

    prepared = protocol.prepare(tokenizer, dataset, split, encoder, device, cache_dir, progress)
    results = protocol.score(algo, prepared, device, progress)   # results.json's fields

`prepare` builds what the protocol scores (the split its fixed episodes come from, or the training sets and
evaluation splits of its tasks), tokenized and, for frozen layers, encoded once; `score` adapts the
algorithm on each support set and scores the rest.
"""

from metanlp_cli.protocols.episodic import (
    EpisodicProtocol,
    encode_rows,
    episode_score,
    episode_scores,
    fixed_encoder_view,
    score_name,
    scores_by_metric,
)
from metanlp_cli.protocols.kshot import (
    ArscProtocol,
    GlueLowResourceProtocol,
    KShotProtocol,
    KShotTask,
    KShotTasks,
    k_shot_rows,
)

__all__ = [
    "ArscProtocol",
    "EpisodicProtocol",
    "GlueLowResourceProtocol",
    "KShotProtocol",
    "KShotTask",
    "KShotTasks",
    "encode_rows",
    "episode_score",
    "episode_scores",
    "fixed_encoder_view",
    "k_shot_rows",
    "score_name",
    "scores_by_metric",
]
