"""The run directory: resolved config, per-round metrics, summary, checkpoint and plot.

Every file is written atomically (temporary file + rename), so a crash at any instant leaves
either the previous or the new complete file, never a truncated one.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from common.files import atomic_write_bytes

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
    `accuracy.png`.
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

    def write_accuracy_plot(self) -> None:
        """Plot student test accuracy (and the ensemble's public accuracy) per round."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        frame = pd.DataFrame(self.rows)
        done = frame[frame["status"] == "ok"]
        figure = Figure(figsize=(5, 3.5))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.plot(done["round"], done["student_accuracy"], marker="o", label="student (test)")
        axes.plot(
            done["round"],
            done["ensemble_public_accuracy"],
            marker="s",
            ls="--",
            label="ensemble teacher (public)",
        )
        axes.set(xlabel="round", ylabel="accuracy", ylim=(0, 1), title="feddistill")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        atomic_write_bytes(self.path / "accuracy.png", buffer.getvalue())

    def _write_json(self, name: str, value: dict[str, Any]) -> None:
        data = json.dumps(value, indent=2, sort_keys=True).encode()
        atomic_write_bytes(self.path / name, data)
