"""Resume: an interrupted and resumed run ends exactly like an uninterrupted one; Ctrl-C and NaN keep last.pt."""

from __future__ import annotations

import json
import math
import os
import signal
import time

import pytest
import torch

from metanlp_cli import train
from metanlp_cli.algorithms.protonet import ProtoNet
from metanlp_cli.checkpoint import StopOnSignal, find_last_checkpoint, load_checkpoint, resumed_config, save_checkpoint
from metanlp_cli.errors import MetaNLPError, RunInterrupted
from metanlp_cli.sampling import EpisodeSampler
from tests.test_cli import metanlp

CHOICES = {"algo": "reptile", "backbone": "cnn", "dataset": "chatterbot"}
# Reptile on the CNN (dropout 0.1), 6 steps of 2 episodes, validation at steps 2, 4, 6.
OVERRIDES = ["debug=smoke", "algo=reptile", "backbone=cnn", "trainer.steps=6"]


def results_without_paths(run_dir) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    results.pop("checkpoint")
    return results


def metrics_without_timing(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k != "episodes_per_s"} for record in records]


@pytest.fixture
def default_signal_handlers():
    """Python's own handlers, whatever the test runner inherited (a background job ignores SIGINT)."""
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for number, handler in previous.items():
        signal.signal(number, handler)


def interrupt_at_episode(monkeypatch, index: int) -> None:
    """Send this process SIGINT while the sampler draws episode `index` (in the middle of a step)."""
    original = EpisodeSampler.episode

    def episode(self, i):
        if i == index and self.seed == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, i)

    monkeypatch.setattr(EpisodeSampler, "episode", episode)


@pytest.mark.slow  # make test-full; the fault-injection test (test_reliability.py) checks the same at 28 instants
def test_interrupted_and_resumed_run_ends_with_the_same_results(
    compose_config, tmp_path, monkeypatch, default_signal_handlers
):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    uninterrupted.mkdir(), interrupted.mkdir()
    train.run(compose_config("train", OVERRIDES), uninterrupted, CHOICES)

    interrupt_at_episode(monkeypatch, index=5)  # the second episode of step 3
    with pytest.raises(
        RunInterrupted, match=r"stopped at step 3 of 6; .* continue with: metanlp train resume="
    ) as stop:
        train.run(compose_config("train", OVERRIDES), interrupted, CHOICES)
    assert stop.value.exit_status == 128 + signal.SIGINT
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt")["step"] == 3  # not a validation step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    monkeypatch.undo()

    last = interrupted / "checkpoints" / "last.pt"
    cfg, choices = resumed_config(compose_config("train", [f"resume={last}"]), {}, [f"resume={last}"])
    assert choices == CHOICES and cfg.trainer.steps == 6 and cfg.algo._target_.endswith("Reptile")
    train.run(cfg, interrupted, choices)

    assert results_without_paths(interrupted) == results_without_paths(uninterrupted)
    assert metrics_without_timing(interrupted) == metrics_without_timing(uninterrupted)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(compose_config, tmp_path, monkeypatch):
    overrides = ["debug=smoke", "algo=protonet"]
    reference = tmp_path / "reference"
    reference.mkdir()
    train.run(compose_config("train", [*overrides, "trainer.steps=2"]), reference, CHOICES)

    calls = []
    original = ProtoNet.meta_loss

    def meta_loss(self, learner, query):
        calls.append(1)
        loss = original(self, learner, query)
        return loss * math.nan if len(calls) > 4 else loss  # steps 1-2 fine (2 episodes each), step 3 NaN

    monkeypatch.setattr(ProtoNet, "meta_loss", meta_loss)
    with pytest.raises(MetaNLPError, match=r"meta-loss became nan .* at step 3; lower .* \(last good checkpoint: "):
        train.run(compose_config("train", overrides), tmp_path, CHOICES)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")
    assert last["step"] == 2
    for name, tensor in expected["model"].items():
        assert torch.isfinite(last["model"][name]).all()
        torch.testing.assert_close(last["model"][name], tensor, rtol=0, atol=0)


def test_the_stop_handler_defers_the_signal_and_is_removed_afterwards(default_signal_handlers):
    with StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt without the handler
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal while stopping is ignored
        assert stop.requested and stop.signal_number == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_an_ignored_signal_stays_ignored(default_signal_handlers):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job started in the background by a shell
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert not stop.requested and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_finding_the_checkpoint_to_resume(tmp_path):
    older, newer = (tmp_path / "train" / day / "12-00-00" / "checkpoints" / "last.pt" for day in ("d1", "d2"))
    save_checkpoint(newer, {"step": 2})
    time.sleep(0.01)
    save_checkpoint(older, {"step": 1})  # written last: "newest" means the latest last.pt
    assert find_last_checkpoint("true", tmp_path) == older.resolve()
    assert find_last_checkpoint(str(newer.parent.parent), tmp_path) == newer.resolve()
    assert find_last_checkpoint(str(newer), tmp_path) == newer.resolve()
    with pytest.raises(MetaNLPError, match="resume='.*nowhere': no checkpoints/last.pt there"):
        find_last_checkpoint(str(tmp_path / "nowhere"), tmp_path)
    with pytest.raises(MetaNLPError, match="resume=true but no run under .* has checkpoints/last.pt"):
        find_last_checkpoint("true", tmp_path / "empty")


def test_resume_refuses_to_change_the_saved_config(compose_config, tmp_path):
    save_checkpoint(tmp_path / "last.pt", {"config": {}, "choices": {}})
    cfg = compose_config("train", [f"resume={tmp_path / 'last.pt'}", "algo=maml"])
    with pytest.raises(MetaNLPError, match="so 'algo=maml' cannot change; allowed: trainer.steps"):
        resumed_config(cfg, {}, [f"resume={tmp_path / 'last.pt'}", "algo=maml"])


@pytest.mark.smoke
@pytest.mark.slow  # make test-full; test_reliability's Ctrl-C test resumes a CLI run in its directory in make test
def test_cli_resume_continues_in_the_run_directory(tmp_path):
    root = tmp_path / "outputs"
    first = metanlp("train", "debug=smoke", f"paths.output_root={root}")
    assert first.returncode == 0, first.stderr
    (run_dir,) = (root / "train").glob("*/*")
    longer = metanlp("train", "resume=true", "trainer.steps=6", f"paths.output_root={root}")
    assert longer.returncode == 0, longer.stderr
    assert list((root / "train").glob("*/*")) == [run_dir]  # no new run directory
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 6
    assert [p.name.startswith("resume_") for p in (run_dir / ".hydra").iterdir() if p.is_dir()] == [True]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 4, 4, 5, 6, 6]  # meta-loss every step, validation every 2

    for arguments, message in [
        (["resume=true", "algo=maml"], "resume continues the run's saved config, so 'algo=maml' cannot change"),
        (["-m", "resume=true"], "resume continues one run; drop -m"),
        ([f"resume={run_dir}", f"hydra.run.dir={tmp_path}"], "resume writes into the run's own directory"),
    ]:
        refused = metanlp("train", *arguments, f"paths.output_root={root}")
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
