"""The CLI end to end: train with the smoke preset, evaluate the checkpoint, and the error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from metanlp_cli import CONFIG_DIR, train


def metanlp(*arguments: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metanlp_cli", *arguments], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.smoke
def test_train_then_eval_reproduces_the_results_exactly(tmp_path):
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    trained = metanlp("train", "debug=smoke", "algo=maml", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr
    assert "test accuracy" in trained.stdout
    for name in (
        "results.json",
        "results.md",
        "metrics.jsonl",
        "config.yaml",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "train.log",
    ):
        assert (run_dir / name).is_file(), name

    evaluated = metanlp("eval", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={eval_dir}")
    assert evaluated.returncode == 0, evaluated.stderr
    original = json.loads((run_dir / "results.json").read_text())
    again = json.loads((eval_dir / "results.json").read_text())
    assert again["episode_accuracies"] == original["episode_accuracies"]
    assert again["accuracy"] == original["accuracy"]

    fewer = metanlp(
        "eval",
        f"checkpoint={run_dir}",
        "protocol.episodes=3",
        "protocol.k_shot=1",
        f"hydra.run.dir={tmp_path / 'eval2'}",
    )
    assert fewer.returncode == 0, fewer.stderr
    changed = json.loads((tmp_path / "eval2" / "results.json").read_text())
    assert changed["episodes"] == 3 and changed["k_shot"] == 1 and len(changed["episode_accuracies"]) == 3


@pytest.mark.smoke
def test_help_lists_commands_and_config_groups():
    result = metanlp("--help")
    assert result.returncode == 0
    for text in (
        "train",
        "eval",
        "algo",
        "protomaml, protonet, relation, reptile, ridge, setfit",
        "backbone",
        "cnn, lstm, me5_small, minilm, pretrained, transformer",
    ):
        assert text in result.stdout


BAD_INPUTS = [
    (["train", "algo=magic"], "algo='magic' is not a known choice; allowed: anil, finetune, fomaml, induction, maml"),
    (["train", "debug=smoke", "trainer.steps=abc"], "trainer.steps"),
    (["train", "trainer.stepz=3"], "trainer.stepz is not a known key; allowed: steps, meta_batch_size"),
    (["train", "debug=smoke", "algo=maml", "algo.inner_train.lr=fast"], "algo.inner_train.lr='fast' has the wrong"),
    (["train", "debug=smoke", "algo=maml", "algo.inner_params=top_9"], "algo.inner_params='top_9' but the backbone"),
    (["train", "debug=smoke", "algo=metasgd", "algo.inner_train.lr=0.1"], "inner_train.lr=0.1 must be null"),
    (["train", "debug=smoke", "sampler.k_shot=30"], "k_shot + q_query = 45"),
    (["train", "debug=smoke", "sampler.n_way=12"], "sampler.n_way=12 but the train split has only 9 classes"),
    (["eval", "checkpoint=/does/not/exist.pt"], "checkpoint='/does/not/exist.pt': file not found"),
    (["evaluate"], "unknown command 'evaluate'; allowed: train, eval, data, report"),
    (["train", "backbone=pretrained"], "backbone.name_or_path is required: add backbone.name_or_path=..."),
    (
        ["train", "debug=smoke", "backbone=pretrained", "backbone.name_or_path=/no/such/model"],
        "backbone.tokenizer.name_or_path='/no/such/model': no model directory at /no/such/model",
    ),
]


@pytest.mark.smoke
@pytest.mark.parametrize("arguments,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(arguments, message, tmp_path):
    result = metanlp(*arguments, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    assert message in errors[0]


ALGOS = sorted(p.stem for p in (CONFIG_DIR / "algo").glob("*.yaml"))
# Narrow encoders keep each combination to seconds: this checks the wiring, not the default sizes.
BACKBONES = {
    "cnn": ["backbone.encoder.embedding_dim=16", "backbone.encoder.num_filters=8"],
    "lstm": ["backbone.encoder.embedding_dim=16", "backbone.encoder.hidden_size=8"],
    "transformer": ["backbone.encoder.dim=16", "backbone.encoder.feedforward_dim=32"],
}


def matrix() -> list:
    """Every algorithm on the word CNN, and ProtoNet on every backbone, in `make test`; the other pairs (and
    SetFit, whose adaptation fine-tunes the encoder in every episode) in `make test-full`."""
    pairs = []
    for algo in ALGOS:
        for backbone in BACKBONES:
            fast = (backbone == "cnn" and algo != "setfit") or algo == "protonet"
            pairs.append(pytest.param(algo, backbone, marks=() if fast else pytest.mark.slow, id=f"{algo}-{backbone}"))
    return pairs


@pytest.mark.parametrize(("algo", "backbone"), matrix())
def test_every_algorithm_runs_with_every_backbone(algo, backbone, compose_config, tmp_path):
    cfg = compose_config("train", [f"algo={algo}", f"backbone={backbone}", "debug=smoke", *BACKBONES[backbone]])
    best_val = train.run(cfg, tmp_path, {"algo": algo, "backbone": backbone, "dataset": "chatterbot"})
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0.0 <= best_val <= 1.0 and results["episodes"] == 10
    assert 0.0 <= results["accuracy"]["mean"] <= 1.0


def test_eval_overrides_that_change_what_is_scored_are_named_in_the_results():
    from metanlp_cli.evaluate import _group_choices

    overrides = ["+algo=setfit", "dataset=lmbff/sst2", "protocol=kshot", "trainer.progress=false", "~algo.distance"]
    assert _group_choices(overrides) == {"algo": "setfit", "dataset": "lmbff/sst2", "protocol": "kshot"}
