"""What fastdist-summarize reads from a run directory (``metrics.json`` and the
``history.csv`` beside it), bounded and checked: the directory may come from anyone.

Left to ``json.loads`` and ``csv``, such a file could stop the command with a traceback
(200,000 nested brackets: a RecursionError; ``"workers": "2"``: a TypeError deep in a
table) or keep it busy or blocked (a 10 GB file; a FIFO named metrics.json, whose open
never returns). Here a file is refused before it is opened unless ``os.stat`` says it
is a regular file, at most a fixed number of bytes are read, JSON nesting is measured
before the parser sees it, and every field summarize uses is checked for its type:
text where text goes, finite numbers (or nothing) where numbers go, integers for the
worker count and seed (a bool is not one). Whatever fails is a :class:`BadFile`, one
line that names the file and says why; the caller skips that file and goes on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
from pathlib import Path

from fastdist.engine.files import NotARegularFile, regular_file

__all__ = [
    "HISTORY_BYTES",
    "METRICS_BYTES",
    "BadFile",
    "find_metrics",
    "read_history",
    "read_metrics",
]

METRICS_BYTES = 4 << 20  # fastdist writes a few kB
HISTORY_BYTES = 32 << 20  # a row is ~100 bytes: 300,000 rows
HISTORY_ROWS = 250_000  # rows of "0" are 2 bytes each: bound the rows (and memory) too
MAX_DEPTH = 32  # fastdist's metrics.json nests 3 deep
HISTORY_COLUMNS = ("step", "train_loss", "test_accuracy")  # what the plots use

# Names shown in a Markdown table and a matplotlib title: no "|" (a new column), no "$"
# (matplotlib would parse mathtext, and fail on a bad one), no brackets (a link), no
# control characters (a terminal escape sequence).
_NAME = re.compile(r"[\w.+\-:@=,/ ]{1,100}")
# A whole JSON string (possessive: linear time whatever follows), a lone quote (a
# string that never ends: not JSON), or a bracket.
_TOKENS = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"|"|[\[\]{}]', re.S)


class BadFile(Exception):
    """``path`` cannot be used; ``why`` says why (one line)."""

    def __init__(self, path, why: str) -> None:
        self.path, self.why = path, why
        super().__init__(f"{shown(path)}: {why}")


def shown(path) -> str:
    """A path as one printable line (a name may hold a newline or an escape code)."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def find_metrics(directory: str | Path) -> list[Path]:
    """Every ``metrics.json`` below ``directory``, sorted. Walked with a stack, not
    recursion (a tree can be deeper than Python's recursion limit); links to
    directories are not followed (a loop would never end); unreadable ones are passed."""
    found, stack = [], [Path(directory)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.name == "metrics.json":
                        found.append(Path(entry.path))
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
        except OSError:
            continue
    return sorted(found)


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` if it holds at most ``limit`` of them."""
    try:
        size = os.stat(regular_file(path)).st_size
        if size > limit:
            raise BadFile(path, f"{size} bytes, over the limit of {limit}")
        # O_NONBLOCK: should a FIFO have taken the file's place since the stat, the open
        # returns at once (and fstat refuses it) instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise BadFile(path, "not a regular file")
            data = fh.read(limit + 1)
    except NotARegularFile as exc:
        raise BadFile(path, f"not a regular file ({exc.kind})") from None
    except OSError as exc:
        raise BadFile(path, f"cannot read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > limit:
        raise BadFile(path, f"over the limit of {limit} bytes")
    return data


def _text(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadFile(path, "not UTF-8 text") from None


def _too_deep(text: str) -> bool | None:
    """Whether the brackets of ``text`` nest deeper than MAX_DEPTH (strings skipped: a
    bracket in one is text); None when a string never ends (not JSON then)."""
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token == '"':
            return None
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


def _json_object(path: Path) -> dict:
    text = _text(path, read_bounded(path, METRICS_BYTES))
    deep = _too_deep(text)
    if deep is None:
        raise BadFile(path, "not valid JSON (a string never ends)")
    if deep:
        raise BadFile(path, f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also a 5,000-digit number
        raise BadFile(path, f"not valid JSON ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(value, dict):
        raise BadFile(path, f"holds a JSON {type(value).__name__}, not an object")
    return value


def _name(path: Path, metrics: dict, key: str, default: str | None = None) -> str:
    value = metrics.get(key)
    value = default if value is None else value
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadFile(path, f"{key} must be a name (letters, digits, _.+-:@=,/ and spaces)")
    return value


def _integer(path: Path, metrics: dict, key: str, low: int, high: int) -> int:
    value = metrics.get(key)
    if type(value) is not int or not low <= value <= high:  # type(): a bool is no count
        raise BadFile(path, f"{key} must be an integer in [{low}, {high}]")
    return value


def _number(path: Path, metrics: dict, key: str) -> float | None:
    """A finite number, or None where there is none (absent, null, or NaN: what
    json.dumps writes for an evaluation that failed)."""
    value = metrics.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or math.isinf(value):
        raise BadFile(path, f"{key} must be a finite number or null")
    return None if math.isnan(value) else float(value)


def _curve(path: Path, value, key: str) -> list[float]:
    if not isinstance(value, list) or not 1 <= len(value) <= 1000:
        raise BadFile(path, f"interpolation.{key} must be a list of 1 to 1000 numbers")
    if any(type(v) not in (int, float) or not math.isfinite(v) for v in value):
        raise BadFile(path, f"interpolation.{key} must hold finite numbers")
    return [float(v) for v in value]


def _interpolation(path: Path, value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadFile(path, "interpolation must be an object")
    alpha = _curve(path, value.get("alpha"), "alpha")
    accuracy = _curve(path, value.get("test_accuracy"), "test_accuracy")
    if len(alpha) != len(accuracy):
        raise BadFile(path, "interpolation.alpha and .test_accuracy differ in length")
    return {"alpha": alpha, "test_accuracy": accuracy}


def _final_validation(path: Path, metrics: dict) -> float | None:
    """The validation accuracy of the model the run ended with: the last evaluation at
    the run's final step (``steps``), when the run evaluated on a validation split. An
    earlier evaluation scores another model, so it is no final score: None then."""
    if metrics.get("eval_split") != "validation":
        return None
    evaluations = metrics.get("evaluations")
    if not isinstance(evaluations, list) or not all(isinstance(e, dict) for e in evaluations):
        raise BadFile(path, "evaluations must be a list of objects")
    final = _integer(path, metrics, "steps", 0, 1 << 62)
    at_end = [e for e in evaluations if type(e.get("step")) is int and e["step"] == final]
    return _number(path, at_end[-1], "accuracy") if at_end else None


def _time_to_accuracy(path: Path, metrics: dict) -> dict:
    """``time_to_accuracy_step`` (None: never reached) and ``target_accuracy``, and
    whether the run tracked a target at all (the key is absent when it did not)."""
    tracked = "time_to_accuracy_step" in metrics
    step = metrics.get("time_to_accuracy_step")
    if step is not None:
        step = _integer(path, metrics, "time_to_accuracy_step", 0, 1 << 62)
    target = _number(path, metrics, "target_accuracy")
    return {"tracks_target": tracked, "time_to_accuracy_step": step, "target_accuracy": target}


def read_metrics(path: Path) -> dict:
    """The fields of ``metrics.json`` that summarize uses, each checked."""
    metrics = _json_object(path)
    return {
        "dataset": _name(path, metrics, "dataset"),
        "combiner": _name(path, metrics, "combiner"),
        "init": _name(path, metrics, "init", "shared"),
        "workers": _integer(path, metrics, "workers", 1, 1 << 20),
        "seed": _integer(path, metrics, "seed", -(1 << 63), (1 << 64) - 1),
        "test_accuracy": _number(path, metrics, "test_accuracy"),
        "test_loss": _number(path, metrics, "test_loss"),
        "samples_per_second": _number(path, metrics, "samples_per_second"),
        "interpolation": _interpolation(path, metrics.get("interpolation")),
        "validation_accuracy": _final_validation(path, metrics),
        **_time_to_accuracy(path, metrics),
    }


def _cell(text: str, integer: bool):
    """A history value: None for an empty cell (or NaN), else a finite number; a
    ValueError for anything else."""
    if text == "":
        return None
    if integer:
        if not (text.isascii() and text.isdigit() and len(text) <= 18):
            raise ValueError(text)
        return int(text)
    value = float(text)
    if math.isinf(value):
        raise ValueError(text)
    return None if math.isnan(value) else value


def read_history(path: Path) -> tuple[list[dict], int]:
    """The rows of ``history.csv`` (HISTORY_COLUMNS only; a missing column is None) and
    the number of malformed rows skipped."""
    reader = csv.reader(io.StringIO(_text(path, read_bounded(path, HISTORY_BYTES)), newline=""))
    try:
        header = next(reader, [])
        if "step" not in header:
            raise BadFile(path, "no header with a step column")
        where = {name: header.index(name) for name in HISTORY_COLUMNS if name in header}
        rows, skipped = [], 0
        for number, cells in enumerate(reader, 1):  # one at a time: memory stays bounded
            if number > HISTORY_ROWS:
                raise BadFile(path, f"more than {HISTORY_ROWS} rows")
            row = _row(cells, len(header), where)
            if row is None:
                skipped += 1
            else:
                rows.append(row)
    except csv.Error as exc:
        raise BadFile(path, f"not a CSV table ({' '.join(str(exc).split())[:120]})") from None
    return rows, skipped


def _row(cells: list[str], width: int, where: dict[str, int]) -> dict | None:
    """One history row (HISTORY_COLUMNS, None where the file has no such column), or
    None when it is malformed."""
    if len(cells) != width:
        return None
    try:
        row = {name: _cell(cells[i], name == "step") for name, i in where.items()}
    except ValueError:
        return None
    if row["step"] is None:
        return None
    return {name: row.get(name) for name in HISTORY_COLUMNS}
