"""No lost run, no silent nonsense: checkpoints that survive a kill at any instant, a run directory that is
never overwritten, and one line (exit 2) for each meaningless or mistyped input."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metanlp_cli import evaluate, report, train
from metanlp_cli.checkpoint import load_checkpoint, resumed_config, save_checkpoint
from metanlp_cli.config import build
from metanlp_cli.data.types import ClassSplit, LabeledTexts
from metanlp_cli.errors import MetaNLPError
from tests.test_cli import metanlp
from tests.test_resume import metrics_without_timing, results_without_paths

CHOICES = {"algo": "protonet", "backbone": "cnn", "dataset": "chatterbot"}
SMOKE = ["debug=smoke", "paths.cache_dir=null"]  # ProtoNet on the CNN: validations at steps 2 and 4, both new bests
REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One finished smoke run, for the tests that need a run directory or a checkpoint."""
    from hydra import compose, initialize_config_dir

    from metanlp_cli import CONFIG_DIR

    run_dir = tmp_path_factory.mktemp("trained")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="train"):
        cfg = compose("train", overrides=SMOKE)
    train.run(cfg, run_dir, CHOICES)
    return run_dir


class Killed(BaseException):
    """Stands in for the process dying (nothing in metanlp catches a BaseException that is not its own)."""


