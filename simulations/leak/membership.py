"""`membership`: a malicious server's canary attack, without and with secure aggregation.

The server plants canaries in the public query set (see `simulations.leak.canary`) and scores
each from what it observes: without secure aggregation the target client's own soft labels
(setting n = 1), with it the decoded SecAgg+ sum of a cohort of n real clients. Scores are the
observed confidence on the canary's true label, online LiRA with shadow teachers, and RMIA
(online, and offline from the OUT shadows only) against ordinary public rows as population
samples. Beside each attack: the ε lower bound its scores prove (`simulations.leak.audit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.config import RunConfig
from simulations.leak.audit import audit_epsilon_from_scores
from simulations.leak.canary import (
    build_world,
    lira_score,
    observe,
    reference_views,
    rmia_scores,
    shadow_views,
)
from simulations.leak.evaluate import membership_metrics, tpr_cell
from simulations.leak.experiment import Experiment, setting
from simulations.leak.metrics import roc_curve
from simulations.leak.plots import plot_roc_loglog
from simulations.leak.report import Report, markdown_table, mean_std
from simulations.leak.rmia import choose_offline_a

SCORES = ("confidence", "lira", "rmia", "rmia-offline")
SCORE_LABELS = {
    "confidence": "confidence",
    "lira": "LiRA (online)",
    "rmia": "RMIA (online)",
    "rmia-offline": "RMIA (offline, a tuned)",
}
# δ of the ε lower bound each attack proves (no DP here: it shows how much leakage is certain).
AUDIT_DELTA = 1e-5


@dataclass(frozen=True)
class Settings:
    """Settings of the `membership` experiment (`--set key=value`)."""

    seeds: tuple[int, ...] = setting((0, 1, 2), "experiment seeds; each retrains everything")
    cohort_sizes: tuple[int, ...] = setting((2, 5, 10), "secure-aggregation cohorts n")
    canaries: int = setting(700, "canaries per seed (half members), from the test pool")
    shadows: int = setting(16, "target shadows per seed (even; each trains on half the canaries)")
    population_shadows: int = setting(8, "shadows that model the rest of a cohort")
    reference_rows: int = setting(1000, "public rows queried as RMIA's population samples z")


def run(settings: Settings, config: RunConfig, report: Report) -> None:
    """Train the worlds, attack every setting, write tables and ROC plots."""
    sizes = sorted(set(settings.cohort_sizes))
    if sizes[0] < 2:
        raise ValueError(f"cohort_sizes must be >= 2 (n = 1 is always run), got {sizes}")
    # A cohort of 2 is below our default secagg_min_cohort (3), which clients would refuse.
    config = config.replace(secagg_min_cohort=min(config.secagg_min_cohort, sizes[0]))
    settings_n = [1, *sizes]
    scores: dict[tuple[int, str], list[np.ndarray]] = {}
    members: list[np.ndarray] = []
    quantisation: list[float] = []
    for seed in settings.seeds:
        world = build_world(
            config.replace(seed=seed),
            sizes[-1],
            settings.canaries,
            settings.shadows,
            settings.population_shadows,
            report.progress,
            settings.reference_rows,
        )
        members.append(world.is_member)
        rng = np.random.default_rng([seed, 92])
        for n in settings_n:
            observation = observe(world, n, config)
            if observation.first_sum is not None:
                quantisation.append(
                    observation.first_sum.quantisation_error
                    / observation.first_sum.quantisation_bound
                )
            views = shadow_views(world, n, rng)
            population_views = reference_views(world, n, rng)
            offline_a = choose_offline_a(views, population_views, world.shadow_in)
            for name, values in (
                ("confidence", observation.confidences),
                ("lira", lira_score(world, views, observation.confidences)),
                ("rmia", rmia_scores(world, views, population_views, observation, None)),
                (
                    "rmia-offline",
                    rmia_scores(world, views, population_views, observation, offline_a),
                ),
            ):
                scores.setdefault((n, name), []).append(values)
                row = {"seed": seed, "n": n, "score": name, "offline_a": offline_a}
                report.add_rows([row | _metrics(name, values, world.is_member)])
        report.progress(f"seed {seed}: attacked n = {settings_n}")
    pooled_members = np.concatenate(members)
    pooled = {
        (n, name): _metrics(name, np.concatenate(values), pooled_members)
        for (n, name), values in scores.items()
    }
    report.add_rows([{"seed": "pooled", "n": n, "score": s} | m for (n, s), m in pooled.items()])
    for n in settings_n:
        curves = {
            name: roc_curve(np.concatenate(scores[(n, name)]), pooled_members) for name in SCORES
        }
        title = "no secure aggregation" if n == 1 else f"secure aggregation, n = {n}"
        plot_roc_loglog(curves, report.plot_path(f"roc_n{n}.png"), title)
    _plot_against_n(report, settings_n, pooled)
    _write_tables(report, settings, settings_n, pooled, quantisation)


def _metrics(name: str, values: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """Attack metrics and the ε lower bound the scores prove (held-out threshold, 95 %); for
    the raw confidence also the membership signal itself: the gap between the members' and
    non-members' mean observed confidence, and its standard error."""
    row = membership_metrics(values, is_member)
    row["eps_lower"] = audit_epsilon_from_scores(values, is_member, AUDIT_DELTA)
    if name == "confidence":
        inside, outside = values[is_member], values[~is_member]
        row["gap"] = float(inside.mean() - outside.mean())
        row["gap_se"] = float(
            np.sqrt(inside.var(ddof=1) / inside.size + outside.var(ddof=1) / outside.size)
        )
    return row


