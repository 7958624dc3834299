"""`student-observer`: membership inference by someone who holds only the published student.

Per seed a real federated run (Flower simulation) trains the student; its checkpoint is the
attacker's only access to the federation. Members are records drawn from the pooled private
data of all clients; non-members come from the test pool, never trained on. Scores: the
student's confidence on the true label, offline LiRA (Carlini et al. 2022) and offline RMIA
(Zarifzadeh et al. 2024) against shadow students the attacker distils through the same pipeline
(our teacher, ensemble and student code) from its own records, which contain no candidate.
RMIA's population samples are further test-pool records; its `a` is chosen by attacking each
shadow student with the others on the attacker's own records, whose membership it knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from client.data_source import PrivateData
from common.config import RunConfig
from common.data import DatasetSplits, load_splits, partition_indices
from common.kd import ensemble_mean
from common.models import build_model
from common.training import predict_probs, resolve_device
from server.results import RunDirectory
from server.student import Student
from simulations.leak.evaluate import membership_metrics, tpr_cell
from simulations.leak.experiment import Experiment, setting
from simulations.leak.metrics import roc_curve
from simulations.leak.plots import plot_roc_loglog
from simulations.leak.report import Report, markdown_table, mean_std
from simulations.leak.rmia import choose_offline_a, rmia_score
from simulations.leak.scores import lira_offline_score, true_label_confidence
from simulations.leak.setup import (
    STUDENT_SHADOW_BASE,
    simulate_run,
    test_records,
    train_and_report,
)


@dataclass(frozen=True)
class Settings:
    """Settings of the `student-observer` experiment (`--set key=value`)."""

    seeds: tuple[int, ...] = setting((0, 1, 2), "experiment seeds (one federated run each)")
    candidates: int = setting(600, "members and, as many, non-members per seed")
    shadows: int = setting(4, "shadow students per seed (>= 3), each a whole pipeline")
    shadow_fraction: float = setting(0.5, "share of the attacker's records each shadow uses")
    population_samples: int = setting(200, "test-pool records as RMIA's population samples z")


RUN_DEFAULTS = {"num_clients": 5, "rounds": 3, "num_samples": 8000}
SCORES = ("confidence", "lira", "rmia")
SCORE_LABELS = {"confidence": "confidence", "lira": "LiRA (offline)", "rmia": "RMIA (offline)"}


def run(settings: Settings, config: RunConfig, report: Report) -> None:
    """Federated run, shadow pipelines and the attack, per seed; pooled table and ROC."""
    if settings.shadows < 3:
        raise ValueError(
            f"shadows must be >= 3 (offline fits, and RMIA's a is tuned by attacking each shadow "
            f"with the others), got {settings.shadows}"
        )
    torch.set_num_threads(config.client_threads)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in SCORES}
    members, accuracies = [], []
    for seed in settings.seeds:
        seed_config = config.replace(seed=seed)
        report.progress(f"seed {seed}: federated run ({config.rounds} rounds)")
        run_dir = simulate_run(seed_config, Path(config.out_dir) / "runs" / f"seed{seed}")
        splits = load_splits(seed_config)
        rng = np.random.default_rng([seed, 94])
        test_order = rng.permutation(len(splits.test_y))
        non_members, population, attacker_pool = np.split(
            test_order, [settings.candidates, settings.candidates + settings.population_samples]
        )
        if len(attacker_pool) < 2 * config.num_clients:
            raise ValueError(
                f"{settings.candidates} candidates and {settings.population_samples} population "
                "samples leave the attacker no records"
            )
        chosen = rng.choice(len(splits.private_y), settings.candidates, replace=False)
        x = np.concatenate([splits.private_x[chosen], splits.test_x[non_members]])
        y = np.concatenate([splits.private_y[chosen], splits.test_y[non_members]])
        is_member = np.r_[np.ones(len(chosen), bool), np.zeros(len(non_members), bool)]
        # Every model is read on the candidates, the population samples and the attacker's own
        # records (the last only for the shadows, to tune RMIA's a).
        inputs_x = np.concatenate([x, splits.test_x[population], splits.test_x[attacker_pool]])
        inputs_y = np.concatenate([y, splits.test_y[population], splits.test_y[attacker_pool]])
        blocks = np.cumsum([len(y), len(population)])
        student, accuracy = _published_student(run_dir, splits)
        accuracies.append(accuracy)
        device = resolve_device(config.device)
        target_all = true_label_confidence(predict_probs(student, inputs_x, 1.0, device), inputs_y)
        target, target_population, _ = np.split(target_all, blocks)
        report.progress(f"seed {seed}: {settings.shadows} shadow pipelines on attacker data")
        shadow_all, shadow_own = [], []
        for j in range(settings.shadows):
            probs, own = _shadow_student(seed_config, splits, attacker_pool, settings, j, inputs_x)
            shadow_all.append(true_label_confidence(probs, inputs_y))
            shadow_own.append(np.isin(attacker_pool, own))
        shadows, shadow_population, shadow_pool = np.split(np.stack(shadow_all), blocks, axis=1)
        offline_a = _tune_offline_a(shadow_pool, shadow_population, np.stack(shadow_own))
        for name, values in (
            ("confidence", target),
            ("lira", lira_offline_score(target, shadows, fixed_variance=True)),
            (
                "rmia",
                rmia_score(
                    target, target_population, shadows, shadow_population, offline_a=offline_a
                ),
            ),
        ):
            scores[name].append(values)
            row = {
                "seed": seed,
                "score": name,
                "student_accuracy": accuracy,
                "offline_a": offline_a,
            }
            report.add_rows([row | membership_metrics(values, is_member)])
        members.append(is_member)
    pooled_members = np.concatenate(members)
    joined = {name: np.concatenate(values) for name, values in scores.items()}
    pooled = {name: membership_metrics(values, pooled_members) for name, values in joined.items()}
    report.add_rows([{"seed": "pooled", "score": name} | row for name, row in pooled.items()])
    curves = {name: roc_curve(values, pooled_members) for name, values in joined.items()}
    plot_roc_loglog(curves, report.plot_path("roc_student.png"), "published student")
    _write_table(report, settings, config, pooled, accuracies)


def _tune_offline_a(
    pool_confs: np.ndarray, population_confs: np.ndarray, in_pool: np.ndarray
) -> float:
    """RMIA's offline a from the shadows alone: (S, P) confidences on the attacker's records and
    (S, P) membership in each shadow's training records; records need >= 2 OUT shadows, so
    each shadow left out as the target still has an OUT signal."""
    usable = (~in_pool).sum(axis=0) >= 2  # (P,)
    return choose_offline_a(pool_confs[:, usable], population_confs, in_pool[:, usable])


def _published_student(run_dir: Path, splits: DatasetSplits) -> tuple[torch.nn.Module, float]:
    """The student a federated run published (its checkpoint) and its test accuracy."""
    checkpoint = RunDirectory(run_dir).read_checkpoint()
    if checkpoint is None:
        raise RuntimeError(f"federated run {run_dir} wrote no student checkpoint")
    model = build_model(checkpoint["student_model"], splits.input_shape, splits.num_classes)
    model.load_state_dict(checkpoint["model"])
    probs = predict_probs(model, splits.test_x, 1.0, torch.device("cpu"))
    return model, float(np.mean(probs.argmax(axis=1) == splits.test_y))


def _shadow_student(
    config: RunConfig,
    splits: DatasetSplits,
    attacker_pool: np.ndarray,
    settings: Settings,
    shadow: int,
    inputs_x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Replay the federation on the attacker's records: ((N, K) shadow-student probabilities
    on `inputs_x`, the test-pool indices of the records it trained on).

    The attacker partitions a random `shadow_fraction` of its records over `num_clients`
    teachers with the federation's partitioner, then runs `rounds` rounds of train, average and
    distil with our client and student code (plain sums: secure aggregation does not change them
    beyond fixed-point rounding), querying public rows as the ServerApp does.
    """
    index = STUDENT_SHADOW_BASE + shadow
    # Its own seed: model initialisations, batch orders, partition and queried rows all differ.
    shadow_config = config.replace(seed=STUDENT_SHADOW_BASE * (config.seed + 1) + shadow)
    rng = np.random.default_rng([config.seed, index])
    keep = max(config.num_clients, int(settings.shadow_fraction * len(attacker_pool)))
    own = rng.permutation(attacker_pool)[:keep]
    parts = partition_indices(splits.test_y[own], shadow_config)
    datasets: list[PrivateData] = [
        test_records(splits, own[part], i) for i, part in enumerate(parts)
    ]
    device = resolve_device(config.device)
    student = Student(shadow_config, splits, device)
    teachers: list[torch.nn.Module | None] = [None] * len(datasets)
    digest = None
    for round_number in range(1, config.rounds + 1):
        query = query_rows(shadow_config, len(splits.public_x), round_number)
        reports = []
        for i, data in enumerate(datasets):
            teachers[i], probs = train_and_report(
                shadow_config, splits, data, query, round_number, teachers[i], digest
            )
            reports.append(probs.astype(np.float64))
        ensemble = ensemble_mean(np.sum(reports, axis=0), len(reports))  # (Q, K)
        student.distill(round_number, splits.public_x[query], ensemble)
        digest = (query, ensemble) if config.digest_epochs else None
    return predict_probs(student.model, inputs_x, 1.0, device), own


