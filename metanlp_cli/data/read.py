"""Reading benchmark files: where data lives, line-numbered rows, and what to do with a bad row.

Every problem names the file (and the line, where there is one) in one line, so a user can open
the file at that place. `BadRows` applies `dataset.on_bad_rows`: `error` stops at the first bad
row, `skip` leaves it out and counts it in the log.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metanlp_cli.errors import MetaNLPError

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"


def data_path(data_root: str | None, *parts: str) -> Path:
    """A path under `paths.data_root`, which must be set and exist."""
    if data_root is None or str(data_root) in ("", "None"):
        raise MetaNLPError(
            "paths.data_root is not set; set METANLP_DATA_ROOT=/path/to/data or paths.data_root=/path/to/data"
        )
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise MetaNLPError(f"paths.data_root={str(root)!r} is not a folder; point it at the benchmark data folder")
    return root.joinpath(*parts)


def require_file(path: Path, what: str = "file") -> Path:
    if not path.is_file():
        found = "it is a folder" if path.is_dir() else "not found"
        raise MetaNLPError(f"dataset: {what} {path} {found}")
    return path


def require_folder(path: Path, what: str = "folder") -> Path:
    if not path.is_dir():
        raise MetaNLPError(f"dataset: {what} {path} not found")
    return path


class BadRows:
    """Applies `dataset.on_bad_rows` to rows that cannot be used, and counts the skipped ones per file."""

    def __init__(self, on_bad_rows: str = "error") -> None:
        if on_bad_rows not in ("error", "skip"):
            raise MetaNLPError(f"dataset.on_bad_rows={on_bad_rows!r} is not allowed; allowed: error, skip")
        self.skip = on_bad_rows == "skip"
        self.skipped: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def __call__(self, path: Path, where: str, reason: str) -> None:
        if not self.skip:
            raise MetaNLPError(f"{path}: {where}: {reason} (or set dataset.on_bad_rows=skip)")
        self.skipped[str(path)] += 1
        self.first.setdefault(str(path), f"{where}: {reason}")

    def log_summary(self) -> None:
        for path, count in self.skipped.items():
            log.warning("%s: skipped %d bad row%s (first at %s)", path, count, "s" * (count > 1), self.first[path])

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


def clean_text(value, path: Path, where: str, field: str, bad: BadRows) -> str | None:
    """The text of a field, whitespace-normalised; a missing, non-string or empty one is a bad row."""
    if value is None:
        bad(path, where, f"no field {field!r}")
    elif not isinstance(value, str):
        bad(path, where, f"field {field!r} is {type(value).__name__}, expected text")
    elif not value.strip():
        bad(path, where, f"empty text in field {field!r}")
    else:
        return " ".join(value.split())
    return None


def read_lines(path: Path, bad: BadRows) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line; a UTF-8 BOM is dropped, a non-UTF-8 line is a bad row."""
    raw = require_file(path).read_bytes()
    raw = raw.removeprefix(BOM)
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = []
        for number, line in enumerate(raw.split(b"\n"), 1):
            try:
                lines.append(line.decode("utf-8"))
            except UnicodeDecodeError as error:
                bad(
                    path,
                    f"line {number}",
                    f"not valid UTF-8 (byte 0x{line[error.start]:02x} at column {error.start + 1})",
                )
                lines.append("")
    for number, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


def read_jsonl(path: Path, bad: BadRows) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every JSON-lines record; a line that is not a JSON object is a bad row."""
    for number, line in read_lines(path, bad):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            bad(path, f"line {number}", f"not valid JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(record, dict):
            bad(path, f"line {number}", f"expected a JSON object, got {type(record).__name__}")
            continue
        yield number, record


def read_json(path: Path) -> Any:
    """A whole-file JSON document (one object or array); a broken file is an error at its line."""
    raw = require_file(path).read_bytes().removeprefix(BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise MetaNLPError(f"{path}: line {line}: not valid UTF-8 (the whole file is one JSON document)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise MetaNLPError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None


def read_delimited(path: Path, file_format: str, bad: BadRows) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a TSV or CSV file, header included.

    `tsv` splits on tabs with no quoting (GLUE's convention: sentences contain `"`); `csv` follows
    RFC 4180 quoting, so a quoted field may span lines (the row's first line is reported).
    """
    if file_format == "tsv":
        for number, line in read_lines(path, bad):
            yield number, line.split("\t")
        return
    if file_format != "csv":
        raise MetaNLPError(f"dataset.format={file_format!r} is not allowed; allowed: tsv, csv")
    numbered = list(read_lines(path, bad))
    line_of_row = iter(number for number, _ in numbered)
    reader = csv.reader(line + "\n" for _, line in numbered)
    consumed = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise MetaNLPError(f"{path}: line {numbered[consumed][0]}: not valid CSV ({error})") from None
        number = next(line_of_row)
        for _ in range(reader.line_num - consumed - 1):  # a quoted field spanning lines
            next(line_of_row)
        consumed = reader.line_num
        yield number, fields
