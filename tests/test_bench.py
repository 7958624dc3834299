"""Benchmark suites: settings resolution, report helpers, and every suite's smallest setting end
to end (real Flower simulations; suites share one output root, so `comm` reuses the runs of
`quality`). Benchmarks measure; these tests check only that the suites run and report
consistently, never the measured figures against targets."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common.data import load_splits
from simulations.bench import cli, report
from simulations.bench.memory import PeakMemory
from simulations.bench.suite import make_bench

SEEDS = "1"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


def run_tiny(root: Path, suite: str, *settings: str, out: Path | None = None) -> Path:
    """Run a suite's smallest setting (data cached under the shared root); return its folder."""
    out = out or root
    args = [suite, "--tiny", "--seeds", SEEDS, "--out", str(out)]
    for setting in (f"data_dir={root / 'data'}", *settings):
        args += ["--set", setting]
    assert cli.main(args) == 0
    return out / suite


@pytest.fixture(scope="module")
def quality(root: Path) -> Path:
    return run_tiny(root, "quality")


# --- settings and helpers -------------------------------------------------------------------


def test_set_reaches_suite_knobs_and_run_config_keys(tmp_path: Path) -> None:
    spec = cli.load_suite("quality")

    bench = make_bench(spec, {"alphas": "0.1, 100", "rounds": "3"}, tmp_path, seeds=2, tiny=True)

    assert bench.knobs["alphas"] == (0.1, 100.0)
    assert bench.config.rounds == 3
    assert bench.config.num_clients == spec.tiny["num_clients"]  # --tiny applied below --set
    assert bench.seeds == (0, 1)
    assert bench.settings["rounds"] == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"no_such_key": "1"}, "unknown setting 'no_such_key'"),
        ({"alphas": "x"}, "alphas must be of type float"),
        ({"rounds": "0"}, "rounds must be >= 1"),
    ],
)
def test_bad_settings_are_refused_by_name(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_bench(cli.load_suite("quality"), overrides, tmp_path)


def test_register_adds_the_bench_subcommand() -> None:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))

    args = parser.parse_args(["bench", "scale", "--tiny", "--set", "rounds=2", "--seeds", "1"])

    assert (args.suite, args.tiny, args.set, args.seeds) == ("scale", True, ["rounds=2"], 1)
    assert args.handler is cli.run_command


def test_summarise_and_format_mean_std() -> None:
    frame = pd.DataFrame({"method": ["a", "a", "b"], "accuracy": [0.5, 0.7, 0.9]})

    summary = report.summarise(frame, ["method"], ["accuracy"])

    assert summary["accuracy_mean"].tolist() == pytest.approx([0.6, 0.9])
    assert summary["n"].tolist() == [2, 1]
    assert report.mean_std(0.6, float(summary["accuracy_std"][0])) == "0.600 ± 0.141"
    assert report.mean_std(0.9, float("nan")) == "0.900"  # one seed: no spread to show


def test_peak_memory_sees_this_process() -> None:
    with PeakMemory(interval=0.05) as memory:
        np.ones(2**24).sum()  # 128 MiB, briefly

    assert memory.peak_pss > 2**26
    assert memory.peak_rss >= memory.peak_pss
    assert memory.peak_processes >= 1


# --- every suite's smallest setting, end to end --------------------------------------------


