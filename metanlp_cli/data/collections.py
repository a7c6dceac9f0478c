"""Multi-task collections made of other dataset configs (`dataset=glue/lowres`, `dataset=lmbff/glue`).

Each entry of `tasks` is a dataset config of its own (a `glue_task`, an `lmbff_tasks`, ...), built through
`config.build` like any other; this joins their tasks into one `TaskCollection` and names which entries
are meta-trained on and which are the targets. An entry may hold several tasks (LM-BFF's seeds): naming
the entry names all of them.
"""

from __future__ import annotations

from metanlp_cli.data.types import TaskCollection
from metanlp_cli.errors import MetaNLPError


def _tasks_of(entries: list[str] | None, collections: dict[str, TaskCollection], key: str) -> list[str] | None:
    if entries is None:
        return None
    unknown = [entry for entry in entries if entry not in collections]
    if unknown:
        raise MetaNLPError(
            f"dataset.{key}: {unknown[0]!r} is not an entry of dataset.tasks; allowed: {', '.join(collections)}"
        )
    return [task.name for entry in entries for task in collections[entry].tasks]


def task_collection(
    name: str,
    tasks: dict[str, TaskCollection],
    meta_train_tasks: list[str] | None = None,
    target_tasks: list[str] | None = None,
) -> TaskCollection:
    """One collection of the tasks of every entry of `tasks`. `meta_train_tasks` and `target_tasks` list
    entries of `tasks` (null: every task, as in `TaskCollection`)."""
    if not tasks:
        raise MetaNLPError("dataset.tasks is empty; give at least one dataset config")
    return TaskCollection(
        name,
        [task for collection in tasks.values() for task in collection.tasks],
        _tasks_of(meta_train_tasks, tasks, "meta_train_tasks"),
        _tasks_of(target_tasks, tasks, "target_tasks"),
        [note for collection in tasks.values() for note in collection.notes],
    )
