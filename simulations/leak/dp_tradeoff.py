"""`dp-tradeoff`: distributed-DP noise against student accuracy, ε and the canary attack.

For each noise multiplier z this runs real federated simulations (student accuracy, ε(δ) after
the last round from the server's accountant) and the canary membership attack of `membership`
on the noised secure sum of a cohort, each client adding its noise share through the real
client path. Every attack point is checked against the DP hypothesis-testing bound
TPR ≤ e^ε·FPR + δ (Kairouz et al. 2015), with ε of the one release the attack reads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.config import RunConfig
from common.dp import epsilon, soft_label_sensitivity
from simulations.leak.canary import build_world, noisy_lira_score, observe, shadow_views
from simulations.leak.evaluate import membership_metrics, tpr_cell
from simulations.leak.experiment import Experiment, setting
from simulations.leak.metrics import clopper_pearson, roc_curve
from simulations.leak.report import Report, markdown_table, mean_std
from simulations.leak.setup import simulate_run

FPR_TARGET = 0.01
SCORES = ("confidence", "lira")


@dataclass(frozen=True)
class Settings:
    """Settings of the `dp-tradeoff` experiment (`--set key=value`)."""

    seeds: tuple[int, ...] = setting((0, 1, 2), "experiment seeds (one federated run per z each)")
    noise_multipliers: tuple[float, ...] = setting(
        (0.0, 0.1, 0.3, 1.0), "dp_noise_multiplier values z (0 = no DP)"
    )
    canaries: int = setting(300, "canaries per seed (half members) for the attack")
    shadows: int = setting(8, "target shadows per seed (even)")
    population_shadows: int = setting(4, "shadows that model the rest of the cohort")
    attack_rows: int = setting(10, "canary rows per attacked secure sum (one DP release each)")


# Small, fast federated runs: Δ₂ = sqrt(2Q) makes the noise grow with the rows per round, so a
# small public_query_size Q is the only way to keep any utility (see the report text).
RUN_DEFAULTS = {
    "num_clients": 10,
    "rounds": 3,
    "num_samples": 4000,
    "public_query_size": 20,
    "local_epochs": 3,
    "distill_epochs": 20,
    "teacher_models": "cnn1d-s",
    "student_model": "cnn1d-s",
}


def run(settings: Settings, config: RunConfig, report: Report) -> None:
    """Federated runs and attacks for every (seed, z); tables, bound checks and a plot."""
    if settings.attack_rows < 1:
        raise ValueError(f"attack_rows must be >= 1, got {settings.attack_rows}")
    n = config.num_clients
    scores: dict[tuple[float, str], list[np.ndarray]] = {}
    members: list[np.ndarray] = []
    accuracy: dict[float, list[float]] = {}
    run_epsilon: dict[float, float] = {}
    for seed in settings.seeds:
        world = build_world(
            config.replace(seed=seed),
            n,
            settings.canaries,
            settings.shadows,
            settings.population_shadows,
            report.progress,
        )
        members.append(world.is_member)
        rng = np.random.default_rng([seed, 93])
        for z in settings.noise_multipliers:
            noised = config.replace(seed=seed, dp_noise_multiplier=z)
            report.progress(f"seed {seed}, z={z}: federated run ({config.rounds} rounds)")
            run_dir = simulate_run(noised, Path(config.out_dir) / "runs" / f"seed{seed}-z{z:g}")
            final = _final_round(run_dir)
            if not final.get("dp_noise_ok", True):
                report.fail(f"seed {seed}, z={z}: a round had fewer noise shares than n_min")
            accuracy.setdefault(z, []).append(final["student_accuracy"])
            run_epsilon[z] = final.get("dp_epsilon", math.inf)
            report.progress(f"seed {seed}, z={z}: student accuracy {final['student_accuracy']:.3f}")
            observation = observe(world, n, noised, settings.attack_rows)
            views = shadow_views(world, n, rng)
            lira = noisy_lira_score(world, views, observation.confidences, observation.noise_std)
            for name, values in (("confidence", observation.confidences), ("lira", lira)):
                scores.setdefault((z, name), []).append(values)
                where = f"seed {seed}, {name}"
                checked = _checked(values, world.is_member, z, config.dp_delta, report, where)
                row = {"seed": seed, "z": z, "score": name, **checked}
                report.add_rows([row | {"student_accuracy": final["student_accuracy"]}])
    pooled_members = np.concatenate(members)
    pooled = {}
    for (z, name), values in scores.items():
        pooled[(z, name)] = _checked(
            np.concatenate(values), pooled_members, z, config.dp_delta, report, f"pooled, {name}"
        )
        report.add_rows([{"seed": "pooled", "z": z, "score": name} | pooled[(z, name)]])
    _plot(report, settings, accuracy, pooled)
    _write_tables(report, settings, config, accuracy, run_epsilon, pooled)


def _final_round(run_dir: Path) -> dict:
    """The last completed round of a federated run (metrics.csv), with its summary's accuracy."""
    metrics = pd.read_csv(run_dir / "metrics.csv")
    done = metrics[metrics["status"] == "ok"]
    if done.empty:
        raise RuntimeError(f"federated run {run_dir} completed no round; see its flower.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    row = done.iloc[-1].to_dict()
    if "dp_noise_ok" in done:
        row["dp_noise_ok"] = bool(done["dp_noise_ok"].all())
    return row | {"student_accuracy": summary["student_accuracy"]}


def check_dp_bound(
    scores: np.ndarray, is_member: np.ndarray, eps: float, delta: float
) -> dict[str, float]:
    """Attack metrics plus the DP bound TPR <= e^ε·FPR + δ at the best threshold with FPR <= 1 %.

    A violation counts only when it is significant: the 95 % Clopper-Pearson lower bound on the
    TPR exceeds e^ε times the upper bound on the achieved FPR, plus δ; equivalently the ε this
    attack proves, ``eps_lower`` = ln((TPR_lo − δ) / FPR_hi) (an audit lower bound), exceeds ε.

    Parameters
    ----------
    scores : (n,) attack scores, larger = more likely a member.
    is_member : (n,) bool ground truth.
    eps : ε of the release the scores were computed from (inf = no DP).
    delta : δ of that release.

    Returns
    -------
    `membership_metrics` plus ``epsilon``, ``bound_at_1%`` (capped at 1), ``achieved_fpr``,
    ``eps_lower`` and ``violation``.
    """
    row = membership_metrics(scores, is_member)
    fpr, tpr = roc_curve(scores, is_member)
    best = int(np.argmax(np.where(fpr <= FPR_TARGET, tpr, -1.0)))
    true_pos = round(tpr[best] * row["members"])
    false_pos = round(fpr[best] * row["non_members"])
    tpr_low = clopper_pearson(true_pos, row["members"])[0]
    fpr_high = clopper_pearson(false_pos, row["non_members"])[1]
    eps_lower = math.log((tpr_low - delta) / fpr_high) if tpr_low > delta else 0.0
    bound = math.exp(min(eps, 700.0)) * FPR_TARGET + delta
    return row | {
        "epsilon": eps,
        "bound_at_1%": min(bound, 1.0),
        "achieved_fpr": float(fpr[best]),
        "eps_lower": max(eps_lower, 0.0),
        "violation": bool(eps_lower > eps),
    }


def _checked(
    scores: np.ndarray, is_member: np.ndarray, z: float, delta: float, report: Report, where: str
) -> dict[str, float]:
    """`check_dp_bound` with ε of one release at noise z; a violation fails the report loudly."""
    eps = epsilon(z, 1, delta) if z > 0 else math.inf
    row = check_dp_bound(scores, is_member, eps, delta)
    if row["violation"]:
        report.fail(
            f"DP bound violated at z={z} ({where}): TPR {row['tpr@1%']:.4f} at FPR "
            f"{row['achieved_fpr']:.4f} proves ε >= {row['eps_lower']:.3f} > ε = {eps:.3f}; "
            "the aggregate carries less noise than the accountant assumes"
        )
    return row


def _plot(report: Report, settings: Settings, accuracy: dict, pooled: dict) -> None:
    zs = list(settings.noise_multipliers)
    figure = Figure(figsize=(8, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    left = figure.add_subplot(1, 2, 1)
    means = [np.mean(accuracy[z]) for z in zs]
    stds = [np.std(accuracy[z], ddof=1) if len(accuracy[z]) > 1 else 0.0 for z in zs]
    left.errorbar(range(len(zs)), means, yerr=stds, marker="o", capsize=3)
    left.axhline(0.1, color="k", ls="--", lw=0.8, label="chance (10 classes)")
    left.set(ylabel="student test accuracy", ylim=(0, 1))
    right = figure.add_subplot(1, 2, 2)
    for name in SCORES:
        tprs = [pooled[(z, name)]["tpr@1%"] for z in zs]
        right.plot(range(len(zs)), tprs, marker="o", label=name)
    right.plot(
        range(len(zs)), [pooled[(z, "lira")]["bound_at_1%"] for z in zs], "k:", label="DP bound"
    )
    right.set(ylabel="TPR at 1 % FPR", yscale="log", ylim=(1e-3, 1.05))
    for axes in (left, right):
        axes.set_xticks(range(len(zs)), [f"z={z:g}" for z in zs])
        axes.grid(alpha=0.3)
        axes.legend()
    figure.savefig(report.plot_path("dp_tradeoff.png"), dpi=130)


def _epsilon_cell(eps: float) -> str:
    return "∞ (no DP)" if math.isinf(eps) else f"{eps:.2f}"


def _write_tables(
    report: Report,
    settings: Settings,
    config: RunConfig,
    accuracy: dict,
    run_epsilon: dict,
    pooled: dict,
) -> None:
    lines = []
    for z in settings.noise_multipliers:
        for name in SCORES:
            row = pooled[(z, name)]
            lines.append(
                {
                    "z": f"{z:g}",
                    f"ε run ({config.rounds} rounds)": _epsilon_cell(run_epsilon[z]),
                    "student acc": mean_std(accuracy[z]),
                    "ε release": _epsilon_cell(row["epsilon"]),
                    "score": name,
                    "AUC": row["auc"],
                    "TPR@1% FPR [95% CI]": tpr_cell(row, "1%"),
                    "bound e^ε·1%+δ": row["bound_at_1%"],
                    "ε proven": row["eps_lower"],
                    "check": "VIOLATION" if row["violation"] else "ok",
                }
            )
    q, n = config.public_query_size, config.num_clients
    per_entry = math.sqrt(2 * q) / n
    attack_sigma = soft_label_sensitivity(settings.attack_rows)
    report.add_section(
        "Distributed DP: accuracy, ε and the canary attack",
        f"{len(settings.seeds)} seeds; {n} clients; federated runs of {config.rounds} rounds "
        f"querying Q = {q} public rows per round; δ = {config.dp_delta}. The attack reads "
        f"{settings.canaries} canaries per seed (half members) from noised secure sums of all "
        f"{n} clients, {settings.attack_rows} canary rows per sum, so each canary's row is one "
        f"release with ε(z, 1 round). TPRs pooled over seeds; 'ε proven' is the lower bound "
        f"ln((TPR_lo − δ)/FPR_hi) this attack certifies (95 % CIs); a check fails only if it "
        f"exceeds ε.\n\n{markdown_table(pd.DataFrame(lines))}",
    )
    report.add_section(
        "Why Q must be small",
        f"The Gaussian noise is calibrated to the L2 sensitivity of the whole (Q, K) sum: "
        f"Δ₂ = sqrt(2Q) (one client replaced; rows on the simplex; `common/dp.py`). Every entry "
        f"of the sum carries noise σ = z·sqrt(2Q), while a client moves one entry by at most 1, "
        f"so the ensemble mean carries noise z·sqrt(2Q)/n per entry = {per_entry:.2f}·z here "
        f"(Q = {q}, n = {n}), against soft-label entries that are all below 1. Utility needs "
        f"z·sqrt(2Q) ≪ n: few rows per round, many clients, or a large ε. The attack's sums "
        f"of {settings.attack_rows} rows carry σ = {attack_sigma:.2f}·z per entry of the sum.",
    )
    report.summary["pooled"] = {f"z={z:g}/{s}": row for (z, s), row in pooled.items()}
    report.summary["student_accuracy"] = {f"z={z:g}": values for z, values in accuracy.items()}
    report.summary["epsilon_run"] = {f"z={z:g}": e for z, e in run_epsilon.items()}


EXPERIMENT = Experiment(
    name="dp-tradeoff", settings_type=Settings, run_defaults=RUN_DEFAULTS, run=run
)
