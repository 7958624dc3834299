"""Bad input fails fast and loudly: data checks, impossible settings, exit codes.

Every case here is refused before a SuperLink, a ServerApp or a client starts, so none of these
tests starts a Flower process (the CLI tests replace `simulate` with a function that fails).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest

from common.config import RunConfig
from common.data import load_splits
from common.data_sources import load_npz
from common.feasibility import check_feasible, describe_aggregation, describe_planned_aggregation
from common.logs import error_summary
from server.results import summarise_rounds
from simulations import cli
from simulations.cli import run_outcome

REPO = Path(__file__).resolve().parents[1]
N_SAMPLES, N_CLASSES = 200, 4  # pools: 40 test, 32 public, 128 private
# The order in which split_pools cuts test (first 40), public (next 32) and private (the rest).
SPLIT_ORDER = np.random.default_rng([0, 0]).permutation(N_SAMPLES)


def _dataset(**changes: np.ndarray) -> dict[str, np.ndarray]:
    """A small valid dataset, x (200, 8) float64, y (200,) int64 with 4 classes, changed."""
    x = np.random.default_rng(0).normal(size=(N_SAMPLES, 8))
    y = np.arange(N_SAMPLES) % N_CLASSES
    return {"x": x, "y": y, **changes}


def _npz(tmp_path: Path, name: str = "data.npz", **changes: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **_dataset(**changes))
    return path


def _with_value(index: tuple[int, int], value: float) -> np.ndarray:
    x = _dataset()["x"]
    x[index] = value
    return x


def _with_label(index: int, label: int) -> np.ndarray:
    y = _dataset()["y"]
    y[index] = label
    return y


def _config(path: Path, tmp_path: Path, **values: object) -> RunConfig:
    return RunConfig.from_mapping({"dataset": f"npz:{path}", "data_dir": str(tmp_path), **values})


# --- data: values, labels, shapes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"x": _with_value((17, 3), np.nan)}, "x[17, 3] is nan; every input must be finite"),
        ({"x": _with_value((5, 0), np.inf)}, "x[5, 0] is inf; every input must be finite"),
        ({"x": _with_value((199, 7), -np.inf)}, "x[199, 7] is -inf; every input must be finite"),
        ({"x": np.zeros(N_SAMPLES)}, "x must be (N, ...) with N >= 1 samples and at least"),
        ({"y": _with_label(9, -1)}, "y[9] is -1; labels must be integers 0..K-1"),
        ({"y": np.arange(N_SAMPLES - 1) % 4}, "x has 200 samples but y has 199"),
        ({"y": np.zeros((N_SAMPLES, 1), dtype=int)}, "y must be a 1-D integer array, got int64"),
        ({"y": np.zeros(N_SAMPLES)}, "y must be a 1-D integer array, got float64 (200,)"),
        ({"x": np.array(["a"] * N_SAMPLES)}, "x must hold numbers, got dtype <U1"),
    ],
    ids=[
        "nan",
        "inf",
        "minus-inf",
        "1-d-x",
        "negative-label",
        "lengths",
        "2-d-y",
        "float-y",
        "str",
    ],
)
def test_bad_arrays_are_named_with_the_file_and_the_first_bad_index(tmp_path, changes, message):
    # Prepare
    path = _npz(tmp_path, **changes)

    # Execute
    with pytest.raises(ValueError) as error:
        load_splits(_config(path, tmp_path))

    # Assert
    assert str(error.value).startswith(f"{path}: {message}")


def test_nan_message_counts_every_non_finite_value(tmp_path):
    x = _with_value((17, 3), np.nan)
    x[20, 1] = np.inf
    path = _npz(tmp_path, x=x)

    with pytest.raises(ValueError) as error:
        load_npz(path)

    assert str(error.value) == (
        f"{path}: x[17, 3] is nan; every input must be finite (2 value(s) are NaN or ±Inf)"
    )


def test_values_beyond_float32_are_refused_as_infinite(tmp_path):
    path = _npz(tmp_path, x=_with_value((3, 2), 1e39))

    with pytest.raises(ValueError, match=r"x\[3, 2\] is inf; every input must be finite"):
        load_npz(path)


def test_a_class_without_any_sample_is_named(tmp_path):
    # Prepare: labels 0, 1, 3 — class 2 is missing, so K = 4 would leave a class untrained.
    y = _dataset()["y"]
    y[y == 2] = 3
    path = _npz(tmp_path, y=y)

    # Execute
    with pytest.raises(ValueError) as error:
        load_splits(_config(path, tmp_path))

    # Assert
    assert str(error.value) == (
        f"{path}: labels must be 0..K-1, got classes [0, 1, 3]; every class needs a sample, "
        "and classes [2] have none"
    )


@pytest.mark.parametrize(
    ("position", "pool", "size"), [(-1, "public", 32), (40, "test", 40)], ids=["public", "test"]
)
def test_a_class_missing_from_the_public_or_test_split_is_named(tmp_path, position, pool, size):
    # Prepare: class 4 has one sample, placed where the seeded split puts it (private / public).
    path = _npz(tmp_path, y=_with_label(int(SPLIT_ORDER[position]), 4))

    # Execute
    with pytest.raises(ValueError) as error:
        load_splits(_config(path, tmp_path))

    # Assert
    assert str(error.value) == (
        f"{path}: the {pool} split ({size} samples) has no sample of class(es) [4] of K=5; "
        "every class needs at least one public and one test sample: add samples of those "
        "classes or raise public_fraction / test_fraction"
    )


# --- data: files that are not npz archives ---------------------------------------------------


def _write_text(path: Path) -> None:
    path.write_text("x,y\n0.1,1\n")


def _write_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"x": [[0.0]], "y": [0]}))


def _write_npy(path: Path) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((4, 2)))


def _write_object_array(path: Path) -> None:
    np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))


def _write_truncated(path: Path) -> None:
    np.savez(path, **_dataset())
    path.write_bytes(path.read_bytes()[:1000])


def _write_empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (_write_text, "neither a zip of .npy arrays nor an .npy file"),
        (_write_pickle, "neither a zip of .npy arrays nor an .npy file"),
        (_write_npy, "it is a single .npy array"),
        (_write_object_array, "an array holds Python objects; only plain numeric arrays are read"),
        (_write_truncated, "BadZipFile: File is not a zip file"),
        (_write_empty, "EOFError: No data left in file"),
    ],
    ids=["text", "pickle", "npy", "object-array", "truncated", "empty"],
)
def test_files_that_are_not_npz_archives_are_named(tmp_path, write, reason):
    # Prepare
    path = tmp_path / "data.npz"
    write(path)

    # Execute
    with pytest.raises(ValueError) as error:
        load_npz(path)

    # Assert: numpy's advice to unpickle untrusted data never reaches the user.
    assert str(error.value) == (
        f"{str(path)!r} is not a valid .npz archive ({reason}); expected arrays x and y"
    )


def test_a_corrupt_generated_dataset_cache_names_the_cache_file(tmp_path):
    # Prepare: the MNIST-1D cache file exists but is not an archive.
    config = RunConfig.from_mapping({"num_samples": 600, "seed": 7, "data_dir": str(tmp_path)})
    cache = tmp_path / "mnist1d-n600-seed7.npz"
    cache.write_text("interrupted download")

    # Execute / Assert
    with pytest.raises(ValueError, match=r"mnist1d-n600-seed7.npz' is not a valid .npz archive"):
        load_splits(config)


def test_a_parquet_dataset_with_a_missing_class_names_the_folder(tmp_path, monkeypatch):
    # Prepare: 8×8 grayscale images labelled 0 and 2 only.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "images"
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8), dtype=np.uint8)
    datasets.Dataset.from_dict(
        {"image": list(images), "label": [0, 2] * 20},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    ).to_parquet(str(folder / "train.parquet"))
    config = RunConfig.from_mapping({"dataset": f"parquet:{folder}", "data_dir": str(tmp_path)})

    # Execute
    with pytest.raises(ValueError) as error:
        load_splits(config)

    # Assert
    assert str(error.value) == (
        f"{folder}: labels must be 0..K-1, got classes [0, 2]; every class needs a sample, "
        "and classes [1] have none"
    )


# --- settings impossible for the cohort the config implies -----------------------------------

COHORT_10 = "the cohort of 10 that num_clients=10, fraction=1.0 and min_clients=2 imply"
IMPOSSIBLE = [
    (
        ["secagg_threshold=2"],
        f"SecAgg+ is impossible for {COHORT_10}: threshold must satisfy (k+1)/2 < t <= k+1 = 10 "
        "for k=9 neighbours (each node holds a share of its own secrets), got t=2",
    ),
    (
        ["secagg_threshold=11"],
        f"SecAgg+ is impossible for {COHORT_10}: threshold must satisfy (k+1)/2 < t <= k+1 = 10 "
        "for k=9 neighbours (each node holds a share of its own secrets), got t=11",
    ),
    (
        ["num_clients=9", "secagg_neighbours=3"],
        "SecAgg+ is impossible for the cohort of 9 that num_clients=9, fraction=1.0 and "
        "min_clients=2 imply: no 3-regular graph exists on 9 nodes (n·k is odd); use an even "
        "number of neighbours",
    ),
    (
        ["secagg_min_cohort=11"],
        f"SecAgg+ is impossible for {COHORT_10}: cohort of 10 clients is below min_cohort=11",
    ),
    (
        ["fraction=0.2"],
        "SecAgg+ is impossible for the cohort of 2 that num_clients=10, fraction=0.2 and "
        "min_clients=2 imply: cohort of 2 clients is below min_cohort=3",
    ),
    (
        ["min_clients=11"],
        "min_clients=11 exceeds num_clients=10: no round can sample a cohort; allowed: "
        "1 <= min_clients <= 10",
    ),
    (
        ["dp_noise_multiplier=1.0", "dp_min_clients=11"],
        f"dp_min_clients=11 exceeds {COHORT_10}: the noise shares of 10 clients could never add "
        "up to the configured σ²; allowed: 0 (= cohort) to 10",
    ),
    (
        ["method=selective", "min_row_weight=10.5"],
        f"min_row_weight=10.5 exceeds the largest total weight a row can get from {COHORT_10} "
        "(10): method=selective would drop every row; allowed: 0 to 10",
    ),
    (
        ["public_query_size=33"],
        "public_query_size=33 exceeds the 32 public samples; allowed: 0 (= all) to 32",
    ),
    (
        ["ensemble=weighted", "secagg_weight_bound=1e12", "label_bits=24"],
        f"SecAgg+ is impossible for {COHORT_10}: a sum of 10 values with |x| <= 1000000000000.0 "
        "at frac_bits=24 reaches 167772160000000000000 in magnitude and needs 69 bits, more than "
        "the 64-bit word; lower frac_bits (label_bits) or value_bound (secagg_weight_bound)",
    ),
]
IMPOSSIBLE_IDS = [
    "threshold-low",
    "threshold-high",
    "odd-graph",
    "secagg-min-cohort",
    "small-fraction",
    "min-clients",
    "dp-min-clients",
    "min-row-weight",
    "query-size",
    "encoding-width",
]


def _refuse_to_simulate(*args: object, **kwargs: object) -> None:
    raise AssertionError("simulate() must not be reached: the run should be refused before")


@pytest.mark.parametrize(("settings", "message"), IMPOSSIBLE, ids=IMPOSSIBLE_IDS)
def test_impossible_settings_are_refused_before_any_process_starts(
    tmp_path, monkeypatch, capsys, settings, message
):
    # Prepare
    monkeypatch.setattr("simulations.launcher.simulate", _refuse_to_simulate)
    path = _npz(tmp_path)
    sets = [f"dataset=npz:{path}", f"data_dir={tmp_path}", *settings]
    out = tmp_path / "run"

    # Execute
    exit_code = cli.main(["run", "--out", str(out), *[f"--set={item}" for item in sets]])

    # Assert
    assert exit_code == 2
    assert capsys.readouterr().err == f"feddistill: error: {message}\n"
    assert not out.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"x": _with_value((17, 3), np.nan)}, "x[17, 3] is nan; every input must be finite"),
        ({"x": _with_value((5, 0), np.inf)}, "x[5, 0] is inf; every input must be finite"),
    ],
    ids=["nan", "inf"],
)
def test_cli_refuses_bad_data_with_exit_code_2(tmp_path, monkeypatch, capsys, changes, message):
    monkeypatch.setattr("simulations.launcher.simulate", _refuse_to_simulate)
    path = _npz(tmp_path, **changes)
    out = tmp_path / "run"

    exit_code = cli.main(["run", "--out", str(out), "--set", f"dataset=npz:{path}"])

    assert exit_code == 2
    assert capsys.readouterr().err.startswith(f"feddistill: error: {path}: {message}")
    assert not out.exists()


def test_feddistill_command_refuses_an_impossible_threshold_fast(tmp_path):
    # Prepare
    path = _npz(tmp_path)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "simulations.cli", "run", "--out", str(out)]
    command += ["--set", f"dataset=npz:{path}", "--set", "secagg_threshold=2"]

    # Execute
    start = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start

    # Assert: refused by the command itself, in seconds, with nothing started or written.
    assert done.returncode == 2
    assert done.stderr.endswith(
        f"feddistill: error: SecAgg+ is impossible for {COHORT_10}: "
        "threshold must satisfy (k+1)/2 < t <= k+1 = 10 for k=9 "
        "neighbours (each node holds a share of its own secrets), "
        "got t=2\n"
    )
    assert seconds < 60
    assert not out.exists()


@pytest.mark.parametrize("name", ["default", "smoke"])
def test_named_configs_are_feasible(name):
    config = RunConfig.from_mapping(cli.load_named_config(name))

    check_feasible(config, num_public=3200)


# --- what the logs say about aggregation -----------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "SecAgg+ k=9 t=6 m=21 over a cohort of 10, DP off"),
        (
            {"secagg": False},
            "plain aggregation (soft labels in the clear) over a cohort of 10, DP off",
        ),
        (
            {"dp_noise_multiplier": 1.0, "dp_min_clients": 8},
            "SecAgg+ k=9 t=6 m=29 over a cohort of 10, DP on (z=1.0, δ=1e-05, n_min=8)",
        ),
        ({"secagg_threshold": 2}, "SecAgg+ impossible for a cohort of 10 (threshold must"),
    ],
    ids=["secagg", "plain", "dp", "impossible"],
)
def test_aggregation_is_described_with_k_t_m_cohort_and_dp(values, expected):
    described = describe_aggregation(RunConfig.from_mapping(values), cohort=10, num_query=3200)

    assert described.startswith(expected)


def test_planned_aggregation_names_the_cohort_num_clients_implies():
    config = RunConfig.from_mapping({"fraction": 0.5})

    assert describe_planned_aggregation(config, num_public=3200) == (
        "SecAgg+ k=4 t=3 m=20 over a cohort of 5, DP off (when num_clients=10 nodes are connected)"
    )


# --- summary.json and the exit code ----------------------------------------------------------


def _ok_row(round_number: int, accuracy: float) -> dict[str, object]:
    return {
        "round": round_number,
        "status": "ok",
        "student_accuracy": accuracy,
        "student_nll": 0.5,
        "student_ece": 0.02,
    }


def _failed_row(round_number: int, reason: str) -> dict[str, object]:
    return {"round": round_number, "status": f"failed: {reason}", "seconds": 1.0}


def _summary(rows: list[dict[str, object]]) -> dict[str, object]:
    return {**summarise_rounds(rows), "wall_seconds": 31.2, "out_dir": "/runs/x"}


def test_summary_counts_failed_rounds_and_keeps_their_reasons():
    rows = [_ok_row(1, 0.5), _failed_row(2, "only 1 nodes are connected; min_clients=2")]
    rows.append(_ok_row(3, 0.7))

    assert summarise_rounds(rows) == {
        "rounds": 3,
        "rounds_completed": 2,
        "rounds_failed": 1,
        "failed_rounds": [{"round": 2, "reason": "only 1 nodes are connected; min_clients=2"}],
        "student_accuracy": 0.7,
        "student_nll": 0.5,
        "student_ece": 0.02,
    }


def test_a_run_without_failures_exits_0_and_ends_with_the_results():
    exit_code, lines = run_outcome(_summary([_ok_row(1, 0.5), _ok_row(2, 0.75)]))

    assert exit_code == 0
    assert lines == [
        "feddistill: done in 31s — student accuracy 0.7500, ECE 0.0200",
        "results: /runs/x",
    ]


def test_a_run_with_some_failed_rounds_exits_0_and_says_how_many_in_the_last_line():
    rows = [_failed_row(1, "round 1: secure aggregation aborted: 0 nodes left"), _ok_row(2, 0.6)]

    exit_code, lines = run_outcome(_summary(rows))

    assert exit_code == 0
    assert lines == [
        "feddistill: done in 31s — student accuracy 0.6000, ECE 0.0200",
        "results: /runs/x (1 of 2 rounds failed: status column of metrics.csv)",
    ]


def test_a_run_in_which_no_round_completed_exits_1_with_each_reason():
    rows = [
        _failed_row(1, "round 1: secure aggregation aborted: 0 nodes left after masked-input"),
        _failed_row(2, "only 1 nodes are connected; min_clients=2"),
    ]

    exit_code, lines = run_outcome(_summary(rows))

    assert exit_code == 1
    assert lines == [
        "feddistill: no round completed; why each round failed:",
        "  round 1: round 1: secure aggregation aborted: 0 nodes left after masked-input",
        "  round 2: only 1 nodes are connected; min_clients=2",
        "feddistill: error: 0 of 2 rounds completed; results: /runs/x",
    ]


def test_cli_exit_code_follows_the_summary(tmp_path, monkeypatch, capsys):
    # Prepare: a finished simulation whose every round failed (simulate replaced, no Flower).
    def simulate(config: RunConfig, resources: object, ray_address: str | None = None) -> Path:
        out = Path(config.out_dir)
        out.mkdir()
        summary = _summary([_failed_row(1, "round 1: secure aggregation aborted")])
        (out / "summary.json").write_text(json.dumps(summary))
        return out

    monkeypatch.setattr("simulations.launcher.simulate", simulate)
    path = _npz(tmp_path)

    # Execute
    exit_code = cli.main(["run", "--out", str(tmp_path / "run"), "--set", f"dataset=npz:{path}"])

    # Assert
    assert exit_code == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "feddistill: error: 0 of 1 rounds completed; results: /runs/x"
    )


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (
            "Error while running ClientApp\nTraceback (most recent call last):\n"
            '  File "client/app.py", line 80, in train\n    raise PublicSetMismatch(...)\n'
            "client.app.PublicSetMismatch: public-set hash mismatch: the server's …\n",
            "client.app.PublicSetMismatch: public-set hash mismatch: the server's …",
        ),
        (
            "ray.exceptions.RayTaskError(ValueError): ray::ClientAppActor.run()\n"
            "  File 'x.py', line 3\nValueError: injected crash\n\n",
            "ValueError: injected crash",
        ),
        (
            "<class 'flwr.clientapp.client_app.ClientAppException'>:<'ray::ClientAppActor.run()"
            "\n  File 'ray_actor.py', line 65\nflwr.clientapp.client_app.ClientAppException: "
            "\nException ClientAppException occurred. Message: injected crash'>",
            "injected crash",
        ),
        ("a plain   reason\n", "a plain reason"),
        ("\n  \n", "no reason given"),
    ],
    ids=["traceback", "ray", "flower", "plain", "empty"],
)
def test_a_client_error_is_recorded_as_one_line(reason, expected):
    assert error_summary(reason) == expected


def test_a_long_client_error_is_cut():
    summary = error_summary("ValueError: " + "x" * 2000)

    assert len(summary) == 500 and summary.endswith("…")