def _plot_against_n(report: Report, sizes: list[int], pooled: dict) -> None:
    figure = Figure(figsize=(8, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    for column, (metric, label) in enumerate((("auc", "ROC AUC"), ("tpr@1%", "TPR at 1 % FPR"))):
        axes = figure.add_subplot(1, 2, column + 1)
        for name in SCORES:
            axes.plot(sizes, [pooled[(n, name)][metric] for n in sizes], marker="o", label=name)
        axes.axhline(0.5 if metric == "auc" else 0.01, color="k", ls="--", lw=0.8, label="chance")
        axes.set(xscale="log", xlabel="cohort size n (1 = no secure aggregation)", ylabel=label)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.savefig(report.plot_path("attack_vs_cohort.png"), dpi=130)


def _write_tables(
    report: Report,
    settings: Settings,
    sizes: list[int],
    pooled: dict,
    quantisation: list[float],
) -> None:
    frame = pd.DataFrame(report.rows)
    per_seed = frame[frame["seed"] != "pooled"]
    lines = []
    for n in sizes:
        for name in SCORES:
            seeds = per_seed[(per_seed["n"] == n) & (per_seed["score"] == name)]
            row = pooled[(n, name)]
            lines.append(
                {
                    "observation": "target's own soft labels" if n == 1 else f"secagg sum, n={n}",
                    "score": SCORE_LABELS[name],
                    "AUC (seeds)": mean_std(seeds["auc"]),
                    "AUC (pooled)": row["auc"],
                    "TPR@1% FPR [95% CI]": tpr_cell(row, "1%"),
                    "TPR@0.1% FPR [95% CI]": tpr_cell(row, "0.1%"),
                    "ε proven (95%)": row["eps_lower"],
                }
            )
    table = markdown_table(pd.DataFrame(lines))
    undiluted = pooled[(1, "confidence")]["gap"]
    gaps = markdown_table(
        pd.DataFrame(
            [
                {
                    "n": n,
                    "gap = mean conf(members) − mean conf(non-members)": (
                        f"{pooled[(n, 'confidence')]['gap']:.4f} ± "
                        f"{pooled[(n, 'confidence')]['gap_se']:.4f}"
                    ),
                    "n · gap / gap(n=1)": n * pooled[(n, "confidence")]["gap"] / undiluted,
                }
                for n in sizes
            ]
        ),
        digits=2,
    )
    non_members = pooled[(1, "lira")]["non_members"]
    offline_a = per_seed[per_seed["score"] == "rmia-offline"]["offline_a"]
    report.add_section(
        "Canary membership attack",
        f"{len(settings.seeds)} seeds × {settings.canaries} canaries (half members); TPRs and "
        f"pooled AUC over all {non_members} non-members, AUC (seeds) as mean ± std. "
        f"At 0.1 % FPR with {non_members} non-members a threshold may pass "
        f"{int(0.001 * non_members)} false positives. LiRA and online RMIA use all "
        f"{settings.shadows} shadows (half IN per canary); offline RMIA only each canary's "
        f"{settings.shadows // 2} OUT shadows, with a chosen per seed and n by attacking the "
        f"shadows themselves (chosen a: {', '.join(f'{a:g}' for a in offline_a)}). RMIA's "
        f"population samples are {settings.reference_rows} public rows read from the same "
        "reports or secure sums, γ = 1. 'ε proven' is the 95 % lower bound on ε these scores "
        f"certify (held-out threshold, δ = {AUDIT_DELTA:g}; `simulations.leak.audit`): the "
        f"leakage that is certain without any DP.\n\n{table}",
    )
    report.add_section(
        "The membership signal under secure aggregation",
        "The observed confidence on a canary moves by the target's own change divided by n "
        "(its share of the cohort mean). The gap between members and non-members (pooled, ± "
        "standard error) shows that dilution directly; a last column near 1 means exactly "
        f"1/n.\n\n{gaps}",
    )
    report.add_section(
        "Secure sum checked",
        f"Every secure sum was decoded and compared with the plain float sum: the largest "
        f"deviation was {max(quantisation, default=0.0):.2f} of the fixed-point bound "
        "n·2^-(f+1). n = 2 ran with secagg_min_cohort=2 (the default of 3 refuses it).",
    )
    report.summary["pooled"] = {f"n={n}/{s}": m for (n, s), m in pooled.items()}
    report.summary["max_quantisation_error_over_bound"] = max(quantisation, default=0.0)


EXPERIMENT = Experiment(name="membership", settings_type=Settings, run_defaults={}, run=run)
