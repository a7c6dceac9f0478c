"""The user-facing error type and how the CLI prints it."""

from __future__ import annotations

import functools
import os
import sys


class MetaNLPError(Exception):
    """A problem with the user's input (config, data, checkpoint), reported as one line."""


def traceback_requested() -> bool:
    return os.environ.get("METANLP_TRACEBACK", "") not in ("", "0") or bool(os.environ.get("HYDRA_FULL_ERROR"))


def report_errors(task):
    """Wrap a CLI task: a MetaNLPError becomes `error: ...` on stderr and exit status 2."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except MetaNLPError as error:
            if traceback_requested():
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    return wrapper
