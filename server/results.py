"""The run directory: resolved config, per-round metrics, summary, checkpoint and plots.

Every file is written atomically (temporary file + rename), so a crash at any instant leaves
either the previous or the new complete file, never a truncated one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.files import atomic_write_bytes
from common.metrics import Reliability, reliability

FINAL_METRICS = ("student_accuracy", "student_nll", "student_ece")


def summarise_rounds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round counts of summary.json, from the metrics rows of a run.

    Returns
    -------
    `rounds`, `rounds_completed`, `rounds_failed`, `failed_rounds` (one {round, reason} per
    failed round, the reason being its `status` without the "failed: " prefix) and, when a
    round completed, the last completed round's `student_accuracy`, `student_nll` and
    `student_ece`.
    """
    done = [row for row in rows if row.get("status") == "ok"]
    failed = [row for row in rows if row.get("status") != "ok"]
    summary: dict[str, Any] = {
        "rounds": len(rows),
        "rounds_completed": len(done),
        "rounds_failed": len(failed),
        "failed_rounds": [
            {"round": row["round"], "reason": str(row.get("status")).removeprefix("failed: ")}
            for row in failed
        ],
    }
    if done:
        summary.update({key: done[-1][key] for key in FINAL_METRICS})
    return summary


class RunDirectory:
    """Owns one run's output folder.

    Files: `config.json`, `metrics.csv` (one row per round), `summary.json`, `student.pt`,
    `accuracy.png`, `reliability.png`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []

    def write_config(self, config: dict[str, Any]) -> None:
        """Store the resolved config (all keys, defaults included)."""
        self._write_json("config.json", config)

    def append_round(self, row: dict[str, Any]) -> None:
        """Add one round's metrics and rewrite `metrics.csv` (atomically, whole file)."""
        self.rows.append(row)
        buffer = io.StringIO()
        pd.DataFrame(self.rows).to_csv(buffer, index=False)
        atomic_write_bytes(self.path / "metrics.csv", buffer.getvalue().encode())

    def restore_rows(self, rows: list[dict[str, Any]]) -> None:
        """Continue from rows saved in a checkpoint (metrics.csv is rewritten from them)."""
        self.rows = []
        for row in rows:
            self.append_round(row)

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint (`student.pt`), or None if there is none."""
        import torch

        path = self.path / "student.pt"
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Store the final figures of the run."""
        self._write_json("summary.json", summary)

    def write_checkpoint(self, payload: dict[str, Any]) -> None:
        """Store a torch checkpoint (`student.pt`)."""
        import torch

        buffer = io.BytesIO()
        torch.save(payload, buffer)
        atomic_write_bytes(self.path / "student.pt", buffer.getvalue())

    def write_accuracy_plot(self, title: str = "feddistill") -> None:
        """Plot student test accuracy (and the ensemble's public accuracy) per round; `title`
        names the setting (see `run_title`)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(5, 3.5))
        FigureCanvasAgg(figure)
        draw_accuracy(figure.add_subplot(), self.rows, title)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        atomic_write_bytes(self.path / "accuracy.png", buffer.getvalue())

    def write_reliability_plot(
        self, panels: Mapping[str, tuple[np.ndarray, np.ndarray]]
    ) -> dict[str, Reliability]:
        """Write `reliability.png`: one reliability diagram per panel title, from (N, K)
        probabilities and (N,) labels; returns what each panel drew."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(3.6 * len(panels), 4.4), layout="constrained")
        FigureCanvasAgg(figure)
        grid = figure.add_gridspec(2, len(panels), height_ratios=(3, 1))
        drawn = {}
        for column, (name, (probs, labels)) in enumerate(panels.items()):
            top = figure.add_subplot(grid[0, column])
            bottom = figure.add_subplot(grid[1, column], sharex=top)
            drawn[name] = draw_reliability(top, bottom, probs, labels, name)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        atomic_write_bytes(self.path / "reliability.png", buffer.getvalue())
        return drawn

    def _write_json(self, name: str, value: dict[str, Any]) -> None:
        data = json.dumps(value, indent=2, sort_keys=True).encode()
        atomic_write_bytes(self.path / name, data)


def draw_accuracy(axes: Any, rows: list[dict[str, Any]], title: str) -> None:
    """Student test accuracy and (with public labels) ensemble public accuracy of the completed
    rounds, with integer round ticks and `title` above."""
    from matplotlib.ticker import MaxNLocator

    frame = pd.DataFrame(rows)
    done = frame[frame["status"] == "ok"]
    axes.plot(done["round"], done["student_accuracy"], marker="o", label="student (test)")
    if "ensemble_public_accuracy" in done:  # absent with an unlabelled public set
        axes.plot(
            done["round"],
            done["ensemble_public_accuracy"],
            marker="s",
            ls="--",
            label="ensemble teacher (public)",
        )
    rounds = frame["round"]
    axes.set(xlabel="round", ylabel="accuracy", ylim=(0, 1))
    axes.set_xlim(rounds.min() - 0.5, rounds.max() + 0.5)  # a single round still gets its tick
    axes.set_title(title, fontsize=9)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")


def draw_reliability(
    axes: Any, count_axes: Any, probs: np.ndarray, labels: np.ndarray, title: str
) -> Reliability:
    """A reliability diagram (Guo et al. 2017) of (N, K) probabilities against (N,) labels.

    `axes`: per non-empty bin a bar at the bin's accuracy, the gap to its mean confidence
    shaded, the diagonal of perfect calibration; the title carries the ECE. `count_axes`: the
    samples per bin (log scale). Returns the drawn `Reliability`.
    """
    diagram = reliability(probs, labels)
    width = np.diff(diagram.edges)  # (n_bins,)
    left, filled = diagram.edges[:-1], diagram.counts > 0
    axes.bar(
        left[filled],
        diagram.accuracy[filled],
        width[filled],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        lw=0.5,
        label="accuracy",
    )
    gap = diagram.confidence - diagram.accuracy
    axes.bar(
        left[filled],
        gap[filled],
        width[filled],
        bottom=diagram.accuracy[filled],
        align="edge",
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    axes.plot([0, 1], [0, 1], color="black", ls="--", lw=0.8)
    axes.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    axes.set_title(f"{title}\nECE {diagram.ece:.3f} ({len(labels)} samples)", fontsize=9)
    axes.legend(loc="upper left", fontsize=7)
    count_axes.bar(
        left,
        np.maximum(diagram.counts, 0.5),
        width,
        align="edge",
        color="gray",
        edgecolor="black",
        lw=0.5,
    )
    count_axes.set(yscale="log", xlabel="confidence (max probability)", ylabel="samples")
    return diagram


def run_title(config: Mapping[str, Any]) -> str:
    """The setting a run's plots belong to, e.g. 'fedmd · mnist1d · 10 clients, Dirichlet
    α=0.5 · SecAgg+ on'."""
    partition = {
        "dirichlet": f"Dirichlet α={config['dirichlet_alpha']:g}",
        "pathological": f"{config['classes_per_client']} classes/client",
        "iid": "IID",
    }[config["partitioner"]]
    loss = "" if config.get("student_loss", "kd") == "kd" else f" · {config['student_loss']}"
    secagg = "SecAgg+ on" if config["secagg"] else "SecAgg+ off"
    return (
        f"{config['method']} · {config['dataset']} · {config['num_clients']} clients, "
        f"{partition} · {secagg}{loss}"
    )
