"""End to end: real Flower simulations through the `feddistill run` command.

Three runs share one module-scoped fixture and run side by side (each has its own SuperLink on
free ports): the smoke config, the smoke config on a user's own .npz of flat features, and the
smoke config with each data role from its own file (an x-only public set).
(Same seed, same results in separate processes: the kill -9/resume test in
test_fault_tolerance.py compares every metric and the final student's weights.) Every run's
environment carries a marker variable that the SuperLink, the simulation process and its Ray
workers inherit, so they can be told apart from other Flower processes on the machine. (Not
TMPDIR: Ray puts its sockets there, and a long pytest path exceeds the 107-byte limit of a Unix
socket path.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common.config import RunConfig
from common.data import load_splits
from common.files import save_npz
from common.metrics import accuracy, nll
from common.models import build_model
from common.secagg.encoding import choose_modulus_bits
from common.secagg.packing import packed_size
from common.training import predict_probs
from simulations.bench.plain_loop import run_plain
from simulations.cli import load_named_config, main

RUN_TIMEOUT_S = 900  # a safety net: each run takes about 40 s on an idle two-core machine
MARKER = "FEDDISTILL_TEST_RUN"
METRICS_COLUMNS = [
    "round",
    "student_accuracy",
    "student_nll",
    "student_ece",
    "ensemble_public_accuracy",
    "ensemble_public_ece",
    "ensemble_public_ece_t1",
    "student_ece_ts",
    "student_ts_temperature",
    "rows_kept",
    "rows_low_weight",
    "rows_ambiguous",
    "clients",
    "bytes_up",
    "bytes_down",
    "seconds",
]
SUMMARY_KEYS = ["student_accuracy", "student_nll", "student_ece", "rounds", "wall_seconds"]
RUN_FILES = [
    "config.json",
    "metrics.csv",
    "summary.json",
    "student.pt",
    "accuracy.png",
    "reliability.png",
]
FLOWER_PROCESSES = (
    "flower-superlink|flower-superexec|flwr-simulation|flwr-serverapp|flwr-clientapp|ray::"
)


@dataclass(frozen=True)
class Run:
    """One finished `feddistill run`: its exit code, console output and results folder."""

    returncode: int
    output: str
    out_dir: Path

    def metrics(self) -> pd.DataFrame:
        return pd.read_csv(self.out_dir / "metrics.csv")

    def summary(self) -> dict[str, object]:
        return json.loads((self.out_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Everything of this module: data cache, run outputs and logs."""
    return tmp_path_factory.mktemp("simulation")


def _env(root: Path) -> dict[str, str]:
    # One torch thread per process: the server's student would otherwise use one thread per
    # core, and with runs sharing two cores its OpenMP threads wait on each other (on a
    # busy two-core machine a 2-thread distillation took 16× the wall time of a 1-thread one).
    return {**os.environ, MARKER: str(root), "OMP_NUM_THREADS": "1"}


def _smoke_values(root: Path) -> dict[str, object]:
    return {**load_named_config("smoke"), "data_dir": str(root / "data")}


@pytest.fixture(scope="module")
def gaussian_npz(root) -> Path:
    """1500 samples of 20 features from a mixture of 3 well-separated Gaussians."""
    rng = np.random.default_rng(7)
    centers = rng.normal(scale=1.5, size=(3, 20))
    labels = np.repeat(np.arange(3), 500)
    features = centers[labels] + rng.normal(size=(1500, 20))
    order = rng.permutation(1500)
    path = root / "mixture.npz"
    np.savez(path, x=features[order].astype(np.float32), y=labels[order])
    return path


