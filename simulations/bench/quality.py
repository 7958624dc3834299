"""Suite `quality`: federated distillation methods against their bounds and baselines over α.

For each α and seed, on the same data, partitions and initial weights: centralised teacher and
student on the pooled private data (upper bounds), local-only teachers, the student trained on
the public set's true labels, the oracle-teacher student (a centralised teacher distilled into
the student on the same public inputs with the same budget: the ceiling of any FD method on
this public set), federated distillation with every method of knob `methods` in the real Flower
simulation (for fedmd also its one-shot row = its first round, which has no digest and a fresh
student, i.e. exactly a 1-round run), and FedAvg of the student with Flower's `FedAvg` strategy
for the same number of rounds, its learning rate and local epochs picked on the public set's
labels.

Knob `engine=inprocess` runs the federated methods without Flower instead, as
`plain_loop.run_plain` and `baselines.fedavg_in_process` (the same computation: the tests and
the `overhead` suite check that it reproduces the simulation), for machines without Ray; upload
bytes are then counted on the records the apps would send (FD: `run_plain`'s `bytes_up`;
FedAvg: its reply content, the same every round).
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch

from common.config import RunConfig
from common.data import load_splits
from common.methods import METHOD_NAMES
from common.training import resolve_device
from simulations.bench import report
from simulations.bench.baselines import (
    centralised,
    fedavg_in_process,
    hard_label_student,
    local_only,
    oracle_teacher_student,
    tuned_fedavg,
    tuned_fedprox,
)
from simulations.bench.fedavg_app import fedavg_upload_bytes
from simulations.bench.plain_loop import run_plain
from simulations.bench.runs import flower_run
from simulations.bench.suite import Bench, BenchSpec

VALUES = ("accuracy", "nll", "ece", "upload_mb_per_client", "wall_seconds")
ENGINES = ("flower", "inprocess")
FD_ONE_SHOT = "FD fedmd one-shot (1 round)"
FEDAVG = "FedAvg (student)"
FEDPROX = "FedProx (student)"
CENTRAL_STUDENT = "centralised student"
HARD_LABEL = "hard-label student (public labels)"
LOCAL = "local-only teachers (client mean)"
ORACLE = "oracle-teacher student (central teacher, public inputs)"


def fd_label(method: str) -> str:
    """The table row of FD with `method` over the whole run."""
    return f"FD {method}"


def run(bench: Bench) -> None:
    """Measure every method for every α and seed; write quality.csv, quality.md and plots."""
    if bench.knobs["engine"] not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {bench.knobs['engine']!r}")
    if bench.knobs["public_sets"]:  # the public-set axis: its own runs and table
        from simulations.bench import public_sets

        public_sets.run(bench)
        return
    torch.set_num_threads(bench.config.client_threads)  # in-process training, as a client's
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    tuning: dict[float, dict[str, Any]] = {}
    for alpha in bench.knobs["alphas"]:
        for seed in bench.seeds:
            config = bench.for_seed(seed, dirichlet_alpha=alpha)
            tag = f"α={alpha} seed={seed}"
            splits = load_splits(config)
            device = resolve_device(config.device)
            base = {"alpha": alpha, "seed": seed}

            teacher_name = config.teacher_model_list[0]
            if teacher_name != config.student_model:
                bench.step(f"{tag}: centralised teacher (pooled private data)")
                metrics = centralised(config, splits, teacher_name, device)
                rows.append(_row(base, f"centralised teacher ({teacher_name})", metrics))
            bench.step(f"{tag}: centralised student (pooled private data)")
            metrics = centralised(config, splits, config.student_model, device)
            rows.append(_row(base, CENTRAL_STUDENT, metrics))
            bench.step(f"{tag}: local-only teachers")
            clients = local_only(config, splits, device)
            rows.append(_local_row(base, clients))
            bench.step(f"{tag}: hard-label student on the public set")
            rows.append(_row(base, HARD_LABEL, hard_label_student(config, splits, device)))
            bench.step(f"{tag}: oracle-teacher student (the ceiling of FD on this public set)")
            rows.append(_row(base, ORACLE, oracle_teacher_student(config, splits, device)))

            for method in bench.knobs["methods"]:
                bench.step(f"{tag}: federated distillation, {method} ({bench.knobs['engine']})")
                label = "fd" if method == "fedmd" else f"fd-{method}"  # fedmd's runs are comm's
                fd_config = config.replace(method=method)
                curve, wall = federated(bench, fd_config, f"{label}-a{alpha}-s{seed}", "feddistill")
                rows += _fd_rows(base, method, curve, wall)
                curves += _curve(base, fd_label(method), curve)

            if len(set(config.teacher_model_list)) > 1:
                rows += [_not_applicable(base, name) for name in (FEDAVG, FEDPROX)]
            else:
                if alpha not in tuning:
                    tuning[alpha] = _tune_weight_averaging(bench, tag, config, splits, device)
                for name, changes in _weight_averaging_configs(tuning[alpha]).items():
                    bench.step(f"{tag}: {name} {changes}")
                    run_label = f"{name.split()[0].lower()}-a{alpha}-s{seed}"
                    curve, wall = federated(bench, config.replace(**changes), run_label, "fedavg")
                    rows.append(_run_row(base, name, curve, wall))
                    curves += _curve(base, name.split()[0], curve)
            _write(bench, pd.DataFrame(rows), pd.DataFrame(curves), tuning)


def _tune_weight_averaging(
    bench: Bench, tag: str, config: RunConfig, splits: Any, device: torch.device
) -> dict[str, dict[str, Any]]:
    """FedAvg's (lr, local epochs), then FedProx's μ at that pick, both on public labels."""
    bench.step(f"{tag}: tuning FedAvg on the public set's labels")
    fedavg = tuned_fedavg(bench, config, splits, device)
    picked = config.replace(local_lr=fedavg["local_lr"], local_epochs=fedavg["local_epochs"])
    bench.step(f"{tag}: tuning FedProx's μ on the public set's labels")
    return {"fedavg": fedavg, "fedprox": tuned_fedprox(bench, picked, splits, device)}


def _weight_averaging_configs(tuning: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Row name → the run-config changes of its tuned run."""
    fedavg = {key: tuning["fedavg"][key] for key in ("local_lr", "local_epochs")}
    return {FEDAVG: fedavg, FEDPROX: {**fedavg, "proximal_mu": tuning["fedprox"]["proximal_mu"]}}


