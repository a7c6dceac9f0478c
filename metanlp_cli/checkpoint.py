"""Checkpoints: plain data and tensors only, written atomically, loaded with weights_only=True;
and resuming a run from its last.pt, which Ctrl-C (or SIGTERM) writes before the run exits.

last.pt is the one record of a run's state: it holds the best validation score, its step and (once
training has moved past it) the best weights, so best.pt can always be rebuilt from it. A kill at any
instant therefore leaves a consistent pair: `prepare_run_directory` repairs best.pt from last.pt and
removes the temporary files of an interrupted write when the run starts again."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import threading
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from metanlp_cli.errors import MetaNLPError, RunInterrupted

FORMAT_VERSION = 1
# What a run directory holds once a run has something to lose: a second run there is refused.
RUN_RECORDS = ("checkpoints/last.pt", "checkpoints/best.pt", "results.json")


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({"format": FORMAT_VERSION, **payload}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def upgrade_config(config: dict) -> dict:
    """A saved config as today's configs spell it: before the `optim` group, the outer optimizer was
    `trainer.outer_optimizer` (adam | sgd), `trainer.outer_lr` and `trainer.weight_decay`."""
    trainer = config.get("trainer") or {}
    if "optim" in config or "outer_optimizer" not in trainer:
        return config
    name = trainer.pop("outer_optimizer")
    optimizer = {"_target_": "torch.optim.SGD" if name == "sgd" else "torch.optim.Adam", "_partial_": True}
    settings = {"lr": trainer.pop("outer_lr", 1e-3), "weight_decay": trainer.pop("weight_decay", 0.0)}
    config["optim"] = {**optimizer, **settings}
    return config


def load_checkpoint(path: str | Path, key: str = "checkpoint") -> dict:
    path = Path(path)
    if path.is_dir():
        candidates = [path / "checkpoints" / "best.pt", path / "best.pt"]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise MetaNLPError(f"{key}={str(path)!r}: file not found; give a .pt file or a run directory")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise MetaNLPError(f"{key}={str(path)!r} is not a readable metanlp checkpoint ({unreadable(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise MetaNLPError(f"{key}={str(path)!r} is not a metanlp checkpoint (format {FORMAT_VERSION})")
    if isinstance(payload.get("config"), dict):
        payload["config"] = upgrade_config(payload["config"])
    return payload


def unreadable(error: Exception) -> str:
    """Why torch.load failed, in our words: torch's own message for a refused file advises retrying with
    weights_only=False, which would run whatever code the file holds, so it is never passed on."""
    message = str(error)
    if "weights_only" in message or "Weights only load failed" in message:
        return "not a torch file of tensors and plain data: corrupt, or holding other objects, which are never loaded"
    if isinstance(error, (EOFError, RuntimeError)) and ("zip" in message.lower() or "archive" in message.lower()):
        return "not a torch file, or a truncated one"
    if isinstance(error, (EOFError, OSError)):
        return f"cannot be read: {message.splitlines()[0] if message else type(error).__name__}"
    return f"not a torch file, or a truncated one ({type(error).__name__})"


def load_model_state(model: torch.nn.Module, state: dict, key: str = "checkpoint") -> None:
    """Put a checkpoint's weights into a model built from a config; a model of another shape (a changed
    backbone or algorithm) is one line naming the first mismatched weights."""
    result = model.load_state_dict(state, strict=False) if _fits(model, state) else None
    if result is None:
        expected, found = set(model.state_dict()), set(state)
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        shapes = sorted(n for n in expected & found if model.state_dict()[n].shape != state[n].shape)
        detail = "; ".join(
            f"{what} {', '.join(names[:2])}{' ...' if len(names) > 2 else ''}"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
            if names
        )
        raise MetaNLPError(
            f"{key}: its weights do not fit the model these overrides build ({detail}); the backbone and "
            "algorithm (and their sizes) must stay those the checkpoint was trained with"
        )


def _fits(model: torch.nn.Module, state: dict) -> bool:
    own = model.state_dict()
    return set(own) == set(state) and all(own[name].shape == state[name].shape for name in own)


# Resume: what a run needs to continue exactly where it stopped. Episodes and their dropout masks are
# pure functions of (seed, episode index), so model, outer optimizer, step and best validation
# accuracy are the whole state; the model's state_dict holds every meta-learned tensor.
RESUMABLE_KEYS = ("resume", "trainer.steps", "trainer.progress", "trainer.device", "trainer.distributed", "paths.")


def training_state(algo: torch.nn.Module, optimizer: torch.optim.Optimizer | None, step: int, best_val: float) -> dict:
    """The part of a checkpoint that `restore_training_state` puts back (no optimizer: all frozen)."""
    return {
        "model": algo.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer else None,
        "step": step,
        "best_val_accuracy": best_val,
    }


def save_checkpoints(checkpoint_dir: Path, state: dict, is_best: bool) -> None:
    """Write last.pt, then best.pt when `state` is the best so far. last.pt records where the best is
    (`best_step`) and, once it is an older step's, its weights (`best_model`, read back from best.pt):
    whatever instant a kill comes at, best.pt can be rebuilt from last.pt (`repair_best_checkpoint`)."""
    if is_best:
        state = {**state, "best_step": state["step"], "best_model": None}
        save_checkpoint(checkpoint_dir / "last.pt", state)
        save_checkpoint(checkpoint_dir / "best.pt", state)
        return
    best = checkpoint_dir / "best.pt"
    if best.is_file():
        previous = load_checkpoint(best)
        state = {**state, "best_step": previous["step"], "best_model": previous["model"]}
    else:  # no validation yet (stopped before the first)
        state = {**state, "best_step": None, "best_model": None}
    save_checkpoint(checkpoint_dir / "last.pt", state)


def best_from_last(last: dict) -> dict:
    """best.pt as `save_checkpoints` wrote it, rebuilt from a last.pt."""
    if last["best_model"] is None:  # last.pt is itself the best
        return last
    return {
        **last,
        "model": last["best_model"],
        "best_model": None,
        "optimizer": None,
        "step": last["best_step"],
        "val_accuracy": last["best_val_accuracy"],
    }


def repair_best_checkpoint(checkpoint_dir: Path) -> None:
    """Make best.pt the one last.pt names, where a kill came between their writes."""
    last_path, best_path = checkpoint_dir / "last.pt", checkpoint_dir / "best.pt"
    if not last_path.is_file():
        return
    last = load_checkpoint(last_path, key="resume")
    if last.get("best_step") is None:  # nothing validated yet, or a checkpoint from before best_step
        return
    if best_path.is_file():
        best = load_checkpoint(best_path, key="resume")
        if best.get("step") == last["best_step"] and best.get("val_accuracy") == last["best_val_accuracy"]:
            return
    save_checkpoint(best_path, best_from_last(last))


def remove_temporary_files(checkpoint_dir: Path) -> list[Path]:
    """The temporary files a write that was killed left behind (`save_checkpoint`); returns them."""
    stale = sorted(checkpoint_dir.glob(".*.pt.*.tmp")) if checkpoint_dir.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def prepare_run_directory(run_dir: Path, resume: str | None) -> None:
    """Before a run writes anything: refuse a directory that already holds another run (unless resuming
    it), remove a killed write's temporary files, and make best.pt agree with last.pt."""
    if not resume:
        refuse_existing_run(run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    remove_temporary_files(checkpoint_dir)
    if resume:
        repair_best_checkpoint(checkpoint_dir)


def refuse_existing_run(run_dir: Path, key: str = "hydra.run.dir") -> None:
    """A second run in a run's directory would overwrite its checkpoints, results and metrics."""
    found = [name for name in RUN_RECORDS if (Path(run_dir) / name).exists()]
    if found:
        last = Path(run_dir) / "checkpoints" / "last.pt"
        hint = f"continue it with: metanlp train resume={run_dir}, or " if last.is_file() else ""
        raise MetaNLPError(f"{key}={str(run_dir)!r} already holds a run ({found[0]}); {hint}give a new directory")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to `step`: a resumed run logs the steps after its checkpoint again. A line a
    kill cut short (not JSON) is dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["step"] <= step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept))


