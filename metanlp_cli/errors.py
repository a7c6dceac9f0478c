"""The user-facing error type and how the CLI prints it."""

from __future__ import annotations

import functools
import os
import sys

from omegaconf.errors import OmegaConfBaseException


class MetaNLPError(Exception):
    """A problem with the user's input (config, data, checkpoint), reported as one line."""

    exit_status = 2


class RunInterrupted(MetaNLPError):
    """Training stopped on a signal after writing its checkpoint; exits with 128 + the signal number."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signal_number


def traceback_requested() -> bool:
    return os.environ.get("METANLP_TRACEBACK", "") not in ("", "0") or bool(os.environ.get("HYDRA_FULL_ERROR"))


def report_errors(task):
    """Wrap a CLI task: a MetaNLPError becomes `error: ...` on stderr and its exit status (2)."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except MetaNLPError as error:
            if traceback_requested():
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_status)
        except OmegaConfBaseException as error:  # e.g. `trainer.steps=${x}`: an interpolation that fails
            if traceback_requested():
                raise
            key = getattr(error, "full_key", None)
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"error: {f'{key}: ' if key else ''}{message}", file=sys.stderr)
            sys.exit(MetaNLPError.exit_status)

    return wrapper
