"""Benchmark output: per-seed CSV, mean ± std summaries, markdown tables and line plots."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.files import atomic_write_bytes


def summarise(frame: pd.DataFrame, by: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1) and count of `values` per group, in first-seen order.

    Returns columns `by`, then `<value>_mean`, `<value>_std` for each value, then `n`.
    """
    grouped = frame.groupby(list(by), sort=False, dropna=False)
    means = grouped[list(values)].mean().add_suffix("_mean")
    stds = grouped[list(values)].std(ddof=1).add_suffix("_std")
    counts = grouped.size().rename("n")
    ordered = [column for value in values for column in (f"{value}_mean", f"{value}_std")]
    return pd.concat([means, stds], axis=1)[ordered].join(counts).reset_index()


def mean_std(mean: float, std: float, digits: int = 3, scale: float = 1.0) -> str:
    """'0.912 ± 0.004' (the std is left out when undefined, e.g. a single seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{mean * scale:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    return text


def number(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded, NaN/None as a dash, anything else as str."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of already formatted cells."""
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def settings_line(settings: Mapping[str, Any], seeds: Sequence[int]) -> str:
    """The settings a table was measured at, as one markdown line."""
    parts = [f"`{key}={_setting_value(value)}`" for key, value in sorted(settings.items())]
    return f"Settings: {', '.join(parts) or 'defaults'}; seeds {', '.join(map(str, seeds))}."


def _setting_value(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write a table atomically and return its path."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def write_markdown(path: Path, title: str, sections: Sequence[str]) -> Path:
    """Write `# title` followed by the sections, separated by blank lines."""
    text = "\n\n".join([f"# {title}", *sections]) + "\n"
    atomic_write_bytes(path, text.encode())
    return path


def line_plot(
    path: Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    integer_x: bool = False,
) -> Path:
    """One line per label: (x, y, optional y-std band). Saves a PNG and returns its path."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if len(curves) > 10:  # the default cycle repeats after 10 colours
        axes.set_prop_cycle(color=[matplotlib.colormaps["tab20"](i) for i in range(20)])
    for label, (x, y, band) in curves.items():
        x_values, y_values = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        axes.plot(x_values, y_values, marker="o", markersize=3, label=label)
        if band is not None:
            spread = np.nan_to_num(np.asarray(band, dtype=float))
            axes.fill_between(x_values, y_values - spread, y_values + spread, alpha=0.2)
    if logx:
        axes.set_xscale("log")
    if integer_x:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path