def test_a_kill_between_the_writes_of_last_and_best_loses_nothing(compose_config, tmp_path, monkeypatch):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    reference.mkdir(), killed.mkdir()
    train.run(compose_config("train", SMOKE), reference, CHOICES)

    original, writes = torch.save, []

    def die_writing_the_new_best(payload, file, *args, **kwargs):
        writes.append(payload.get("step"))
        if writes.count(4) == 2:  # step 4 writes last.pt, then best.pt (a new best): die in the second
            raise Killed
        return original(payload, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", die_writing_the_new_best)
    with pytest.raises(Killed):
        train.run(compose_config("train", SMOKE), killed, CHOICES)
    monkeypatch.undo()
    assert load_checkpoint(killed / "checkpoints" / "best.pt")["step"] == 2  # the new best was not written
    stale = killed / "checkpoints" / ".best.pt.abc123.tmp"  # as a SIGKILL inside a write leaves it
    stale.write_bytes(b"half a checkpoint")

    last = killed / "checkpoints" / "last.pt"
    cfg, choices = resumed_config(compose_config("train", [f"resume={last}"]), {}, [f"resume={last}"])
    train.run(cfg, killed, choices)
    assert results_without_paths(killed) == results_without_paths(reference)  # the step-4 model is tested
    assert metrics_without_timing(killed) == metrics_without_timing(reference)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_last_pt_keeps_the_best_weights_once_training_moves_past_them(tmp_path):
    from metanlp_cli.checkpoint import repair_best_checkpoint, save_checkpoints

    best = {"model": {"w": torch.ones(2)}, "step": 2, "best_val_accuracy": 0.5, "val_accuracy": 0.5}
    save_checkpoints(tmp_path, best, is_best=True)
    worse = {"model": {"w": torch.zeros(2)}, "step": 4, "best_val_accuracy": 0.5, "val_accuracy": 0.25}
    save_checkpoints(tmp_path, worse, is_best=False)
    (tmp_path / "best.pt").unlink()  # lost, or never written: last.pt has what it takes to rebuild it
    repair_best_checkpoint(tmp_path)
    rebuilt = load_checkpoint(tmp_path / "best.pt")
    assert rebuilt["step"] == 2 and rebuilt["val_accuracy"] == 0.5
    torch.testing.assert_close(rebuilt["model"]["w"], torch.ones(2))


def test_a_second_run_in_a_run_directory_is_refused(compose_config, trained_run):
    before = (trained_run / "results.json").read_bytes()
    with pytest.raises(MetaNLPError, match=r"already holds a run .*continue it with: metanlp train resume=.*new dir"):
        train.run(compose_config("train", SMOKE), trained_run, CHOICES)
    assert (trained_run / "results.json").read_bytes() == before


def test_resume_refuses_fewer_steps_than_the_checkpoint_has(compose_config, trained_run):
    last = trained_run / "checkpoints" / "last.pt"
    overrides = [f"resume={last}", "trainer.steps=2"]
    with pytest.raises(MetaNLPError, match=r"trainer.steps=2 is below the checkpoint's step 4"):
        resumed_config(compose_config("train", overrides), {}, overrides)


def test_a_diverging_inner_loop_stops_the_run_before_any_checkpoint(compose_config, tmp_path):
    overrides = [*SMOKE, "algo=maml", "algo.inner_train.lr=1e6", "algo.inner_train.steps=1"]
    with pytest.raises(MetaNLPError, match=r"meta-loss became .*e\+1\d .* at step 1, above 1e\+06") as stop:
        train.run(compose_config("train", overrides), tmp_path, {**CHOICES, "algo": "maml"})
    assert "no checkpoint was written before this step" in str(stop.value) and "last.pt" not in str(stop.value)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("loss", [float("nan"), 2e6, -2e6])
def test_the_divergence_criterion(loss, tmp_path):
    from metanlp_cli.divergence import check_meta_loss

    check_meta_loss(9.9e5, 1.0, 3, tmp_path)  # large but sound: a badly initialised run goes on
    save_checkpoint(tmp_path / "last.pt", {"step": 2})
    with pytest.raises(MetaNLPError, match=rf"at step 3.*last good checkpoint: {re.escape(str(tmp_path))}/last.pt"):
        check_meta_loss(loss, 1.0, 3, tmp_path)


@pytest.mark.parametrize("episodes", [0, -1])
def test_a_protocol_without_test_episodes_is_refused(compose_config, episodes):
    cfg = compose_config("train", [f"protocol.episodes={episodes}"])
    with pytest.raises(MetaNLPError, match=rf"protocol.episodes={episodes} must be >= 1"):
        build(cfg.protocol, "protocol")


def test_random_bytes_as_a_checkpoint_never_suggest_weights_only_false(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(MetaNLPError, match="is not a readable metanlp checkpoint") as refused:
        load_checkpoint(path)
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)


def test_eval_with_another_backbone_is_one_line(compose_config, trained_run, tmp_path):
    overrides = [f"checkpoint={trained_run}", "+backbone=lstm"]
    with pytest.raises(MetaNLPError, match=r"weights do not fit the model .*missing encoder.layers.0"):
        evaluate.run(compose_config("eval", overrides), tmp_path, overrides)


def test_report_out_at_a_file_is_one_line(trained_run, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(MetaNLPError, match="--out .* is a file; give a folder"):
        report.main([str(trained_run), "--out", str(tmp_path / "file")])


def labeled(texts: list[str], labels: list[int], classes: list[str]) -> LabeledTexts:
    return LabeledTexts(texts, labels, classes)


def test_repeated_texts_are_counted_and_dropped_with_dedupe(caplog):
    from metanlp_cli.data.duplicates import handle_duplicates

    dataset = ClassSplit(
        "toy",
        labeled(["a", "b", "a", "c", "a"], [0, 0, 0, 1, 1], ["x", "y"]),
        labeled(["d", "e"], [0, 1], ["v", "w"]),
        labeled(["f", "f"], [0, 1], ["s", "t"]),
    )
    with caplog.at_level(logging.WARNING):
        assert handle_duplicates(dataset, dedupe=False) is dataset
    assert "3 repeated texts (2 in train, 1 in test), e.g. 'a'" in caplog.text and "dataset.dedupe=true" in caplog.text
    deduplicated = handle_duplicates(dataset, dedupe=True)
    assert deduplicated.train.texts == ["a", "b", "c"] and deduplicated.train.labels == [0, 0, 1]
    assert deduplicated.test.texts == ["f"] and deduplicated.val == dataset.val


def test_dedupe_is_a_dataset_key_of_every_dataset(compose_config):
    for name in ("chatterbot", "files", "glue/lowres"):
        assert compose_config("train", [f"dataset={name}", "dataset.dedupe=true"]).dataset.dedupe is True


def broken_jsonl(folder: Path) -> Path:
    path = folder / "broken.jsonl"
    rows = [f'{{"text": "sentence {i} of class {i % 12}", "label": "c{i % 12}"}}' for i in range(240)]
    rows.insert(6, '{"text": "cut short')
    path.write_text("\n".join(rows) + "\n")
    return path


# (arguments, the start of the one error line): {tmp} is an empty folder with a file `file`, {run} a finished run.
CLI_FAILURES = {
    "override without a key": (["train", "=5"], "'=5' has no key before '='"),
    "interpolation that fails": (
        ["train", *SMOKE, "trainer.steps=${x}", "hydra.run.dir={tmp}/r"],
        "trainer.steps: Interpolation key 'x'",
    ),
    "malformed value in a sweep": (
        ["train", "-m", *SMOKE, "trainer.steps=[1", "hydra.sweep.dir={tmp}/s"],
        "'trainer.steps=[1' is not a valid override",
    ),
    "run dir under a file": (["train", *SMOKE, "hydra.run.dir={tmp}/file/run"], "hydra.run.dir='{tmp}/file/run'"),
    "run dir under /proc": (["train", *SMOKE, "hydra.run.dir=/proc/metanlp/run"], "hydra.run.dir='/proc/metanlp/run'"),
    "cache dir at a file": (
        ["train", "debug=smoke", "paths.cache_dir={tmp}/file", "hydra.run.dir={tmp}/r"],
        "paths.cache_dir='{tmp}/file' is a file",
    ),
    "no test episodes": (["train", *SMOKE, "protocol.episodes=0", "hydra.run.dir={tmp}/r"], "protocol.episodes=0 must"),
    "negative test episodes": (
        ["train", *SMOKE, "protocol.episodes=-1", "hydra.run.dir={tmp}/r"],
        "protocol.episodes=-1 must be >= 1",
    ),
    "second run in a run dir": (["train", *SMOKE, "hydra.run.dir={run}"], "hydra.run.dir='{run}' already holds a run"),
    "resume with fewer steps": (["train", "resume={run}", "trainer.steps=3"], "trainer.steps=3 is below the"),
    "eval with another backbone": (
        ["eval", "checkpoint={run}", "+backbone=lstm", "hydra.run.dir={tmp}/e"],
        "checkpoint: its weights do not fit",
    ),
    "report out at a file": (["report", "{run}", "--out", "{tmp}/file"], "--out '{tmp}/file' is a file"),
    "broken JSON line": (
        ["train", *SMOKE, "dataset=files", "dataset.train_file={tmp}/broken.jsonl", "hydra.run.dir={tmp}/r"],
        "{tmp}/broken.jsonl: line 7: not valid JSON",
    ),
}


@pytest.mark.smoke
@pytest.mark.parametrize("case", CLI_FAILURES)
def test_each_mistake_is_one_line_with_exit_status_2(case, trained_run, tmp_path):
    (tmp_path / "file").write_text("")
    broken_jsonl(tmp_path)
    arguments, message = CLI_FAILURES[case]
    places = {"{tmp}": str(tmp_path), "{run}": str(trained_run)}
    for place, value in places.items():
        arguments, message = [a.replace(place, value) for a in arguments], message.replace(place, value)
    result = metanlp(*arguments)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "][INFO]" not in line]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-1500:]
    assert lines[0].startswith(f"error: {message}"), lines


