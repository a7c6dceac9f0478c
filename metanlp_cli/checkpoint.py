"""Checkpoints: plain data and tensors only, written atomically, loaded with weights_only=True;
and resuming a run from its last.pt, which Ctrl-C (or SIGTERM) writes before the run exits."""

from __future__ import annotations

import math
import os
import signal
import tempfile
import threading
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from metanlp_cli.errors import MetaNLPError

FORMAT_VERSION = 1


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
        reason = str(error).splitlines()[0]
        raise MetaNLPError(f"{key}={str(path)!r} is not a readable metanlp checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise MetaNLPError(f"{key}={str(path)!r} is not a metanlp checkpoint (format {FORMAT_VERSION})")
    if isinstance(payload.get("config"), dict):
        payload["config"] = upgrade_config(payload["config"])
    return payload


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


def restore_training_state(
    resume: str | None, algo: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[int, float]:
    """Load `resume` (a last.pt) into the model and optimizer; returns (step, best validation accuracy).
    Without `resume`: (0, -inf), a fresh start."""
    if not resume:
        return 0, -math.inf
    payload = load_checkpoint(resume, key="resume")
    algo.load_state_dict(payload["model"])
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
