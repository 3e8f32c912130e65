"""Where the history's rows go: ``history.csv`` in the run directory (always), and the
tracker the ``logger`` group names (``logger=tensorboard``), which gets the same series."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from fastdist.errors import ConfigError
from fastdist.extras import require

__all__ = ["CsvSink", "LoggerConfig", "TensorBoardSink", "make_sinks"]


@dataclass
class LoggerConfig:
    name: str = "csv"  # csv | tensorboard (history.csv is written either way)
    dir: str | None = None  # tensorboard: event directory (default: <run dir>/tensorboard)


class CsvSink:
    """One row per history entry, flushed as it comes (a killed run keeps its rows)."""

    def __init__(self, path: str | Path, columns: tuple[str, ...]) -> None:
        self.path = Path(path)
        self._file = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns)
        self._writer.writeheader()

    def write(self, row: dict) -> None:
        self._writer.writerow({k: "" if v is None else v for k, v in row.items()})
        self._file.flush()

    def finish(self, rows: list[dict], scored: list[dict]) -> None:
        """Rewrite the file with the complete rows (atomically: temp file + rename)."""
        self._file.close()
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self._writer.fieldnames)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
        os.replace(tmp, self.path)

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """The same series as scalars (``train/loss``, ``test/accuracy``, ...) by step."""

    def __init__(self, directory: str | Path) -> None:
        tensorboardx = require("tensorboardX", "tensorboard", "logger=tensorboard")
        self._writer = tensorboardx.SummaryWriter(str(directory))

    def write(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or value is None or isinstance(value, str):
                continue  # a label (history's byzantine column), not a series
            if not math.isfinite(float(value)):
                continue
            split, _, name = key.partition("_")
            tag = f"{split}/{name}" if split in ("train", "val", "test") else f"run/{key}"
            self._writer.add_scalar(tag, float(value), step)

    def finish(self, rows: list[dict], scored: list[dict]) -> None:
        for row in scored:  # the scores, at the steps they belong to
            self.write(row)

    def close(self) -> None:
        self._writer.close()


def make_sinks(logger, run_dir: str | None, columns: tuple[str, ...]) -> list:
    """The sinks for a run: csv in ``run_dir`` (none when there is no run directory,
    as from the Python API) plus the configured tracker."""
    name = str(logger.name) if logger is not None else "csv"
    if name not in ("csv", "tensorboard"):
        raise ConfigError(f"logger must be csv or tensorboard, got {name!r}")
    sinks: list = []
    if name == "tensorboard":
        directory = logger.dir or (Path(run_dir or ".") / "tensorboard")
        sinks.append(TensorBoardSink(directory))
    if run_dir is not None:
        sinks.append(CsvSink(Path(run_dir) / "history.csv", columns))
    return sinks