class TestQualityAndComm:
    """`quality`'s Flower runs and the suites that reuse them (one xdist scope: see conftest.py)."""

    def test_quality_reports_every_method(self, quality: Path) -> None:
        rows = pd.read_csv(quality / "quality.csv")
        markdown = (quality / "quality.md").read_text()

        assert set(rows["method"]) == {
            "centralised student",
            "local-only teachers (client mean)",
            "hard-label student (public labels)",
            "oracle-teacher student (central teacher, public inputs)",
            "FD fedmd one-shot (1 round)",
            "FD fedmd",
            "FedAvg (student)",
            "FedProx (student)",
        }
        assert rows[["accuracy", "nll", "ece"]].notna().all().all()
        flower = rows[rows["method"].str.startswith(("FD", "FedAvg"))]
        assert (flower["upload_mb_per_client"] > 0).all()
        assert "| FD fedmd | 2 |" in markdown
        assert "## Targets (measured, best FD method per α)" in markdown
        assert (quality / "quality_rounds_a0.5.png").stat().st_size > 0

    def test_inprocess_engine_reproduces_the_flower_runs(self, root: Path, quality: Path) -> None:
        inprocess = run_tiny(root, "quality", "engine=inprocess", out=root / "inprocess")
        flower = pd.read_csv(quality / "quality.csv").set_index("method")
        ours = pd.read_csv(inprocess / "quality.csv").set_index("method")

        fd = ["FD fedmd one-shot (1 round)", "FD fedmd"]
        metrics = ["accuracy", "nll", "ece"]
        np.testing.assert_allclose(ours.loc[fd, metrics], flower.loc[fd, metrics], atol=1e-6)
        # FedAvg: only the float32 summation order differs (Flower samples nodes in random order).
        tiny = make_bench(
            cli.load_suite("quality"), {"data_dir": str(root / "data")}, root, tiny=True
        )
        test_size = len(load_splits(tiny.config).test_y)
        fedavg = "FedAvg (student)"
        assert abs(ours.loc[fedavg, "accuracy"] - flower.loc[fedavg, "accuracy"]) <= 3 / test_size
        # Bytes in process are counted on the records the apps send: the same as Flower's count.
        np.testing.assert_array_equal(
            ours.loc[fd, "upload_mb_per_client"], flower.loc[fd, "upload_mb_per_client"]
        )


def test_comm_counts_fewer_bytes_for_narrower_labels_and_plain_coding(root: Path) -> None:
    comm = run_tiny(root, "comm")
    rows = pd.read_csv(comm / "comm.csv")
    default = rows[rows["model"] == "cnn1d-s"].set_index("method")
    up = default["kb_up_per_client_round_mean"]

    assert up["FD SecAgg+ b=4"] < up["FD SecAgg+ b=16"]
    assert up["FD plain LZMA b=4"] < up["FD plain LZMA b=16"] < up["FD SecAgg+ b=16"]
    # The secure sum of quantised reports equals the plain one: same student, different bytes.
    assert (
        default.loc["FD plain LZMA b=4", "accuracy_mean"]
        == (default.loc["FD SecAgg+ b=4", "accuracy_mean"])
    )
    assert set(rows["model"]) == {"cnn1d-s", "mlp-s"}
    assert (rows.loc[rows["method"].str.startswith("Fed"), "round_mean"] == 3).all()
    markdown = (comm / "comm.md").read_text()
    assert "## Delta coding against the previous round (CFD), measured" in markdown
    assert "## Targets (measured)" in markdown


def test_temperature_reports_each_temperature(root: Path) -> None:
    out = run_tiny(root, "temperature")
    rows = pd.read_csv(out / "temperature.csv")

    assert rows["temperature"].tolist() == [1.0, 4.0]
    assert ((rows["ensemble_entropy"] > 0) & (rows["ensemble_entropy"] <= np.log(10))).all()
    assert (out / "temperature.png").stat().st_size > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="bitwise equality is a CPU property")
def test_overhead_loop_reproduces_the_simulation(root: Path) -> None:
    out = run_tiny(root, "overhead")
    runs = pd.read_csv(out / "overhead.csv")
    rounds = pd.read_csv(out / "overhead_rounds.csv")

    assert set(runs["method"]) == {"flower", "loop"}
    assert (runs[["round_s_after_first", "round_s_all", "end_to_end_s"]] > 0).all().all()
    by_method = rounds.pivot_table(index="round", columns="method", values="student_accuracy")
    np.testing.assert_allclose(by_method["flower"], by_method["loop"], atol=1e-9)
    assert "Flower / loop per round" not in (out / "overhead.md").read_text()  # no target at n=3


def test_scale_samples_a_cohort_and_measures_memory(root: Path) -> None:
    out = run_tiny(root, "scale")
    row = pd.read_csv(out / "scale.csv").iloc[0]

    assert (row["clients"], row["cohort"], row["rounds_completed"]) == (4, 3, 2)
    assert row["peak_pss_gib"] > 0 and row["peak_processes"] > 3  # the simulation's processes
    assert row["secagg_compute_s"] > 0
    assert "| 4 | 3 |" in (out / "scale.md").read_text()


def test_first_seed_shifts_the_repetitions_and_is_checked(tmp_path: Path) -> None:
    spec = cli.load_suite("quality")

    bench = make_bench(spec, {}, tmp_path, seeds=2, first_seed=1)

    assert bench.seeds == (1, 2)
    with pytest.raises(ValueError, match="--first-seed must be >= 0, got -1"):
        make_bench(spec, {}, tmp_path, seeds=2, first_seed=-1)