def _not_applicable(base: dict, method: str) -> dict[str, Any]:
    """A weight-averaging row in a federation whose clients' models differ: it cannot run."""
    return {**base, "method": method, "note": "n/a: clients' models differ"}


def federated(bench: Bench, config: RunConfig, label: str, app: str) -> tuple[pd.DataFrame, float]:
    """Run FD ('feddistill') or FedAvg ('fedavg') with the suite's engine.

    Returns the per-round curve (round, accuracy, nll, ece, seconds, cumulative
    upload_mb_per_client; seconds NaN for in-process FedAvg) and the wall seconds (the
    ServerApp's own time under Flower, the computation's in process).
    """
    if bench.knobs["engine"] == "flower":
        result = flower_run(bench, config, label, app=app)
        return result.curve(), float(result.summary["wall_seconds"])
    start = time.perf_counter()
    splits = load_splits(config)
    if app == "feddistill":
        rows = run_plain(config, splits)
    else:
        device = resolve_device(config.device)
        rows = fedavg_in_process(config, splits, splits.test_x, splits.test_y, device)
        per_client = fedavg_upload_bytes(config, splits)
        rows = [{**row, "bytes_up": per_client, "clients": 1} for row in rows]
    # A failed round (e.g. a method that kept no ensemble row) has no metrics: NaN, not absent.
    frame = pd.DataFrame(rows).reindex(
        columns=["student_accuracy", "student_nll", "student_ece", "seconds", "bytes_up", "clients"]
    )
    curve = pd.DataFrame(
        {
            "round": range(1, len(frame) + 1),
            "accuracy": frame["student_accuracy"],
            "nll": frame["student_nll"],
            "ece": frame["student_ece"],
            "seconds": frame["seconds"],
            "upload_mb_per_client": (frame["bytes_up"] / frame["clients"]).cumsum() / 1e6,
        }
    )
    return curve, time.perf_counter() - start


