"""The README stays a front page, and every relative link in it and in docs/ reaches a file."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Pages other issues are writing; the README links them already.
PENDING = {"algorithms-metric.md", "adaptation.md", "multilingual.md", "tracking.md", "search.md"}
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(path: Path) -> list[str]:
    """Link targets of a Markdown file outside code blocks, without URLs or in-page anchors."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    targets = [target.partition("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)]
    return [target for target in targets if target and not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(path):
    missing = []
    for target in relative_links(path):
        resolved = (path.parent / target).resolve()
        pending = resolved.parent == ROOT / "docs" and resolved.name in PENDING
        if not resolved.exists() and not pending:
            missing.append(target)
    assert not missing, f"{path.name} links to missing files: {missing}"


def test_readme_links_every_docs_page():
    linked = {(ROOT / target).resolve() for target in relative_links(ROOT / "README.md")}
    unlinked = [page.name for page in (ROOT / "docs").glob("*.md") if page.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
