"""Suite `temperature`: how the soft-label temperature T shapes the ensemble and the student.

One-shot federated distillation (one round) at each T, in process with the simulation's own
functions (see `plain_loop`). In a first round the teachers' training does not depend on T (no
digest yet), so each seed trains the teachers once with `run_local_round`; for every T their
public-set predictions softmax(z/T) are summed, averaged into the ensemble, and a fresh student
(same initial weights) is distilled with the T²-scaled KD loss at that T and evaluated at T = 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from client.teacher import RoundInput, new_teacher, run_local_round
from common.data import load_splits
from common.kd import ensemble_mean
from common.metrics import accuracy
from common.training import predict_probs, resolve_device
from server.student import Student
from simulations.bench import report
from simulations.bench.baselines import client_data
from simulations.bench.suite import Bench, BenchSpec

VALUES = (
    "ensemble_entropy",
    "ensemble_entropy_ratio",
    "ensemble_public_accuracy",
    "accuracy",
    "nll",
    "ece",
)


def entropy(probs: np.ndarray) -> float:
    """Mean Shannon entropy (nats) of the rows of (N, K) probabilities."""
    return float(-np.mean(np.sum(probs * np.log(np.clip(probs, 1e-12, None)), axis=1)))


def run(bench: Bench) -> None:
    """For every seed: train the teachers once, then ensemble and distil at every T."""
    torch.set_num_threads(bench.config.client_threads)  # in-process training, as a client's
    rows: list[dict[str, Any]] = []
    for seed in bench.seeds:
        config = bench.for_seed(seed, rounds=1)
        splits = load_splits(config)
        device = resolve_device(config.device)
        query = np.arange(len(splits.public_x))
        bench.step(f"seed={seed}: training {config.num_clients} teachers (one round)")
        teachers, weights = [], []
        for private in client_data(config, splits):
            teacher = new_teacher(config, splits, private.index)
            contribution, _ = run_local_round(
                teacher,
                config,
                splits.public,
                private,
                RoundInput(round=1, query_indices=query),
                device,
            )
            teachers.append(teacher)
            weights.append(contribution.weight)
        for temperature in bench.knobs["temperatures"]:
            bench.step(f"seed={seed}: T={temperature}: ensemble and student")
            at_t = config.replace(temperature=temperature)
            weighted_sum = sum(
                weight * predict_probs(teacher, splits.public_x, temperature, device)
                for teacher, weight in zip(teachers, weights, strict=True)
            ).astype(np.float64)
            ensemble = ensemble_mean(weighted_sum, float(sum(weights)))  # (Q, K)
            student = Student(at_t, splits, device)
            student.distill(
                1, splits.public_x, ensemble, splits.public.labels("the temperature suite")
            )
            metrics = student.evaluate(splits.test_x, splits.test_y)
            rows.append(
                {
                    "seed": seed,
                    "temperature": temperature,
                    "ensemble_entropy": entropy(ensemble),
                    "ensemble_entropy_ratio": entropy(ensemble) / np.log(splits.num_classes),
                    "ensemble_public_accuracy": accuracy(
                        ensemble, splits.public.labels("the temperature suite")
                    ),
                    "accuracy": metrics["student_accuracy"],
                    "nll": metrics["student_nll"],
                    "ece": metrics["student_ece"],
                }
            )
        _write(bench, pd.DataFrame(rows))


def _write(bench: Bench, rows: pd.DataFrame) -> None:
    out = bench.out_dir
    report.write_csv(rows, out / "temperature.csv")
    summary = report.summarise(rows, ["temperature"], VALUES)
    report.write_csv(summary, out / "temperature_summary.csv")
    table = [
        {
            "T": row["temperature"],
            "ensemble entropy (nats)": report.mean_std(
                row["ensemble_entropy_mean"], row["ensemble_entropy_std"]
            ),
            "ensemble acc (public)": report.mean_std(
                row["ensemble_public_accuracy_mean"], row["ensemble_public_accuracy_std"]
            ),
            "student accuracy": report.mean_std(row["accuracy_mean"], row["accuracy_std"]),
            "student NLL": report.mean_std(row["nll_mean"], row["nll_std"]),
            "student ECE": report.mean_std(row["ece_mean"], row["ece_std"]),
        }
        for _, row in summary.iterrows()
    ]
    columns = tuple(table[0])
    curves = {
        name: (summary["temperature"], summary[f"{value}_mean"], summary[f"{value}_std"])
        for name, value in (
            ("student accuracy", "accuracy"),
            ("student ECE", "ece"),
            ("ensemble entropy / ln K", "ensemble_entropy_ratio"),
        )
    }
    report.line_plot(
        out / "temperature.png",
        curves,
        xlabel="temperature T",
        ylabel="value",
        title="One-shot FD vs soft-label temperature",
        logx=True,
    )
    sections = [
        report.settings_line(bench.settings, bench.seeds),
        "Mean ± std over seeds. One round; teachers trained once per seed, the ensemble and a "
        "fresh student (same initial weights) per T. Entropy is the mean over public samples of "
        "the ensemble teacher's entropy at T (ln 10 = 2.303 is uniform). Student metrics on the "
        "test set at T = 1.",
        report.markdown_table(table, columns),
        "![metrics vs T](temperature.png)",
    ]
    path = report.write_markdown(out / "temperature.md", "Temperature", sections)
    bench.step(f"wrote {out / 'temperature.csv'} and {path}")


SPEC = BenchSpec(
    name="temperature",
    summary="ensemble entropy, student accuracy and ECE vs soft-label temperature T (one-shot)",
    knobs={"temperatures": (1.0, 2.0, 4.0, 8.0, 16.0)},
    config={"num_clients": 10, "partitioner": "dirichlet"},
    tiny={
        "temperatures": (1.0, 4.0),
        "num_samples": 1200,
        "num_clients": 3,
        "local_epochs": 1,
        "distill_epochs": 2,
        "teacher_models": "cnn1d-s",
        "student_model": "cnn1d-s",
    },
    run=run,
)