def _row(base: dict, method: str, metrics: dict[str, float]) -> dict[str, Any]:
    return {
        **base,
        "method": method,
        "accuracy": metrics["student_accuracy"],
        "nll": metrics["student_nll"],
        "ece": metrics["student_ece"],
        "upload_mb_per_client": 0.0,
        "wall_seconds": metrics["seconds"],
    }


def _local_row(base: dict, clients: pd.DataFrame) -> dict[str, Any]:
    means = clients.mean(numeric_only=True)
    return {
        **base,
        "method": LOCAL,
        "accuracy": means["student_accuracy"],
        "nll": means["student_nll"],
        "ece": means["student_ece"],
        "upload_mb_per_client": 0.0,
        "wall_seconds": float(clients["seconds"].sum()),
        "client_accuracy_std": float(clients["student_accuracy"].std(ddof=1)),
        "client_accuracy_min": float(clients["student_accuracy"].min()),
        "client_accuracy_max": float(clients["student_accuracy"].max()),
    }


def _run_row(base: dict, method: str, curve: pd.DataFrame, wall: float) -> dict[str, Any]:
    last = curve.iloc[-1]
    return {
        **base,
        "method": method,
        "rounds": int(last["round"]),
        "accuracy": last["accuracy"],
        "nll": last["nll"],
        "ece": last["ece"],
        "upload_mb_per_client": last["upload_mb_per_client"],
        "wall_seconds": wall,
    }


def _fd_rows(base: dict, method: str, curve: pd.DataFrame, wall: float) -> list[dict[str, Any]]:
    """The whole run; for fedmd also its one-shot row (round 1; wall time up to its end)."""
    rows = [_run_row(base, fd_label(method), curve, wall)]
    if method == "fedmd":
        first = wall - curve["seconds"].iloc[1:].sum()
        rows.insert(0, _run_row(base, FD_ONE_SHOT, curve.iloc[:1], first))
    return rows


def _curve(base: dict, method: str, curve: pd.DataFrame) -> list[dict[str, Any]]:
    return [{**base, "method": method, **point} for point in curve.to_dict("records")]


def _write(
    bench: Bench, rows: pd.DataFrame, curves: pd.DataFrame, tuning: dict[float, dict]
) -> None:
    out = bench.out_dir
    report.write_csv(rows, out / "quality.csv")
    report.write_csv(curves, out / "quality_rounds.csv")
    summary = report.summarise(rows, ["alpha", "method"], VALUES)
    report.write_csv(summary, out / "quality_summary.csv")
    sections = [report.settings_line(bench.settings, bench.seeds), NOTES]
    for alpha in summary["alpha"].unique():
        part = summary[summary["alpha"] == alpha]
        spread = rows[(rows["alpha"] == alpha) & (rows["method"] == LOCAL)]
        table = [_table_row(entry, spread, rows) for _, entry in part.iterrows()]
        sections.append(
            f"## {_setting(bench.config, alpha)}\n\n" + report.markdown_table(table, COLUMNS)
        )
        sections.append(_plot_rounds(bench, curves[curves["alpha"] == alpha], alpha))
    sections.append(_tuning_section(tuning))
    sections.append(_checks(summary, bench.config))
    path = report.write_markdown(out / "quality.md", "Quality: federated distillation", sections)
    bench.step(f"wrote {out / 'quality.csv'}, {out / 'quality_summary.csv'} and {path}")


COLUMNS = (
    "method",
    "rounds",
    "test accuracy",
    "NLL",
    "ECE",
    "upload / client (MB)",
    "wall (s)",
    "client spread (std; min–max)",
)

