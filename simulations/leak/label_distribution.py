"""`label-distribution`: infer clients' class histograms from what the server observes.

Without secure aggregation the server holds each client's soft labels on the public set; with
it, only the decoded SecAgg+ sum of the cohort. Two estimators from `simulations.leak.scores`:
the naive mean soft label, and the prior-shift calibrated estimate against a reference: a model
the attacker trains on its own records (the test pool), or, without secure aggregation, the
ensemble of all clients (uniform prior). With a method that abstains per public row (run config
`method=selective` or `certainty`), the per-row weights are attacked too: one client's own
weights without secure aggregation, the per-row totals (how many clients kept each row) with it,
read as a class histogram through the attacker's labels of the public rows. Errors are L1 and
KL(true ‖ estimate) against each client's true histogram, for several Dirichlet α.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.config import RunConfig
from common.methods.base import weighted_rows
from simulations.leak.experiment import Experiment, setting
from simulations.leak.report import Report, markdown_table, mean_std
from simulations.leak.scores import (
    abstention_class_histogram,
    calibrated_class_histogram,
    estimate_class_histogram,
    kl_divergence,
    l1_error,
)
from simulations.leak.secure import secure_sum
from simulations.leak.setup import (
    REFERENCE_INDEX,
    load_federation,
    test_records,
    train_and_contribute,
    train_and_report,
)


@dataclass(frozen=True)
class Settings:
    """Settings of the `label-distribution` experiment (`--set key=value`)."""

    seeds: tuple[int, ...] = setting((0, 1, 2), "experiment seeds")
    alphas: tuple[float, ...] = setting((0.1, 0.5, 10.0), "Dirichlet α of the partitions")


RUN_DEFAULTS = {"num_samples": 10000}


def run(settings: Settings, config: RunConfig, report: Report) -> None:
    """Train every client per (seed, α), estimate histograms from both views, tabulate errors."""
    examples = {}
    for seed in settings.seeds:
        for alpha in settings.alphas:
            alpha_config = config.replace(seed=seed, partitioner="dirichlet", dirichlet_alpha=alpha)
            rows, example = _attack(alpha_config, report)
            report.add_rows([{"seed": seed, "alpha": alpha} | row for row in rows])
            examples.setdefault(alpha, example)
    _plot(report, settings, examples)
    _write_table(report, settings, config)


def _attack(config: RunConfig, report: Report) -> tuple[list[dict], dict[str, np.ndarray]]:
    """One federation: per-client and aggregate estimates against the true histograms."""
    federation = load_federation(config)
    splits = federation.splits
    query = np.arange(len(splits.public_x))
    if config.public_query_size:
        query = query[: config.public_query_size]
    n = config.num_clients
    report.progress(f"seed {config.seed}, α={config.dirichlet_alpha}: training {n} clients")
    contributions = [
        train_and_contribute(config, splits, federation.client_data(i), query)[1] for i in range(n)
    ]
    reports = [contribution.probs for contribution in contributions]
    reference_data = test_records(splits, np.arange(len(splits.test_y)), REFERENCE_INDEX)
    reference = train_and_report(config, splits, reference_data, query)[1]
    reference_prior = np.bincount(splits.test_y, minlength=splits.num_classes) / len(splits.test_y)
    aggregate = secure_sum(contributions, config)
    mean = weighted_rows(aggregate.weighted_sum, aggregate.total_weight, floor=0.0)[0]  # (Q, K)

    def estimates(probs: np.ndarray, with_ensemble: bool) -> dict[str, np.ndarray]:
        found = {
            "naive": estimate_class_histogram(probs),
            "calibrated (attacker's model)": calibrated_class_histogram(
                probs, reference, reference_prior, config.temperature
            ),
        }
        if with_ensemble:  # needs one client's report besides the ensemble: no secagg
            found["calibrated (ensemble)"] = calibrated_class_histogram(
                probs, mean, temperature=config.temperature
            )
        return found

    truths = [federation.class_histogram(i) for i in range(n)]
    cohort_mean = np.mean(truths, axis=0)  # what the uniform ensemble mixes
    own = [estimates(probs, with_ensemble=True) for probs in reports]
    from_aggregate = estimates(mean, with_ensemble=False)
    rows = [
        _errors("own soft labels (no secagg)", e, "client", [o[e] for o in own], truths)
        for e in own[0]
    ]
    for target, truth in (("client", truths), ("cohort mean", [cohort_mean])):
        rows += [
            _errors("secure aggregate", e, target, [from_aggregate[e]] * len(truth), truth)
            for e in from_aggregate
        ]
    if contributions[0].row_weights is not None:  # the method abstains per row: attack that too
        labels = reference.argmax(axis=1)  # (Q,) the attacker's own labels of the public rows
        own_rows = [
            abstention_class_histogram(c.row_weights, labels, splits.num_classes)
            for c in contributions
        ]
        from_totals = abstention_class_histogram(aggregate.total_weight, labels, splits.num_classes)
        rows.append(
            _errors("own row weights (no secagg)", "abstentions", "client", own_rows, truths)
        )
        for target, truth in (("client", truths), ("cohort mean", [cohort_mean])):
            rows.append(
                _errors(
                    "secure per-row totals",
                    "abstentions",
                    target,
                    [from_totals] * len(truth),
                    truth,
                )
            )
    uniform = np.full(splits.num_classes, 1.0 / splits.num_classes)
    rows.append(_errors("none (uniform guess)", "uniform", "client", [uniform] * n, truths))
    example = {
        "true": truths[0],
        "own soft labels, calibrated (ensemble)": own[0]["calibrated (ensemble)"],
        "secure aggregate, naive": from_aggregate["naive"],
    }
    return rows, example


def _errors(
    observation: str,
    estimator: str,
    target: str,
    estimates: list[np.ndarray],
    truths: list[np.ndarray],
) -> dict:
    """Mean L1 and KL(true ‖ estimate) over the listed (estimate, truth) pairs."""
    pairs = list(zip(estimates, truths, strict=True))
    return {
        "observation": observation,
        "estimator": estimator,
        "against": target,
        "l1": float(np.mean([l1_error(t, e) for e, t in pairs])),
        "kl": float(np.mean([kl_divergence(t, e) for e, t in pairs])),
    }


def _plot(report: Report, settings: Settings, examples: dict) -> None:
    frame = pd.DataFrame(report.rows)
    per_client = frame[frame["against"] == "client"]
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    left = figure.add_subplot(1, 2, 1)
    for (observation, estimator), group in per_client.groupby(["observation", "estimator"]):
        mean = group.groupby("alpha")["l1"].mean()
        left.plot(mean.index, mean.values, marker="o", label=f"{observation}, {estimator}")
    left.set(xscale="log", xlabel="Dirichlet α", ylabel="L1 error per client")
    left.grid(alpha=0.3)
    left.legend(fontsize=6, loc="best")
    alpha = min(settings.alphas)
    right = figure.add_subplot(1, 2, 2)
    width = 0.8 / len(examples[alpha])
    for offset, (name, histogram) in enumerate(examples[alpha].items()):
        right.bar(np.arange(len(histogram)) + offset * width, histogram, width, label=name)
    right.set(xlabel="class", ylabel="share", title=f"client 0, α={alpha:g}, seed 0")
    right.legend(fontsize=7)
    figure.savefig(report.plot_path("label_distribution.png"), dpi=130)


def _write_table(report: Report, settings: Settings, config: RunConfig) -> None:
    frame = pd.DataFrame(report.rows)
    lines = []
    keys = ["alpha", "observation", "estimator", "against"]
    for key, group in frame.groupby(keys, sort=False):
        lines.append(
            dict(zip(keys, key, strict=True))
            | {"L1 (seeds)": mean_std(group["l1"]), "KL nats (seeds)": mean_std(group["kl"])}
        )
    table = pd.DataFrame(lines).sort_values(["alpha"], kind="stable")
    table["alpha"] = table["alpha"].map("{:g}".format)
    report.add_section(
        "Class-histogram inference",
        f"{config.num_clients} clients, {len(settings.seeds)} seeds, Q = "
        f"{config.public_query_size or 'all'} public rows, T = {config.temperature}. Errors "
        "are means over clients (per seed), then mean ± std over seeds. 'against cohort mean' "
        "compares the aggregate's estimate with the mean of the clients' histograms, which "
        "secure aggregation still reveals.\n\n" + markdown_table(table),
    )
    summary = frame.groupby(keys)[["l1", "kl"]].mean().reset_index()
    report.summary["mean_errors"] = summary.to_dict(orient="records")


EXPERIMENT = Experiment(
    name="label-distribution", settings_type=Settings, run_defaults=RUN_DEFAULTS, run=run
)
