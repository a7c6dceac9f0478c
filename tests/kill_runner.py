"""`python -m tests.kill_runner ARGS...` is `metanlp ARGS...`, except that METANLP_KILL_AT=MODULE:NAME:COUNT
makes the process SIGKILL itself (as `kill -9` would) when MODULE.NAME is called for the COUNT-th time,
e.g. `os:replace:2` just before the second checkpoint's finished temporary file is renamed.
METANLP_INTERRUPT_AT=MODULE:NAME sends SIGINT (Ctrl-C) at the first call instead. Test code only."""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def patch(spec: str, signal_number: int) -> None:
    module_name, name, *count = spec.split(":")
    owner = importlib.import_module(module_name)
    *path, attribute = name.split(".")
    for part in path:
        owner = getattr(owner, part)
    original, calls, wanted = getattr(owner, attribute), [0], int(count[0]) if count else 1

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == wanted:
            os.kill(os.getpid(), signal_number)
        return original(*args, **kwargs)

    setattr(owner, attribute, wrapper)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when started in background
    from metanlp_cli import cli

    if os.environ.get("METANLP_KILL_AT"):
        patch(os.environ["METANLP_KILL_AT"], signal.SIGKILL)
    if os.environ.get("METANLP_INTERRUPT_AT"):
        patch(os.environ["METANLP_INTERRUPT_AT"], signal.SIGINT)
    cli.main(sys.argv[1:])