@pytest.mark.smoke
def test_a_sweep_checks_every_job_before_the_first_runs(tmp_path):
    result = metanlp("train", "-m", *SMOKE, "trainer.steps=2,abc", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: -m job #1 of 2 (debug=smoke paths.cache_dir=null trainer.steps=abc): ")
    assert not (tmp_path / "sweep").exists()  # job #0 never ran


def kill_runner(*arguments: str, env: dict | None = None, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.kill_runner", *arguments],
        cwd=REPOSITORY,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


@pytest.mark.smoke
def test_ctrl_c_during_the_final_test_is_one_line_and_resumable(tmp_path):
    run_dir = tmp_path / "run"
    interrupt = {"METANLP_INTERRUPT_AT": "metanlp_cli.protocols:EpisodicProtocol.score"}
    stopped = kill_runner("train", *SMOKE, f"hydra.run.dir={run_dir}", env=interrupt)
    _, stderr = stopped.communicate(timeout=300)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert stopped.returncode == 128 + signal.SIGINT and len(lines) == 1, stderr
    assert lines[0] == f"error: interrupted; continue with: metanlp train resume={run_dir}"
    resumed = metanlp("train", f"resume={run_dir}", "paths.cache_dir=null")
    assert resumed.returncode == 0 and (run_dir / "results.json").is_file(), resumed.stderr


# The fault-injection test: a 6-step run (validations at 2, 4 and 6) killed with SIGKILL at many instants.
FAULT_RUN = [*SMOKE, "trainer.steps=6"]
KILL_POINTS = (
    [f"metanlp_cli.loggers:Loggers.log_metrics:{n}" for n in range(1, 10)]  # before each of the 9 metrics records
    + [f"torch:save:{n}" for n in range(1, 7)]  # a checkpoint's temporary file created, nothing in it
    + [f"os:replace:{n}" for n in range(1, 7)]  # its temporary file complete, not yet renamed
    + ["metanlp_cli.protocols:EpisodicProtocol.score:1"]  # the final test: best.pt loaded, no episode scored
    + ["metanlp_cli.protocols.episodic:episode_scores:1"]  # inside the final test: its episodes drawn
    + ["metanlp_cli.train:write_results:1"]  # the final test scored, results.json not written
)
KILL_FRACTIONS = (0.35, 0.55, 0.7, 0.8, 0.9, 0.97)  # of an uninterrupted run's wall time, for kills at any instant


def finish(run_dir: Path) -> subprocess.CompletedProcess:
    """What a user does after the kill: resume the run, or run it again where no checkpoint was written."""
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return metanlp("train", f"resume={run_dir}", "paths.cache_dir=null")
    return metanlp("train", *FAULT_RUN, f"hydra.run.dir={run_dir}")


def outcome(run_dir: Path) -> tuple[bytes, str]:
    """results.json byte for byte (its one path, the checkpoint's, as RUN), and metrics.jsonl byte for byte
    without its wall-clock field."""
    results = (run_dir / "results.json").read_bytes().replace(str(run_dir).encode(), b"RUN")
    metrics = re.sub(r', "episodes_per_s": [^}]*', "", (run_dir / "metrics.jsonl").read_text())
    return results, metrics


def kill_and_resume(run_dir: Path, point: str | None, delay: float | None) -> tuple[bool, tuple | None]:
    """Run FAULT_RUN in run_dir, killed at `point` (a KILL_POINTS entry) or after `delay` seconds, then
    finish it; (whether the kill happened, the outcome)."""
    process = kill_runner("train", *FAULT_RUN, f"hydra.run.dir={run_dir}", env={"METANLP_KILL_AT": point or ""})
    if delay is not None:
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.kill()
    process.communicate(timeout=600)
    if process.returncode != -signal.SIGKILL:  # the point is never reached, or the run ended first
        return False, None
    finished = finish(run_dir)
    assert finished.returncode == 0, (point, delay, finished.stderr)
    assert not list((run_dir / "checkpoints").glob("*.tmp")), (point, delay)
    return True, outcome(run_dir)


@pytest.mark.slow
@pytest.mark.smoke
def test_resume_after_a_sigkill_at_any_instant_ends_like_the_uninterrupted_run(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    uninterrupted = metanlp("train", *FAULT_RUN, f"hydra.run.dir={tmp_path / 'uninterrupted'}")
    duration = time.perf_counter() - started
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    expected = outcome(tmp_path / "uninterrupted")

    trials = [(point, None) for point in KILL_POINTS] + [(None, f * duration) for f in KILL_FRACTIONS]
    with ThreadPoolExecutor(max_workers=4) as pool:  # trials in parallel, each in its own run directory
        done = list(pool.map(lambda n: kill_and_resume(tmp_path / f"run{n}", *trials[n]), range(len(trials))))
    kills = sum(killed for killed, _ in done)
    identical = sum(killed and result == expected for killed, result in done)
    missed = [trial for trial, (killed, _) in zip(trials, done, strict=True) if not killed]
    print(f"\nfault injection: {kills} kills, {identical} identical resumed results; not reached: {missed}")
    assert kills >= 20 and identical == kills, (kills, identical, missed)
