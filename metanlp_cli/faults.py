"""Fault injection for the kill tests: `METANLP_FAULT=WHERE` makes the process SIGKILL itself at the
point named WHERE (e.g. `save:last.pt:4:written`, inside the write of step 4's last.pt), so that a test
can stop a run at an exact instant and check that `resume=` still ends like an uninterrupted run."""

from __future__ import annotations

import os
import signal


def fault_point(*where: object) -> None:
    """Die here, as `kill -9` would, if METANLP_FAULT names this point; nothing otherwise."""
    wanted = os.environ.get("METANLP_FAULT")
    if wanted and wanted == ":".join(map(str, where)):
        os.kill(os.getpid(), signal.SIGKILL)
