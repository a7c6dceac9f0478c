"""Data flows one way: each module of metanlp_cli imports only from its own layer's package or from layers
below it (the layers of the README's layout tree), nothing imports the CLI, and there is one meta-step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "metanlp_cli"

# The layers of the README's layout tree, bottom up; within a layer, modules are listed in the order they may
# import each other (a data loader knows nothing of backbones, the checkpoint code nothing of processes).
LAYERS = [
    ["__init__", "errors", "metrics", "stats", "results", "config", "compose", "divergence"],
    ["data", "backbones", "sampling", "checkpoint", "distributed", "preflight", "loggers", "search", "search_report"],
    ["algorithms", "components"],
    ["protocols"],
    [("train", "evaluate", "describe", "folds", "report")],  # the recipes: none below another
    ["cli", "__main__"],
]
RANK = {}
for names in LAYERS:
    for entry in names:
        rank = len(set(RANK.values()))
        RANK.update({name: rank for name in (entry if isinstance(entry, tuple) else (entry,))})
# A recipe may run another recipe through its entry points: train scores its checkpoint with the eval recipe.
SAME_RANK = {("train", "evaluate")}


def top_name(module: str) -> str:
    """`metanlp_cli.data.glue` -> `data`; `metanlp_cli` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """Every metanlp_cli module that `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("metanlp_cli"):
            for alias in node.names:  # `from metanlp_cli import train` imports a module, `... import CONFIG_DIR` not
                is_module = (PACKAGE / f"{alias.name}.py").is_file() or (PACKAGE / alias.name).is_dir()
                names.add(f"metanlp_cli.{alias.name}" if node.module == "metanlp_cli" and is_module else node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("metanlp_cli")}
    return names


def module_name(path: Path) -> str:
    """`metanlp_cli/data/glue.py` -> `metanlp_cli.data.glue`; a package's `__init__.py` -> the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("metanlp_cli", *parts)).removesuffix(".__init__")


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert {top_name(module_name(path)) for path in MODULES} <= set(RANK)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_upward_and_nothing_imports_the_cli(path):
    module = module_name(path)
    own = top_name(module)
    for imported in imports_of(path):
        target = top_name(imported)
        if target == own:
            continue  # inside one package (data/, algorithms/, protocols/) or module
        assert target != "cli" or own == "__main__", f"{module} imports the CLI"
        assert RANK[target] < RANK[own] or (own, target) in SAME_RANK, f"{module} imports {imported}: upward"


def test_the_meta_step_is_defined_once_and_called_by_train_tests_and_benchmarks():
    root = PACKAGE.parent
    sources = [
        p for folder in ("metanlp_cli", "tests", "benchmarks", "reproduce") for p in (root / folder).rglob("*.py")
    ]
    defined = [p for p in sources if "\ndef meta_step(" in p.read_text()]
    assert [p.relative_to(root).as_posix() for p in defined] == ["metanlp_cli/algorithms/meta_step.py"]
    for caller in (
        "metanlp_cli/train.py",
        "tests/conftest.py",
        "benchmarks/workloads.py",
        "benchmarks/bench_batched_episodes.py",
    ):
        assert "meta_step(" in (root / caller).read_text(), caller
    # nobody else backpropagates a meta-batch by hand
    for path in (root / "metanlp_cli/train.py", root / "benchmarks/workloads.py"):
        assert "meta_batch_losses" not in path.read_text() and ".backward()" not in path.read_text()


def test_evaluate_has_no_protocol_branch():
    text = (PACKAGE / "evaluate.py").read_text()
    assert "isinstance(protocol" not in text and "KShotProtocol" not in text and "EpisodicProtocol" not in text
