"""Tests for server.results.RunDirectory: the files of a run and their crash-safe writes."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from server.results import RunDirectory


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
