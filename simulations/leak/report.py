"""An experiment's results directory: results.csv, summary.json, plots and a short report.md.

Files are written atomically, so an interrupted experiment leaves complete files or none.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from common.files import atomic_write_bytes


class Report:
    """Collects an experiment's rows, summary, plots and prose, then writes them.

    Parameters
    ----------
    out_dir : results directory (created).
    experiment : experiment name, used in progress lines and the report title.
    """

    def __init__(self, out_dir: Path, experiment: str) -> None:
        self.path = out_dir.expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.experiment = experiment
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.sections: list[str] = []
        self.plots: list[str] = []
        self.failures: list[str] = []
        self._start = time.perf_counter()

    def progress(self, message: str) -> None:
        """Print one progress line with the elapsed time."""
        elapsed = time.perf_counter() - self._start
        print(f"[leak {self.experiment} {elapsed:6.0f}s] {message}", flush=True)

    def fail(self, message: str) -> None:
        """Record a failed check (a bug, not a result): printed loudly, listed in the report and
        summary, and the command exits non-zero."""
        self.failures.append(message)
        banner = "!" * 78
        print(f"{banner}\nCHECK FAILED: {message}\n{banner}", flush=True)

    def add_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows of `results.csv` (one measurement each)."""
        self.rows.extend(rows)

    def plot_path(self, name: str) -> Path:
        """Where to save plot `name` (a PNG in the results directory); listed in the report."""
        self.plots.append(name)
        return self.path / name

    def add_section(self, heading: str, text: str) -> None:
        """Add a `## heading` section of markdown to report.md."""
        self.sections.append(f"## {heading}\n\n{text.strip()}\n")

    def write(self, title: str, settings: dict[str, Any], config: dict[str, Any]) -> Path:
        """Write results.csv, summary.json and report.md; return the directory."""
        self.summary["seconds"] = round(time.perf_counter() - self._start, 1)
        self.summary["settings"] = settings
        self.summary["run_config"] = config
        self.summary["failed_checks"] = self.failures
        buffer = io.StringIO()
        pd.DataFrame(self.rows).to_csv(buffer, index=False)
        atomic_write_bytes(self.path / "results.csv", buffer.getvalue().encode())
        summary = json.dumps(_jsonable(self.summary), indent=2, sort_keys=True, allow_nan=False)
        atomic_write_bytes(self.path / "summary.json", summary.encode())
        plots = "\n".join(f"![{name}]({name})" for name in self.plots)
        changed = ", ".join(f"`{k}={v}`" for k, v in sorted(settings.items()))
        failed = "".join(f"**CHECK FAILED (a bug)**: {m}\n\n" for m in self.failures)
        text = (
            f"# {title}\n\n{failed}Settings: {changed}.\nRuntime: {self.summary['seconds']:.0f} s. "
            "Full numbers: `results.csv`; run config and headline values: `summary.json`.\n\n"
            + "\n".join(self.sections)
            + (f"\n## Plots\n\n{plots}\n" if plots else "")
        )
        atomic_write_bytes(self.path / "report.md", text.encode())
        return self.path


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A pandas frame as a GitHub markdown table, floats rounded to `digits` places."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *body])


def mean_std(values: Sequence[float], spec: str = ".3f") -> str:
    """'mean ± std' over seeds with format `spec` (std with ddof=1; the value for one seed)."""
    series = pd.Series(list(values), dtype=float)
    if len(series) == 1:
        return format(series.iloc[0], spec)
    return f"{format(series.mean(), spec)} ± {format(series.std(ddof=1), spec)}"


def _jsonable(value: Any) -> Any:
    """Recursively turn numpy scalars into Python numbers and NaN/inf into None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