def restore_training_state(
    resume: str | None, algo: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[int, float]:
    """Load `resume` (a last.pt) into the model and optimizer; returns (step, best validation accuracy).
    Without `resume`: (0, -inf), a fresh start."""
    if not resume:
        return 0, -math.inf
    payload = load_checkpoint(resume, key="resume")
    load_model_state(algo, payload["model"], key="resume")
    if optimizer is not None and payload.get("optimizer") is not None:
        optimizer.load_state_dict(payload["optimizer"])
    return int(payload["step"]), float(payload.get("best_val_accuracy", -math.inf))


def find_last_checkpoint(value: str, output_root: str | Path) -> Path:
    """`resume=true`: the newest checkpoints/last.pt under OUTPUT_ROOT/train; `resume=RUN_DIR` or a file."""
    if value.lower() == "true":
        candidates = sorted((Path(output_root) / "train").rglob("checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise MetaNLPError(f"resume=true but no run under {Path(output_root) / 'train'} has checkpoints/last.pt")
        return candidates[-1].resolve()
    path = Path(value)
    if path.is_dir():
        path = next((c for c in (path / "checkpoints" / "last.pt", path / "last.pt") if c.is_file()), path)
    if not path.is_file():
        raise MetaNLPError(f"resume={value!r}: no checkpoints/last.pt there; give a run directory or its last.pt")
    return path.resolve()


def resumed_config(cfg: DictConfig, choices: dict, overrides: list[str]) -> tuple[DictConfig, dict]:
    """A resumed run continues the checkpoint's own config: only where data lives, the number of steps,
    the device, the process count and the progress bar may change."""
    if not cfg.get("resume"):
        return cfg, choices
    from metanlp_cli.config import apply_overrides

    changed = [o for o in overrides if not o.lstrip("+~").startswith(RESUMABLE_KEYS)]
    if changed:
        raise MetaNLPError(
            f"resume continues the run's saved config, so {changed[0]!r} cannot change; "
            "allowed: trainer.steps, trainer.device, trainer.distributed, trainer.progress, paths.*"
        )
    payload = load_checkpoint(cfg.resume, key="resume")
    steps = cfg.trainer.get("steps") if any(o.startswith("trainer.steps=") for o in overrides) else None
    if isinstance(steps, int) and steps < int(payload.get("step", 0)):
        raise MetaNLPError(
            f"trainer.steps={steps} is below the checkpoint's step {payload['step']}; resume continues a run: "
            f"give trainer.steps >= {payload['step']} (or leave it out), or start a new run"
        )
    run_cfg = apply_overrides(OmegaConf.create(payload["config"]), cfg, overrides, skip={"resume", "paths"})
    run_cfg.paths = cfg.paths  # where data lives is this machine's business, not the checkpoint's
    OmegaConf.update(run_cfg, "resume", str(cfg.resume), force_add=True)
    return run_cfg, dict(payload["choices"])


class StopOnSignal:
    """Within the block, SIGINT (Ctrl-C) and SIGTERM (what a cluster sends before it kills a job) ask the
    training loop to stop after the current step, so that the last.pt it writes is consistent.
    Signals after the first are ignored while it stops (torchrun forwards a second one to its workers)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def _request(self, signal_number: int, frame) -> None:
        if self.signal_number is None:
            os.write(2, b"\nstopping after the current step, then writing checkpoints/last.pt\n")
            self.signal_number = signal_number

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            for number in self.SIGNALS:
                if signal.getsignal(number) is not signal.SIG_IGN:  # ignored (a background job's SIGINT): keep it so
                    self._previous[number] = signal.signal(number, self._request)
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def resume_hint_on_interrupt(run_dir: Path):
    """Ctrl-C outside the training loop (loading data, the final test) is one line saying how to continue:
    the checkpoints are complete at any instant, so `resume=` finishes the run."""
    try:
        yield
    except KeyboardInterrupt:
        if (Path(run_dir) / "checkpoints" / "last.pt").is_file():
            hint = f"continue with: metanlp train resume={run_dir}"
        else:
            hint = "no checkpoint was written yet; run the same command again"
        raise RunInterrupted(f"interrupted; {hint}", signal.SIGINT) from None
