"""Suite `comm`: upload per client per round, and accuracy reached per megabyte.

Per seed, on the same data and partitions: federated distillation with SecAgg+ (fixed-point
soft labels, uint64 mod 2^m, plus keys and shares), federated distillation with plain float32
soft labels (`secagg=false`), and FedAvg of the student (float32 weights; learning rate and local
epochs tuned as in `quality`). FedAvg runs until its upload reaches FD's (SecAgg+) upload over the
whole run, so the methods can be compared at equal bytes. Runs are shared with `quality` when
both use the same `--out` and settings.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch

from common.config import RunConfig
from common.data import DatasetSplits, load_splits
from common.protocol import payload_bytes
from common.training import resolve_device
from simulations.bench import report
from simulations.bench.baselines import tuned_fedavg
from simulations.bench.fedavg_app import initial_student, train_reply_content
from simulations.bench.runs import FlowerRun, flower_run
from simulations.bench.suite import Bench, BenchSpec

FD_SECAGG = "FD, SecAgg+ (fixed-point)"
FD_PLAIN = "FD, plain float32"
FEDAVG = "FedAvg (student weights, float32)"


def accuracy_at_budget(curve: pd.DataFrame, budget_mb: float) -> float:
    """Accuracy after the last round whose cumulative upload per client is within the budget."""
    within = curve[curve["upload_mb_per_client"] <= budget_mb * (1 + 1e-9)]
    return float(within["accuracy"].iloc[-1]) if len(within) else float("nan")


def run(bench: Bench) -> None:
    """Run the three methods for every seed; write comm.csv, comm_rounds.csv, comm.md, plot."""
    curves: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    tuning: dict[str, Any] | None = None
    alpha = bench.config.dirichlet_alpha
    torch.set_num_threads(bench.config.client_threads)  # in-process tuning, as a client's
    for seed in bench.seeds:
        config = bench.for_seed(seed)
        splits = load_splits(config)
        bench.step(f"seed={seed}: federated distillation with SecAgg+ and plain")
        fd = flower_run(bench, config, f"fd-a{alpha}-s{seed}")
        plain = flower_run(bench, config.replace(secagg=False), f"fd-plain-a{alpha}-s{seed}")
        if tuning is None:
            bench.step(f"seed={seed}: tuning FedAvg on the public set's labels")
            tuning = tuned_fedavg(bench, config, splits, resolve_device(config.device))
        per_round = fedavg_upload_bytes(config, splits)
        budget = fd.curve()["upload_mb_per_client"].iloc[-1] * 1e6
        rounds = min(
            bench.knobs["fedavg_max_rounds"], max(config.rounds, math.ceil(budget / per_round))
        )
        fedavg_config = config.replace(
            rounds=rounds, local_lr=tuning["local_lr"], local_epochs=tuning["local_epochs"]
        )
        bench.step(f"seed={seed}: FedAvg for {rounds} rounds ({per_round} B per client-round)")
        fedavg = flower_run(bench, fedavg_config, f"fedavg-a{alpha}-s{seed}", app="fedavg")
        for method, result in ((FD_SECAGG, fd), (FD_PLAIN, plain), (FEDAVG, fedavg)):
            curves += _curve(seed, method, result)
            rows.append(_row(seed, method, result))
        _write(bench, pd.DataFrame(rows), pd.DataFrame(curves))


def fedavg_upload_bytes(config: RunConfig, splits: DatasetSplits) -> int:
    """Bytes one FedAvg client uploads per round (model + weight), counted as in the run."""
    return payload_bytes(train_reply_content(initial_student(config, splits), 1, 0.0))


def _curve(seed: int, method: str, result: FlowerRun) -> list[dict[str, Any]]:
    return [
        {"seed": seed, "method": method, **point} for point in result.curve().to_dict("records")
    ]


def _row(seed: int, method: str, result: FlowerRun) -> dict[str, Any]:
    curve = result.curve()
    total_mb = float(curve["upload_mb_per_client"].iloc[-1])
    accuracy = float(curve["accuracy"].iloc[-1])
    return {
        "seed": seed,
        "method": method,
        "rounds": len(curve),
        "kb_per_client_round": 1e3 * total_mb / len(curve),
        "upload_mb_per_client": total_mb,
        "accuracy": accuracy,
        "accuracy_per_mb": accuracy / total_mb,
    }


def _write(bench: Bench, rows: pd.DataFrame, curves: pd.DataFrame) -> None:
    out = bench.out_dir
    report.write_csv(curves, out / "comm_rounds.csv")
    # Budgets: what FD with SecAgg+ uploads after one round and after the whole run (per seed).
    fd_curves = curves[curves["method"] == FD_SECAGG]
    budgets = {
        "one_shot": fd_curves.groupby("seed")["upload_mb_per_client"].first(),
        "full": fd_curves.groupby("seed")["upload_mb_per_client"].last(),
    }
    for name, per_seed in budgets.items():
        rows[f"accuracy_at_fd_{name}_mb"] = [
            accuracy_at_budget(
                curves[(curves["seed"] == row.seed) & (curves["method"] == row.method)],
                per_seed[row.seed],
            )
            for row in rows.itertuples()
        ]
    report.write_csv(rows, out / "comm.csv")
    values = [
        "kb_per_client_round",
        "upload_mb_per_client",
        "accuracy",
        "accuracy_per_mb",
        "accuracy_at_fd_one_shot_mb",
        "accuracy_at_fd_full_mb",
    ]
    summary = report.summarise(rows, ["method"], values)
    report.write_csv(summary, out / "comm_summary.csv")

    def cell(row: pd.Series, name: str, digits: int = 3) -> str:
        return report.mean_std(row[f"{name}_mean"], row[f"{name}_std"], digits)

    one_shot_mb, full_mb = budgets["one_shot"].mean(), budgets["full"].mean()
    table = [
        {
            "method": row["method"],
            "KB / client / round": cell(row, "kb_per_client_round", 1),
            "rounds": str(int(rows[rows["method"] == row["method"]]["rounds"].max())),
            "MB / client, whole run": cell(row, "upload_mb_per_client"),
            "final accuracy": cell(row, "accuracy"),
            f"accuracy at {one_shot_mb:.3f} MB": cell(row, "accuracy_at_fd_one_shot_mb"),
            f"accuracy at {full_mb:.3f} MB": cell(row, "accuracy_at_fd_full_mb"),
            "final accuracy / MB": cell(row, "accuracy_per_mb", 2),
        }
        for _, row in summary.iterrows()
    ]
    stats = report.summarise(curves, ["method", "round"], ["accuracy", "upload_mb_per_client"])
    lines = {
        method: (part["upload_mb_per_client_mean"], part["accuracy_mean"], part["accuracy_std"])
        for method, part in stats.groupby("method", sort=False)
    }
    report.line_plot(
        out / "comm.png",
        lines,
        xlabel="cumulative upload per client (MB)",
        ylabel="test accuracy",
        title="Accuracy vs upload",
        logx=True,
    )
    sections = [
        report.settings_line(bench.settings, bench.seeds),
        "Mean ± std over seeds. Bytes are the payloads of every message a client sends (for "
        "SecAgg+ all four stages: keys, encrypted shares, masked input, unmask shares). Budgets "
        "are FD with SecAgg+ after one round and after the whole run; 'accuracy at B' is the "
        "accuracy after the last round whose cumulative upload is ≤ B ('—' when even one round "
        "costs more).",
        report.markdown_table(table, tuple(table[0])),
        "![accuracy vs upload](comm.png)",
        _checks(summary),
    ]
    path = report.write_markdown(out / "comm.md", "Communication", sections)
    bench.step(f"wrote {out / 'comm.csv'}, {out / 'comm_rounds.csv'} and {path}")


def _checks(summary: pd.DataFrame) -> str:
    by_method = summary.set_index("method")
    fd = by_method.loc[FD_SECAGG, "accuracy_mean"]
    fedavg = by_method.loc[FEDAVG, "accuracy_at_fd_full_mb_mean"]
    verdict = "met" if fd > fedavg else "missed"
    return (
        "## Target (measured)\n"
        f"- FD (SecAgg+) final accuracy {fd:.3f} vs FedAvg at the same upload {fedavg:.3f} "
        f"(target FD ahead): {verdict}."
    )


SPEC = BenchSpec(
    name="comm",
    summary="upload bytes per client per round and accuracy per MB: FD (SecAgg+, plain) vs FedAvg",
    knobs={"fedavg_lrs": (0.003, 0.01), "fedavg_epochs": (1, 2, 4), "fedavg_max_rounds": 60},
    config={"num_clients": 10, "partitioner": "dirichlet"},
    tiny={
        "num_samples": 1200,
        "num_clients": 3,
        "rounds": 2,
        "local_epochs": 1,
        "distill_epochs": 2,
        "teacher_models": "cnn1d-s",
        "student_model": "cnn1d-s",
        "fedavg_lrs": (0.01,),
        "fedavg_epochs": (1, 2),
        "fedavg_max_rounds": 2,  # = rounds: the FedAvg run of `quality --tiny` is reused
    },
    run=run,
)