def query_rows(config: RunConfig, n_public: int, round_number: int) -> np.ndarray:
    """Public rows queried in a round, by the ServerApp's rule (all, or a seeded subset)."""
    if config.public_query_size and config.public_query_size < n_public:
        rng = np.random.default_rng([config.seed, round_number, 4])
        return np.sort(rng.choice(n_public, config.public_query_size, replace=False))
    return np.arange(n_public)


def _write_table(
    report: Report, settings: Settings, config: RunConfig, pooled: dict, accuracies: list[float]
) -> None:
    frame = pd.DataFrame(report.rows)
    per_seed = frame[frame["seed"] != "pooled"]
    chosen_a = per_seed[per_seed["score"] == "rmia"]["offline_a"]
    lines = [
        {
            "score": SCORE_LABELS[name],
            "AUC (seeds)": mean_std(per_seed[per_seed["score"] == name]["auc"]),
            "AUC (pooled)": row["auc"],
            "TPR@1% FPR [95% CI]": tpr_cell(row, "1%"),
            "TPR@0.1% FPR [95% CI]": tpr_cell(row, "0.1%"),
        }
        for name, row in pooled.items()
    ]
    report.add_section(
        "Membership inference against the published student",
        f"{len(settings.seeds)} federated runs ({config.num_clients} clients, {config.rounds} "
        f"rounds, student {config.student_model}; test accuracy {mean_std(accuracies)}); "
        f"{settings.candidates} members (pooled private records) and as many non-members "
        f"(test pool) per seed; {settings.shadows} shadow students per seed; RMIA against "
        f"{settings.population_samples} population samples, γ = 1, a tuned on the shadows "
        f"(chosen: {', '.join(f'{a:g}' for a in chosen_a)})."
        "\n\n" + markdown_table(pd.DataFrame(lines)),
    )
    report.summary["pooled"] = pooled
    report.summary["student_accuracy"] = accuracies


EXPERIMENT = Experiment(
    name="student-observer", settings_type=Settings, run_defaults=RUN_DEFAULTS, run=run
)
