"""Checkpoints: plain data and tensors only, written atomically, loaded with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

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
    return payload
