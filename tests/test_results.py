"""Tests for server.results.RunDirectory: the files of a run and their crash-safe writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from common.config import RunConfig
from server.results import RunDirectory, draw_accuracy, draw_reliability, run_title


class SimulatedCrash(RuntimeError):
    """Raised in place of the rename that would publish a new file."""


def _crash_on_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(src: object, dst: object) -> None:
        raise SimulatedCrash(f"crash while replacing {dst}")

    monkeypatch.setattr(os, "replace", crash)


def _round_row(round_number: int, accuracy: float) -> dict[str, object]:
    return {
        "round": round_number,
        "status": "ok",
        "student_accuracy": accuracy,
        "ensemble_public_accuracy": accuracy + 0.1,
        "seconds": 1.5,
    }


def _leftover_temp_files(directory: RunDirectory) -> list[str]:
    return sorted(p.name for p in directory.path.iterdir() if p.name.endswith(".tmp"))


def test_run_directory_writes_config_metrics_and_summary(tmp_path):
    # Prepare
    results = RunDirectory(tmp_path / "run")

    # Execute
    results.write_config({"seed": 0, "rounds": 2, "dataset": "mnist1d"})
    results.append_round(_round_row(1, 0.5))
    results.append_round(_round_row(2, 0.625))
    results.write_summary({"student_accuracy": 0.625, "rounds": 2})

    # Assert
    assert json.loads((results.path / "config.json").read_text()) == {
        "dataset": "mnist1d",
        "rounds": 2,
        "seed": 0,
    }
    metrics = pd.read_csv(results.path / "metrics.csv")
    assert list(metrics.columns) == [
        "round",
        "status",
        "student_accuracy",
        "ensemble_public_accuracy",
        "seconds",
    ]
    assert metrics["round"].tolist() == [1, 2]
    assert metrics["student_accuracy"].tolist() == [0.5, 0.625]
    assert json.loads((results.path / "summary.json").read_text()) == {
        "rounds": 2,
        "student_accuracy": 0.625,
    }
    assert _leftover_temp_files(results) == []


def test_rows_with_new_columns_extend_the_csv(tmp_path):
    # A failed round has fewer columns than a completed one; both must land in one table.
    results = RunDirectory(tmp_path / "run")

    results.append_round({"round": 1, "status": "failed: timeout", "seconds": 3.0})
    results.append_round(_round_row(2, 0.5))

    metrics = pd.read_csv(results.path / "metrics.csv")
    assert metrics["status"].tolist() == ["failed: timeout", "ok"]
    assert pd.isna(metrics.loc[0, "student_accuracy"])
    assert metrics.loc[1, "student_accuracy"] == 0.5


@pytest.mark.parametrize("name", ["config.json", "summary.json"])
def test_crash_while_rewriting_json_keeps_the_previous_file(tmp_path, monkeypatch, name):
    # Prepare: a complete first version.
    results = RunDirectory(tmp_path / "run")
    write = results.write_config if name == "config.json" else results.write_summary
    write({"version": 1})
    before = (results.path / name).read_bytes()

    # Execute: the rename of the second version fails, as if the process died there.
    _crash_on_replace(monkeypatch)
    with pytest.raises(SimulatedCrash):
        write({"version": 2, "padding": "x" * 10_000})

    # Assert
    assert (results.path / name).read_bytes() == before
    assert json.loads(before) == {"version": 1}
    assert _leftover_temp_files(results) == []


def test_crash_while_appending_a_round_keeps_the_previous_metrics(tmp_path, monkeypatch):
    # Prepare
    results = RunDirectory(tmp_path / "run")
    results.append_round(_round_row(1, 0.5))
    results.append_round(_round_row(2, 0.6))

    # Execute
    _crash_on_replace(monkeypatch)
    with pytest.raises(SimulatedCrash):
        results.append_round(_round_row(3, 0.7))

    # Assert: two complete rows, no half-written third one.
    metrics = pd.read_csv(results.path / "metrics.csv")
    assert metrics["round"].tolist() == [1, 2]
    assert metrics["student_accuracy"].tolist() == [0.5, 0.6]
    assert _leftover_temp_files(results) == []


def test_crash_while_writing_the_first_file_leaves_nothing(tmp_path, monkeypatch):
    results = RunDirectory(tmp_path / "run")
    _crash_on_replace(monkeypatch)

    with pytest.raises(SimulatedCrash):
        results.write_summary({"rounds": 1})

    assert sorted(p.name for p in results.path.iterdir()) == []


def test_checkpoint_and_plot_are_written(tmp_path):
    # Prepare
    results = RunDirectory(tmp_path / "run")
    results.append_round({"round": 1, "status": "failed: timeout", "seconds": 3.0})
    results.append_round(_round_row(2, 0.5))
    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}

    # Execute
    results.write_checkpoint({"model": weights, "round": 2})
    results.write_accuracy_plot()

    # Assert
    checkpoint = torch.load(results.path / "student.pt", weights_only=True)
    assert checkpoint["round"] == 2
    torch.testing.assert_close(checkpoint["model"]["w"], weights["w"])
    assert (results.path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _leftover_temp_files(results) == []


def test_crash_while_rewriting_the_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    results = RunDirectory(tmp_path / "run")
    results.write_checkpoint({"round": 1})

    _crash_on_replace(monkeypatch)
    with pytest.raises(SimulatedCrash):
        results.write_checkpoint({"round": 2})

    assert torch.load(results.path / "student.pt", weights_only=True) == {"round": 1}
    assert _leftover_temp_files(results) == []


# --- plots: what they draw -------------------------------------------------------------------


def _axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure()
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(2, 1, 1), figure.add_subplot(2, 1, 2)


def test_reliability_diagram_draws_the_hand_computed_bins_and_ece():
    # Prepare: bin b of 15 covers (b/15, (b+1)/15].
    #   (0.95, 0.05) label 0 → conf 0.95 ✓ bin 14;  (0.90, 0.10) label 1 → 0.90 ✗ bin 13
    #   (0.30, 0.70) label 1 → 0.70 ✓ bin 10;      (0.68, 0.32) label 1 → 0.68 ✗ bin 10
    # Bars at the bins' accuracy (10 → ½, 13 → 0, 14 → 1); the gap bars reach from the
    # accuracy up to the mean confidence (0.69, 0.90, 0.95); ECE = (2·0.19 + 0.90 + 0.05)/4.
    probs = np.array([[0.95, 0.05], [0.90, 0.10], [0.30, 0.70], [0.68, 0.32]])
    labels = np.array([0, 1, 1, 1])
    figure, axes, counts_axes = _axes()

    # Execute
    diagram = draw_reliability(axes, counts_axes, probs, labels, "student")
    figure.canvas.draw()

    # Assert
    accuracy_bars, gap_bars = axes.containers
    assert [bar.get_x() for bar in accuracy_bars] == pytest.approx([10 / 15, 13 / 15, 14 / 15])
    assert [bar.get_height() for bar in accuracy_bars] == pytest.approx([0.5, 0.0, 1.0])
    assert [bar.get_y() + bar.get_height() for bar in gap_bars] == pytest.approx([0.69, 0.90, 0.95])
    assert diagram.ece == pytest.approx((0.90 + 2 * 0.19 + 0.05) / 4, abs=1e-12)
    assert axes.get_title() == f"student\nECE {diagram.ece:.3f} (4 samples)"
    (count_bars,) = counts_axes.containers
    heights = [bar.get_height() for bar in count_bars]
    assert heights[10] == 2 and heights[13] == 1 and heights[14] == 1
    assert sum(h for h in heights if h >= 1) == 4  # empty bins drawn at 0.5 on the log scale


def test_reliability_png_has_one_panel_per_entry(tmp_path):
    results = RunDirectory(tmp_path / "run")
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])

    drawn = results.write_reliability_plot(
        {"student": (probs, np.array([0, 0])), "ensemble": (probs, np.array([0, 1]))}
    )

    assert list(drawn) == ["student", "ensemble"]
    assert drawn["ensemble"].ece == pytest.approx((0.1 + 0.2) / 2)
    assert (results.path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("rounds", [[1], [1, 2, 3], list(range(1, 31))], ids=["1", "3", "30"])
def test_accuracy_plot_has_integer_round_ticks_and_the_setting_as_title(rounds):
    rows = [_round_row(r, 0.5 + 0.01 * r) for r in rounds]
    figure, axes, _ = _axes()

    draw_accuracy(axes, rows, "fedmd · mnist1d")
    figure.canvas.draw()

    low, high = axes.get_xlim()
    ticks = [t for t in axes.get_xticks() if low <= t <= high]
    assert ticks and all(float(t).is_integer() for t in ticks)
    if len(rounds) <= 3:
        assert ticks == rounds
    assert axes.get_title() == "fedmd · mnist1d"


@pytest.mark.parametrize(
    ("changes", "title"),
    [
        ({}, "fedmd · mnist1d · 10 clients, Dirichlet α=0.5 · SecAgg+ on"),
        (
            {"method": "dsfl", "partitioner": "iid", "secagg": False, "num_clients": 4},
            "dsfl · mnist1d · 4 clients, IID · SecAgg+ off",
        ),
        (
            {"partitioner": "pathological", "student_loss": "kd+rkd"},
            "fedmd · mnist1d · 10 clients, 2 classes/client · SecAgg+ on · kd+rkd",
        ),
    ],
    ids=["defaults", "iid-plain", "pathological-rkd"],
)
def test_run_title_names_the_setting(changes, title):
    assert run_title(RunConfig.from_mapping(changes).to_dict()) == title