NOTES = (
    "Mean ± std over seeds. Upload is what one client sends over the whole run (SecAgg+ "
    "messages included for FD). Wall time: the ServerApp's own time for Flower runs (SuperLink "
    "and Ray start-up excluded; client start-up in round 1 included), training + evaluation for "
    "in-process baselines. FD one-shot is round 1 of the multi-round run (no digest, fresh "
    "student: identical to a 1-round run). FedAvg's learning rate and local epochs, then "
    "FedProx's μ at that pick, are chosen from small grids on the public set's true labels "
    "(validation; neither trains on the public set, the test set is untouched); every FD method "
    "runs at its defaults (the paper's where they transfer), untuned. FedAvg and FedProx rows "
    "read 'n/a' when the clients' models differ: weight averaging needs one architecture. "
    "The centralised teacher has its own row only when its architecture differs "
    "from the student's. Supervised baselines get local_epochs × rounds epochs; the "
    "hard-label student gets distill_epochs × rounds epochs of the student's recipe. In-process "
    "training uses client_threads torch threads. With engine=inprocess, FD and FedAvg run "
    "without Flower (same computation; upload not measured, wall = compute only)."
)


def _setting(config: RunConfig, alpha: float) -> str:
    """A table's heading: the partition (and a shifted public set) it was measured on."""
    partition = {
        "dirichlet": f"Dirichlet α = {alpha}",
        "pathological": f"pathological, {config.classes_per_client} classes per client",
        "iid": "IID",
    }[config.partitioner]
    return partition + (f", public_shift = {config.public_shift}" if config.public_shift else "")


def _table_row(entry: pd.Series, spread: pd.DataFrame, rows: pd.DataFrame) -> dict[str, str]:
    same = rows[(rows["alpha"] == entry["alpha"]) & (rows["method"] == entry["method"])]
    rounds = same["rounds"].dropna() if "rounds" in same else pd.Series(dtype=float)
    cell = {
        "method": entry["method"],
        "rounds": str(int(rounds.iloc[0])) if len(rounds) else "—",
        "test accuracy": report.mean_std(entry["accuracy_mean"], entry["accuracy_std"]),
        "NLL": report.mean_std(entry["nll_mean"], entry["nll_std"]),
        "ECE": report.mean_std(entry["ece_mean"], entry["ece_std"]),
        "upload / client (MB)": report.number(entry["upload_mb_per_client_mean"], 3),
        "wall (s)": report.number(entry["wall_seconds_mean"], 1),
        "client spread (std; min–max)": "—",
    }
    if "note" in same and same["note"].notna().any():
        cell["test accuracy"] = str(same["note"].dropna().iloc[0])
    if entry["method"] == LOCAL and len(spread):
        cell["client spread (std; min–max)"] = (
            f"{spread['client_accuracy_std'].mean():.3f}; "
            f"{spread['client_accuracy_min'].min():.3f}–{spread['client_accuracy_max'].max():.3f}"
        )
    return cell


def _plot_rounds(bench: Bench, curves: pd.DataFrame, alpha: float) -> str:
    stats = report.summarise(curves, ["method", "round"], ["accuracy"])
    lines = {
        method: (part["round"], part["accuracy_mean"], part["accuracy_std"])
        for method, part in stats.groupby("method", sort=False)
    }
    name = f"quality_rounds_a{alpha}.png"
    report.line_plot(
        bench.out_dir / name,
        lines,
        xlabel="round",
        ylabel="test accuracy",
        title=f"Student accuracy per round, Dirichlet α = {alpha}",
        integer_x=True,
    )
    return f"![accuracy per round, α = {alpha}]({name})"


