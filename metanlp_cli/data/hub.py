"""Datasets from the Hugging Face hub (for online users), read into the same shapes as users' files.

Offline use fails fast with one line instead of hanging in retries: with `HF_HUB_OFFLINE=1` only the
local cache is tried; otherwise the hub endpoint must answer one HTTP request within `timeout` seconds.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from metanlp_cli.data.files import tables_to_dataset
from metanlp_cli.data.types import ClassSplit, TaskCollection
from metanlp_cli.errors import MetaNLPError


def check_reachable(endpoint: str, timeout: float) -> None:
    """One HTTP request to the hub that must be answered (with any status) within `timeout` seconds,
    or one line saying why it was not: the `datasets` client would otherwise retry for a long time."""
    request = urllib.request.Request(f"{endpoint.rstrip('/')}/api/datasets", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # an answer: the network works
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        reason = "timed out" if isinstance(reason, TimeoutError) else getattr(reason, "strerror", None) or str(reason)
        raise MetaNLPError(
            f"dataset=hf: cannot reach {endpoint} ({reason}, timeout {timeout:g}s); check the network, "
            "set HF_HUB_OFFLINE=1 to use datasets already in the local cache, or use dataset=files"
        ) from None


def download(name: str, config: str | None, revision: str | None, timeout: float):
    import datasets
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE  # HF_HUB_OFFLINE as the library read it at import
    if not offline:
        check_reachable(constants.ENDPOINT, timeout)
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(name, config, revision=revision)
    except Exception as error:
        reason = " ".join(str(error).split())[:300]
        if offline:
            raise MetaNLPError(
                f"dataset.name={name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
                f"downloading it ({reason}); unset HF_HUB_OFFLINE on a machine with network access"
            ) from None
        raise MetaNLPError(
            f"dataset.name={name!r} (config {config!r}) cannot be loaded from the hub: {reason}"
        ) from None


def hub_dataset(
    name: str | None = None,
    config: str | None = None,
    revision: str | None = None,
    train_split: str = "train",
    val_split: str | None = None,
    test_split: str | None = None,
    split: str = "classes",
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    val_classes: list[str] | None = None,
    test_classes: list[str] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    regression: bool = False,
    metrics: list[str] = ("accuracy",),
    timeout: float = 10.0,
    on_bad_rows: str = "error",
) -> ClassSplit | TaskCollection:
    """A hub dataset's splits (`train_split`, and `val_split` / `test_split` where given) as a class split
    or one task, exactly as `dataset=files` reads files (see files.py)."""
    if not name:
        raise MetaNLPError("dataset.name is not set; give the hub dataset id, e.g. dataset.name=org/dataset")
    loaded = download(name, config, revision, timeout)
    wanted = {"train": train_split, "val": val_split, "test": test_split}
    tables = {}
    for part, hub_split in wanted.items():
        if hub_split is None:
            continue
        if hub_split not in loaded:
            raise MetaNLPError(
                f"dataset.{part}_split={hub_split!r} is not a split of {name}; allowed: {', '.join(loaded)}"
            )
        tables[part] = (loaded[hub_split], f"hf://{name}" + (f"/{config}" if config else "") + f"[{hub_split}]")
    return tables_to_dataset(
        name,
        tables,
        split=split,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        val_classes=val_classes,
        test_classes=test_classes,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        regression=regression,
        metrics=list(metrics),
        on_bad_rows=on_bad_rows,
    )