def _start(root: Path, name: str, overrides: list[str]) -> tuple[subprocess.Popen, Path]:
    out_dir = root / name
    args = ["run", "--config", "smoke", "--out", str(out_dir), "--set", f"data_dir={root / 'data'}"]
    for override in overrides:
        args += ["--set", override]
    with open(root / f"{name}.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "simulations.cli", *args],
            cwd=root,
            env=_env(root),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, out_dir


def _finish(
    root: Path, name: str, process: subprocess.Popen, out_dir: Path, deadline: float
) -> Run:
    try:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGTERM: KeyboardInterrupt lets the launcher stop its SuperLink.
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return Run(process.returncode, (root / f"{name}.log").read_text(), out_dir)


@pytest.fixture(scope="module")
def smoke_data(root) -> None:
    """Generate the smoke config's MNIST-1D once, so concurrent runs only read the cache."""
    load_splits(RunConfig.from_mapping(_smoke_values(root)))


@pytest.fixture(scope="module")
def role_files(root, smoke_data) -> dict[str, str]:
    """The smoke config's private, public and test pools as three files, the public one x-only:
    the run-config values of a federation whose roles each have their own source (with less
    training)."""
    splits = load_splits(RunConfig.from_mapping(_smoke_values(root)))
    paths = {role: root / "roles" / f"{role}.npz" for role in ("private", "public", "test")}
    save_npz(paths["private"], splits.private_x, splits.private_y)
    save_npz(paths["public"], splits.public_x)
    save_npz(paths["test"], splits.test_x, splits.test_y)
    return {
        "dataset": f"npz:{paths['private']}",
        "public_dataset": f"npz:{paths['public']}",
        "test_dataset": f"npz:{paths['test']}",
        # What is under test is the data path and the engines' agreement, not accuracy: less
        # compute keeps the three side-by-side runs from crowding two cores.
        "local_epochs": 2,
        "distill_epochs": 8,
    }


@pytest.fixture(scope="module")
def runs(root, gaussian_npz, smoke_data, role_files) -> dict[str, Run]:
    """The smoke config, on a user's .npz, and with its own role files, side by side."""
    planned = {
        "smoke": [],
        "npz": [f"dataset=npz:{gaussian_npz}", "teacher_models=mlp-s", "student_model=mlp-s"],
        "roles": [f"{key}={value}" for key, value in role_files.items()],
    }
    deadline = time.monotonic() + RUN_TIMEOUT_S
    started = {name: _start(root, name, overrides) for name, overrides in planned.items()}
    return {name: _finish(root, name, *started[name], deadline) for name in started}


@pytest.fixture(scope="module")
def smoke(runs) -> Run:
    run = runs["smoke"]
    assert run.returncode == 0, run.output[-4000:]
    return run


# --- the smoke run ---------------------------------------------------------------------------


def test_smoke_run_writes_every_file_and_says_where(smoke):
    for name in RUN_FILES:
        assert (smoke.out_dir / name).is_file(), name
    assert (smoke.out_dir / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert smoke.output.rstrip().endswith(f"results: {smoke.out_dir}")
    assert not list(smoke.out_dir.glob(".*.tmp"))


def test_smoke_config_json_is_the_resolved_config(smoke, root):
    # The launcher adds the SecAgg+ roster it made for the run's nodes (kept for a resume).
    roster = smoke.out_dir / "secagg-identities" / "roster.json"
    expected = RunConfig.from_mapping(
        {**_smoke_values(root), "out_dir": str(smoke.out_dir), "secagg_roster": str(roster)}
    )

    written = json.loads((smoke.out_dir / "config.json").read_text())

    assert written == expected.to_dict()


def test_smoke_metrics_have_one_ok_row_per_round_with_all_columns(smoke):
    metrics = smoke.metrics()

    assert set(METRICS_COLUMNS) <= set(metrics.columns)
    assert metrics["round"].tolist() == [1, 2]
    assert metrics["status"].tolist() == ["ok", "ok"]
    assert metrics["clients"].tolist() == [3, 3]
    assert metrics["clients_failed"].tolist() == [0, 0]
    assert (metrics["bytes_up"] > 0).all() and (metrics["bytes_down"] > 0).all()
    assert (metrics["seconds"] > 0).all()
    for column in ("student_accuracy", "student_ece", "ensemble_public_accuracy"):
        assert metrics[column].between(0, 1).all(), column
    assert (metrics["student_nll"] > 0).all()


def test_smoke_bytes_up_carry_at_least_the_three_soft_label_matrices(smoke, root):
    # Each client's report holds a (Q, K) matrix and its weight, Q = the whole public set, masked
    # and packed at m bits per value (secagg on in the smoke config: m = 27 for 3 clients).
    config = RunConfig.from_mapping(_smoke_values(root))
    splits = load_splits(config)
    modulus_bits = choose_modulus_bits(3, 1.0, config.label_bits)
    values = len(splits.public_x) * splits.num_classes + 1
    soft_labels_bytes = 3 * packed_size(values, modulus_bits)

    bytes_up = smoke.metrics()["bytes_up"]

    assert (bytes_up >= soft_labels_bytes).all()


def test_smoke_summary_reports_the_last_round(smoke):
    summary = smoke.summary()
    last = smoke.metrics().iloc[-1]

    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["rounds"] == 2
    assert summary["wall_seconds"] > 0
    for key in ("student_accuracy", "student_nll", "student_ece"):
        assert summary[key] == pytest.approx(last[key], rel=1e-12), key


def test_smoke_student_clearly_beats_chance(smoke):
    # K = 10, so chance is 0.1; the smoke config gives about 0.65 (ensemble ≈ 0.8 on public).
    metrics = smoke.metrics()

    assert smoke.summary()["student_accuracy"] >= 0.5
    assert metrics["ensemble_public_accuracy"].iloc[-1] >= 0.6


def test_smoke_checkpoint_reproduces_the_reported_test_metrics(smoke, root):
    # Prepare: rebuild the student from student.pt, on the same test set.
    config = RunConfig.from_mapping(_smoke_values(root))
    splits = load_splits(config)
    checkpoint = torch.load(smoke.out_dir / "student.pt", weights_only=False)
    model = build_model(checkpoint["student_model"], splits.input_shape, splits.num_classes)
    model.load_state_dict(checkpoint["model"])

    # Execute
    probs = predict_probs(model, splits.test_x, 1.0, torch.device("cpu"))

    # Assert
    summary = smoke.summary()
    assert checkpoint["round"] == 2
    assert accuracy(probs, splits.test_y) == pytest.approx(
        summary["student_accuracy"], abs=1.5 / len(splits.test_y)
    )
    assert nll(probs, splits.test_y) == pytest.approx(summary["student_nll"], abs=1e-4)


# --- bring your own data ---------------------------------------------------------------------


def test_user_npz_of_flat_features_runs_with_mlp_models(runs, gaussian_npz):
    # Prepare
    run = runs["npz"]
    assert run.returncode == 0, run.output[-4000:]

    # Execute
    config = json.loads((run.out_dir / "config.json").read_text())
    metrics = run.metrics()

    # Assert: 3 classes (chance 1/3) that a small MLP separates almost perfectly.
    assert config["dataset"] == f"npz:{gaussian_npz}"
    assert (config["teacher_models"], config["student_model"]) == ("mlp-s", "mlp-s")
    assert metrics["status"].tolist() == ["ok", "ok"]
    assert run.summary()["student_accuracy"] >= 0.9
    for name in RUN_FILES:
        assert (run.out_dir / name).is_file(), name


def test_an_unlabelled_public_set_through_flower_equals_the_in_process_engine(
    runs, root, role_files
):
    # Prepare
    run = runs["roles"]
    assert run.returncode == 0, run.output[-4000:]
    config = RunConfig.from_mapping({**_smoke_values(root), **role_files})

    # Execute: the same federation without Flower.
    expected = pd.DataFrame(run_plain(config, load_splits(config)))

    # Assert: the same students and bytes; no column that would need public labels.
    metrics = run.metrics()
    assert metrics["status"].tolist() == ["ok", "ok"]
    assert not [column for column in metrics.columns if column.startswith("ensemble_public")]
    for column in ("student_accuracy", "student_nll", "student_ece"):
        np.testing.assert_allclose(metrics[column], expected[column], atol=1e-6, err_msg=column)
    for column in ("bytes_up", "bytes_down"):
        assert metrics[column].tolist() == expected[column].tolist(), column
    assert "unlabelled" in (run.out_dir.parent / "roles.log").read_text()


# --- bad configurations stop before any work -------------------------------------------------


def test_bad_set_exits_non_zero_with_the_message_before_any_training(root):
    # Execute: the console command, as a user runs it.
    out_dir = root / "bad-temperature"
    command = ["run", "--config", "smoke", "--out", str(out_dir), "--set", "temperature=0"]
    result = subprocess.run(
        [sys.executable, "-m", "simulations.cli", *command],
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Assert
    assert result.returncode == 2
    assert "feddistill: error: temperature must be > 0, got 0.0" in result.stderr
    assert "preparing data" not in result.stdout
    assert not out_dir.exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rounds=abc"], "rounds must be an integer, got 'abc'"),
        (["temprature=2"], "unknown config key(s) ['temprature']"),
        (["temperature"], "--set expects key=value, got 'temperature'"),
        (["student_model=vit"], "unknown model 'vit'"),
    ],
)
def test_bad_set_is_reported_by_main_without_starting_anything(root, capsys, overrides, message):
    # Prepare
    out_dir = root / "bad-set"
    argv = ["run", "--config", "smoke", "--out", str(out_dir)]
    for override in overrides:
        argv += ["--set", override]

    # Execute
    returncode = main(argv)

    # Assert
    captured = capsys.readouterr()
    assert returncode == 2
    assert f"feddistill: error: {message}" in captured.err
    assert captured.out == ""
    assert not out_dir.exists()


def test_empty_public_pool_stops_the_command_before_the_simulation_starts(root, smoke_data, capsys):
    # Prepare: public_fraction passes config validation, but 1e-5 of 6400 samples rounds to 0.
    out_dir = root / "no-public"
    argv = ["run", "--config", "smoke", "--out", str(out_dir), "--set", f"data_dir={root / 'data'}"]

    # Execute
    returncode = main([*argv, "--set", "public_fraction=0.00001"])

    # Assert: the data split refuses, before any SuperLink or training.
    captured = capsys.readouterr()
    assert returncode == 2
    assert "8000 samples cannot be split into test (1600), public (0)" in captured.err
    assert "every pool must be non-empty" in captured.err
    assert not (out_dir / "metrics.csv").exists()
    assert not (out_dir / "superlink.log").exists()


@pytest.mark.parametrize("role", ["dataset", "public_dataset", "test_dataset"])
def test_a_missing_role_file_stops_the_command_before_the_simulation_starts(root, capsys, role):
    out_dir = root / f"missing-{role}"
    argv = ["run", "--config", "smoke", "--out", str(out_dir), "--set", f"data_dir={root / 'data'}"]

    returncode = main([*argv, "--set", f"{role}=npz:/no/such/file.npz"])

    captured = capsys.readouterr()
    assert returncode == 2
    assert (
        f"feddistill: error: {role} file '/no/such/file.npz' (from 'npz:/no/such/file.npz') "
        "does not exist"
    ) in captured.err
    assert not (out_dir / "metrics.csv").exists()
    assert not (out_dir / "superlink.log").exists()


def test_unknown_named_config_lists_the_named_configs(capsys):
    returncode = main(["run", "--config", "no-such-config"])

    assert returncode == 2
    assert "config 'no-such-config' not found; named configs: " in capsys.readouterr().err


# --- nothing is left behind ------------------------------------------------------------------


def _our_flower_processes(root: Path) -> list[str]:
    """Live (non-zombie) Flower/Ray processes started by this module's runs."""
    found = subprocess.run(
        ["pgrep", "-f", FLOWER_PROCESSES], capture_output=True, text=True, check=False
    )
    ours = []
    for pid in found.stdout.split():
        proc = Path("/proc") / pid
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state != "Z" and f"{MARKER}={root}".encode() in environ:
            ours.append(f"{pid} {cmdline[:120]}")
    return ours


def test_no_flower_process_is_left_running(runs, root):
    # Prepare: the runs have returned; SIGKILLed process groups may take a moment to vanish.
    assert all(run.returncode == 0 for run in runs.values())
    deadline = time.monotonic() + 30

    # Execute
    left = _our_flower_processes(root)
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = _our_flower_processes(root)

    # Assert
    assert left == []
