"""The LM-BFF few-shot splits (Gao et al., ACL 2021): `<TASK>/<k>-<seed>/{train,dev}` with k examples
per class, and `<TASK>/test.*`, the full evaluation set shared by every seed.

One task per seed (`sst2-seed13`, ...), all with the same test split, so a protocol can report the
mean and standard deviation over the seeds as the paper does. GLUE tasks are TSV with the GLUE
columns; the single-sentence tasks (sst-5, mr, cr, mpqa, subj, trec) are header-less CSV `label,sentence`.
"""

from __future__ import annotations

from metanlp_cli.data.glue import LabelReader, read_split
from metanlp_cli.data.read import BadRows, data_path, require_folder
from metanlp_cli.data.types import Task, TaskCollection
from metanlp_cli.errors import MetaNLPError


def lmbff_tasks(
    data_root: str | None = None,
    name: str = "sst2",
    folder: str = "lmbff_kshot/SST-2",
    seeds: list[int] = (13, 21, 42, 87, 100),
    k: int = 16,
    train_file: str = "train.tsv",
    dev_file: str = "dev.tsv",
    test_file: str | None = "test.tsv",
    file_format: str = "tsv",
    header: bool = True,
    text_columns: list[str | int] = ("sentence",),
    label_column: str | int = "label",
    label_names: list[str] | None = None,
    regression: bool = False,
    metrics: list[str] = ("accuracy",),
    on_bad_rows: str = "error",
) -> TaskCollection:
    root = require_folder(data_path(data_root, folder))
    if not seeds:
        raise MetaNLPError("dataset.seeds is empty; allowed: any of 13, 21, 42, 87, 100")
    labels, bad = LabelReader(label_names, regression), BadRows(on_bad_rows)

    def read(path):
        return read_split(path, file_format, header, list(text_columns), label_column, labels, bad)

    test = read(root / test_file) if test_file else None
    tasks = []
    for seed in seeds:
        split_folder = root / f"{k}-{seed}"
        if not split_folder.is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise MetaNLPError(
                f"dataset: folder {split_folder} not found (k={k}, seed={seed}); found {', '.join(found)}"
            )
        tasks.append(
            Task(
                f"{name}-seed{seed}",
                read(split_folder / train_file),
                read(split_folder / dev_file),
                test,
                label_names=[] if regression else list(label_names),
                is_pair=len(text_columns) == 2,
                regression=regression,
                metrics=list(metrics),
                group=name,
            )
        )
    bad.log_summary()
    return TaskCollection(f"lmbff/{name}", tasks)