def _tuning_section(tuning: dict[float, dict[str, dict]]) -> str:
    """Every grid point of FedAvg's and FedProx's tuning, the pick marked."""
    table = []
    for alpha, by_baseline in tuning.items():
        for baseline, chosen in by_baseline.items():
            for point in chosen["grid"]:
                setting = {k: v for k, v in point.items() if k != "val_accuracy"}
                picked = all(chosen[k] == v for k, v in setting.items())
                table.append(
                    {
                        "α": alpha,
                        "baseline": baseline,
                        "setting": ", ".join(f"{k}={v}" for k, v in setting.items()),
                        "validation accuracy": f"{point['val_accuracy']:.3f}",
                        "picked": "✓" if picked else "",
                    }
                )
    columns = ("α", "baseline", "setting", "validation accuracy", "picked")
    return "## FedAvg and FedProx grids (first seed, public-set labels)\n\n" + (
        report.markdown_table(table, columns)
    )


def _checks(summary: pd.DataFrame, config: RunConfig) -> str:
    """The targets for the best FD method, as measured (never asserted). The accuracy targets
    are set for Dirichlet splits of a matching public set; other settings get the ECE one."""

    def mean(alpha: float, method: str, value: str = "accuracy") -> float:
        row = summary[(summary["alpha"] == alpha) & (summary["method"] == method)]
        return float(row[f"{value}_mean"].iloc[0]) if len(row) else float("nan")

    def verdict(met: bool) -> str:
        return "met" if met else "missed"

    lines = ["## Targets (measured, best FD method per α)"]
    for alpha in sorted(summary["alpha"].unique()):
        fd = summary[(summary["alpha"] == alpha) & summary["method"].str.match(r"FD \w+$")]
        if not len(fd):
            continue
        best = fd.sort_values("accuracy_mean").iloc[-1]
        name, accuracy = best["method"], float(best["accuracy_mean"])
        oracle, fedavg = mean(alpha, ORACLE), mean(alpha, FEDAVG)
        hard_ece, ece = mean(alpha, HARD_LABEL, "ece"), float(best["ece_mean"])
        lines.append(f"- {_setting(config, alpha)}: best is {name}, {accuracy:.3f}.")
        dirichlet = config.partitioner == "dirichlet" and not config.public_shift
        if dirichlet and alpha == 0.5:
            gap = 100 * (accuracy - oracle)
            lines.append(f"  - ≥ 0.93: {verdict(accuracy >= 0.93)}.")
            lines.append(
                f"  - within 1.5 points of the oracle-teacher student ({oracle:.3f}): "
                f"{gap:+.1f} points, {verdict(gap >= -1.5)}."
            )
        if dirichlet and alpha == 0.1:
            lines.append(f"  - ≥ 0.85: {verdict(accuracy >= 0.85)}.")
            fedprox = mean(alpha, FEDPROX)
            lines.append(
                f"  - ahead of tuned FedAvg ({fedavg:.3f}) and FedProx ({fedprox:.3f}): "
                f"{verdict(accuracy > max(fedavg, fedprox))}."
            )
        lines.append(
            f"  - ECE {ece:.3f} not above the hard-label student's {hard_ece:.3f}: "
            f"{verdict(ece <= hard_ece)}."
        )
    return "\n".join(lines)


SPEC = BenchSpec(
    name="quality",
    summary="accuracy, NLL, ECE, upload and wall time of FD vs bounds and baselines over α",
    knobs={
        "alphas": (0.1, 0.5, 100.0),
        "fedavg_lrs": (0.003, 0.01),
        "fedavg_epochs": (1, 2, 4),
        "fedprox_mus": (0.001, 0.01, 0.1),
        "engine": "flower",
        "methods": METHOD_NAMES,
        "public_sets": (),
    },
    config={"num_clients": 10, "partitioner": "dirichlet"},
    tiny={
        "alphas": (0.5,),
        "methods": ("fedmd",),
        "num_samples": 1200,
        "num_clients": 3,
        "rounds": 2,
        "local_epochs": 1,
        "distill_epochs": 2,
        "teacher_models": "cnn1d-s",
        "student_model": "cnn1d-s",
        "fedavg_lrs": (0.01,),
        "fedavg_epochs": (1, 2),
        "fedprox_mus": (0.01,),
    },
    run=run,
)
