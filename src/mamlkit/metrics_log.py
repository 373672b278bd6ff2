"""metrics.csv: every metric a run reports, one row per logged meta-iteration, never lost.

Rows are appended and flushed as they are logged. The file is only ever rewritten whole (when a
run resumes, dropping the rows past its checkpoint, or when a metric appears that has no column
yet) through a temporary file that replaces it atomically, so a run killed at any moment leaves
either the old file or the new one, never a truncated history. A row torn by a kill mid-append
is dropped when the run resumes.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from mamlkit.config import read_text_file
from mamlkit.datasets._files import write_text_atomic
from mamlkit.faults import naming

BASE_FIELDS = ["iteration", "elapsed_s", "loss", "support_loss", "query_accuracy", "val_loss",
               "val_accuracy", "meta_lr"]
"""Columns every metrics.csv starts with; the metrics an algorithm adds (e.g. iMAML's
``inner_residual``) follow in the order they first appear."""


def read_log(path: Path, up_to: int) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and the complete rows up to iteration ``up_to`` of a metrics.csv.

    A last line without its newline (a row cut short by a kill) is dropped, as are rows with a
    wrong number of fields. Raises ``ValueError`` naming the file when it is not a CSV log.
    """
    if not path.is_file():
        return list(BASE_FIELDS), []
    text = read_text_file(path, "metrics log")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = list(reader.fieldnames or [])
    if text and "iteration" not in columns:
        raise ValueError(f"{path} is not a mamlkit metrics log (no 'iteration' column); move it "
                         "away and resume again.")
    kept = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            continue
        try:
            iteration = int(row["iteration"])
        except (KeyError, TypeError, ValueError):
            continue
        if iteration <= up_to:
            kept.append(row)
    return _merge(list(BASE_FIELDS), columns), kept


def read_rows(path: Path, up_to: int) -> list[dict[str, str]]:
    """The complete rows of a metrics.csv up to iteration ``up_to`` (see :func:`read_log`)."""
    return read_log(path, up_to)[1]


def _merge(columns: list[str], more: list[str]) -> list[str]:
    return columns + [name for name in more if name not in columns]


class MetricsLog:
    """``metrics.csv`` in ``run_dir`` (and TensorBoard scalars when asked and installed).

    ``resume_from`` keeps the rows of an existing log up to that iteration; ``None`` starts an
    empty log.
    """

    def __init__(self, run_dir: Path, resume_from: int | None, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.csv"
        if resume_from is None:
            self.columns, rows = list(BASE_FIELDS), []
        else:
            self.columns, rows = read_log(self.path, resume_from)
        self._rewrite(rows)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.tb = None
            else:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the file atomically with ``rows`` under the current columns, then reopen it
        for appending."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        try:
            write_text_atomic(self.path, text.getvalue())
            self.handle = self.path.open("a", newline="", encoding="utf-8")
        except OSError as error:
            raise naming(error, self.path) from error
        self.writer = csv.DictWriter(self.handle, self.columns, extrasaction="ignore",
                                     lineterminator="\n")

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` (every key becomes a column; a new one rewrites the file once)."""
        new = [key for key in row if key not in self.columns]
        if new:
            self.handle.close()
            rows = read_rows(self.path, 10**18)
            self.columns = _merge(self.columns, new)
            self._rewrite(rows)
        try:
            self.writer.writerow(row)
            self.handle.flush()
        except OSError as error:
            raise naming(error, self.path) from error
        if self.tb is not None:
            for key, value in row.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, int(row["iteration"]))

    def sync(self) -> None:
        """Force the rows written so far onto the disk (called with every ``last.pt``, so a power
        cut cannot lose rows that precede the checkpoint a resume continues from)."""
        try:
            os.fsync(self.handle.fileno())
        except OSError as error:
            raise naming(error, self.path) from error

    def close(self) -> None:
        """Close the file (and the TensorBoard writer)."""
        self.handle.close()
        if self.tb is not None:
            self.tb.close()
