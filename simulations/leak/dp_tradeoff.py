"""`dp-tradeoff`: the privacy frontier — student accuracy against ε for both DP modes, with
the canary attack's success and an audit lower bound on ε beside every DP point.

Two federations, both run with the in-process engine (`simulations.bench.plain_loop`, the
clients' and the server's own code without Flower's messaging):

- record-level DP (`dp_mode=record`): `record_clients` clients (all in every round) train DP-SGD
  teachers; one point per DP-SGD noise σ, ε per record from Opacus' accountant over every step;
- client-level DP (`dp_mode=client`): the run config's federation (by default 1000 clients of
  ~825 records each, half sampled, one round releasing 4000 public rows); one point per noise
  multiplier z, ε per client from the PLD accountant over the rounds the most-sampled client took
  part in. A one-round federation trains its cohort once per seed and noises the same reports
  for every z (`simulations.leak.one_shot`, `run_plain`'s round step for step); with more
  rounds every z is its own `run_plain`.

Each federation also runs without DP (σ or z absent; z = 0 among `noise_multipliers`): the
non-private line. Attacks per DP point (the canary attack of `canary`, online LiRA and raw
confidence): record-level reads the target's own soft labels (no secure aggregation, the
strongest view) of a DP-SGD teacher after one round; client-level reads noised secure sums of
an `attack_cohort`-client cohort (ε per release does not depend on the cohort size, and a small
cohort is the attacker's best case). The attack worlds have their own, smaller data set
(`attack_num_samples`): they retrain a dozen models per point, and a federation's data split
over the world's few clients would give each far more records than a federation's client. From
the scores, `simulations.leak.audit` gives an ε lower
bound (held-out threshold, 95 % confidence); a bound above the accountant's ε of that release
fails the experiment loudly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.config import RunConfig
from common.data import load_splits
from common.dp import epsilon, soft_label_sensitivity
from common.dp_sgd import epsilon_after_rounds, steps_per_round
from server.cohort import NodeInfo, cohort_size, sample_cohort
from simulations.bench.plain_loop import run_plain
from simulations.leak.audit import audit_epsilon_from_scores, empirical_epsilon
from simulations.leak.canary import (
    CanaryWorld,
    build_world,
    lira_score,
    noisy_lira_score,
    observe,
    shadow_views,
)
from simulations.leak.evaluate import membership_metrics, tpr_cell
from simulations.leak.experiment import Experiment, setting
from simulations.leak.metrics import roc_curve
from simulations.leak.one_shot import cohort_reports, release
from simulations.leak.report import Report, markdown_table, mean_std

FPR_TARGET = 0.01
SCORES = ("confidence", "lira")
MODES = ("record", "client")


@dataclass(frozen=True)
class Settings:
    """Settings of the `dp-tradeoff` experiment (`--set key=value`)."""

    seeds: tuple[int, ...] = setting((0, 1, 2), "experiment seeds (one federated run per point)")
    noise_multipliers: tuple[float, ...] = setting(
        (0.0, 0.6, 1.0, 2.0),
        "client-level: dp_noise_multiplier values z (0 = the non-private line)",
    )
    record_noise_multipliers: tuple[float, ...] = setting(
        (0.8, 1.0, 1.5), "record-level: DP-SGD noise σ per point (the non-private line is added)"
    )
    record_clients: int = setting(10, "record-level federation: clients (all in every round)")
    record_rounds: int = setting(5, "record-level federation: rounds")
    record_num_samples: int = setting(
        60000, "record-level federation: MNIST-1D samples (10 clients: 3840 records each)"
    )
    record_query_size: int = setting(0, "record-level: public rows per round (0 = all)")
    record_local_epochs: int = setting(2, "record-level: teacher epochs (of ⌈1/q⌉ steps) a round")
    canaries: int = setting(300, "canaries per seed (half members) for the attacks")
    shadows: int = setting(8, "target shadows per seed (even)")
    population_shadows: int = setting(4, "shadows that model the rest of the cohort")
    attack_rows: int = setting(10, "client-level: canary rows per attacked secure sum (a release)")
    attack_cohort: int = setting(10, "client-level: clients in each attacked secure sum")
    attack_num_samples: int = setting(
        20000, "MNIST-1D samples of each attack world (its own split of target, cohort, shadows)"
    )


# The client-level federation: 1000 clients, 500 sampled per round as the scale suite samples.
# Its limit is data per client, not noise: one cnn1d-s teacher on 300 MNIST-1D records reaches
# ~0.3, on 1000 ~0.7 (and an ensemble of 300-record teachers saturates near 0.55), so the clients
# get ~825 records each (850k generated samples, 1 % public and 2 % test: 8330 public and 17k test
# rows). One round releases Q = 4000 public rows (Δ₂ = sqrt(2Q) = 89.4, sqrt(2) per row): one
# Gaussian release is as private as many smaller ones of the same total rows (see
# `simulations.leak.one_shot`), and it trains each teacher once. DS-FL's sharpening of the mean.
RUN_DEFAULTS = {
    "num_clients": 1000,
    "fraction": 0.5,
    "min_clients": 3,  # secagg_min_cohort: a 3-client test federation still forms a cohort
    "partitioner": "iid",
    "num_samples": 850000,
    "public_fraction": 0.01,
    "test_fraction": 0.02,
    "rounds": 1,
    "public_query_size": 4000,
    "method": "dsfl",
    "local_epochs": 10,
    "distill_epochs": 20,
    "teacher_models": "cnn1d-s",
    "student_model": "cnn1d-s",
}


@dataclass(frozen=True)
class Point:
    """One frontier point: a federation, its DP noise and the ε its run and one release carry."""

    mode: str
    noise: float  # σ (record) or z (client); 0 = no DP
    config: RunConfig

    @property
    def private(self) -> bool:
        return self.noise > 0

    @property
    def label(self) -> str:
        if not self.private:
            return f"{self.mode}: no DP"
        return f"{self.mode}: {'σ' if self.mode == 'record' else 'z'}={self.noise:g}"


def run(settings: Settings, config: RunConfig, report: Report) -> None:
    """Federated runs and attacks for every (seed, point); tables, audits and the figure."""
    _check_settings(settings)
    points = frontier_points(settings, config)
    accuracy: dict[str, list[float]] = {}
    ensemble: dict[str, list[float]] = {}
    run_epsilon: dict[str, float] = {}
    scores: dict[tuple[str, str], list[np.ndarray]] = {}
    members: dict[str, list[np.ndarray]] = {}
    for seed in settings.seeds:
        for point, row in _federated_runs(points, seed, report):
            accuracy.setdefault(point.label, []).append(float(row["student_accuracy"]))
            ensemble.setdefault(point.label, []).append(float(row["ensemble_public_accuracy"]))
            run_epsilon[point.label] = run_epsilon_of(point, point.config.replace(seed=seed))
            report.progress(
                f"seed {seed}, {point.label}: student accuracy {accuracy[point.label][-1]:.3f} "
                f"(ensemble {ensemble[point.label][-1]:.3f}), ε = {run_epsilon[point.label]:.3g}"
            )
        for label, view, is_member in _attack_views(settings, points, seed, report):
            members.setdefault(label, []).append(is_member)
            for name, values in view.items():
                scores.setdefault((label, name), []).append(values)
    pooled = {}
    for point in (p for p in points if p.private):
        is_member = np.concatenate(members[point.label])
        eps = release_epsilon(point)
        for name in SCORES:
            values = np.concatenate(scores[(point.label, name)])
            row = audited(values, is_member, eps, point.config.dp_delta, report, point.label)
            pooled[(point.label, name)] = row
            report.add_rows([{"point": point.label, "mode": point.mode, "score": name} | row])
    for point in points:
        for seed, value in zip(settings.seeds, accuracy[point.label], strict=True):
            report.add_rows(
                [
                    {
                        "point": point.label,
                        "mode": point.mode,
                        "noise": point.noise,
                        "seed": seed,
                        "student_accuracy": value,
                        "epsilon": run_epsilon[point.label],
                    }
                ]
            )
    _plot(report, points, accuracy, run_epsilon, pooled)
    _write_tables(report, settings, points, accuracy, ensemble, run_epsilon, pooled)


def frontier_points(settings: Settings, config: RunConfig) -> list[Point]:
    """The record-level federation's points (no DP, then each σ) and the run config's
    client-level points (each z, 0 = no DP)."""
    defaults = RunConfig()  # the record federation splits its own samples as a default run does
    record = config.replace(
        num_clients=settings.record_clients,
        num_samples=settings.record_num_samples,
        public_fraction=defaults.public_fraction,
        test_fraction=defaults.test_fraction,
        fraction=1.0,
        rounds=settings.record_rounds,
        public_query_size=settings.record_query_size,
        local_epochs=settings.record_local_epochs,
        dp_noise_multiplier=0.0,
    )
    points = [Point("record", 0.0, record.replace(dp_mode="off"))]
    points += [
        Point("record", sigma, record.replace(dp_mode="record", dp_record_noise_multiplier=sigma))
        for sigma in settings.record_noise_multipliers
    ]
    for z in settings.noise_multipliers:
        mode = "client" if z > 0 else "off"
        points.append(Point("client", z, config.replace(dp_mode=mode, dp_noise_multiplier=z)))
    return points


def run_epsilon_of(point: Point, config: RunConfig) -> float:
    """ε(δ) of the whole run for its most exposed client/record (inf = no DP).

    Record-level: every client trains in every round (fraction 1), so ε after all rounds'
    DP-SGD steps. Client-level: the server picks the cohorts, so no amplification by sampling;
    ε composes over the rounds of the client sampled most often (cohorts re-drawn as the server
    draws them)."""
    if not point.private:
        return math.inf
    if point.mode == "record":
        return epsilon_after_rounds(config, config.rounds)
    nodes = [NodeInfo(node_id=i + 1, index=i, label=str(i)) for i in range(config.num_clients)]
    taken_part = np.zeros(config.num_clients, dtype=np.int64)
    for round_number in range(1, config.rounds + 1):
        cohort = sample_cohort(
            nodes, config.fraction, config.min_clients, config.seed, round_number
        )
        taken_part[[node.index for node in cohort]] += 1
    return epsilon(point.noise, int(taken_part.max()), config.dp_delta)


def release_epsilon(point: Point) -> float:
    """ε(δ) of the one release an attack reads: a DP-SGD teacher after one round (record), or
    one noised secure sum (client)."""
    if point.mode == "record":
        return epsilon_after_rounds(point.config, 1)
    return epsilon(point.noise, 1, point.config.dp_delta)


def _federated_runs(points: list[Point], seed: int, report: Report):
    """Yield (point, its last completed round's metrics row) for every point at `seed`.

    One-round client-level points share one cohort's teachers (`one_shot`); every other point is
    its own `run_plain`."""
    one_shot = [p for p in points if p.mode == "client" and p.config.rounds == 1]
    for point in (p for p in points if p not in one_shot):
        config = point.config.replace(seed=seed)
        report.progress(f"seed {seed}, {point.label}: federated run ({config.rounds} rounds)")
        rows = [row for row in run_plain(config, load_splits(config)) if row["status"] == "ok"]
        if not rows:
            raise RuntimeError(f"federated run ({point.label}, seed {seed}) completed no round")
        yield point, rows[-1]
    if not one_shot:
        return
    teachers = one_shot[0].config.replace(seed=seed, dp_mode="off", dp_noise_multiplier=0.0)
    splits = load_splits(teachers)
    report.progress(
        f"seed {seed}: one-shot client-level round, {_cohort(teachers)} teachers trained once "
        f"for z in {[p.noise for p in one_shot]}"
    )
    reports = cohort_reports(teachers, splits)
    for point in one_shot:
        row = release(point.config.replace(seed=seed), splits, reports)
        if row["status"] != "ok":
            raise RuntimeError(f"one-shot release ({point.label}, seed {seed}): {row['status']}")
        yield point, row


def _attack_views(settings: Settings, points: list[Point], seed: int, report: Report):
    """Yield (point label, {score name: (C,) scores}, (C,) is_member) for every DP point."""
    rng = np.random.default_rng([seed, 93])
    for point in (p for p in points if p.private and p.mode == "record"):
        # The target's own soft labels (n = 1): every model is a one-round DP-SGD teacher.
        world = _world(point.config.replace(seed=seed), 2, settings, report)
        observed = observe(world, 1, point.config).confidences
        lira = lira_score(world, shadow_views(world, 1, rng), observed)
        yield point.label, {"confidence": observed, "lira": lira}, world.is_member
    client_points = [p for p in points if p.private and p.mode == "client"]
    if not client_points:
        return
    n = min(settings.attack_cohort, client_points[0].config.num_clients)
    # Noise enters at the secure sum only: one world of noise-free teachers serves every z.
    teachers = client_points[0].config.replace(seed=seed, dp_mode="off", dp_noise_multiplier=0.0)
    world = _world(teachers, n, settings, report)
    for point in client_points:
        observation = observe(world, n, point.config.replace(seed=seed), settings.attack_rows)
        views = shadow_views(world, n, rng)
        lira = noisy_lira_score(world, views, observation.confidences, observation.noise_std)
        yield (
            point.label,
            {"confidence": observation.confidences, "lira": lira},
            world.is_member,
        )


def _world(config: RunConfig, n_clients: int, settings: Settings, report: Report) -> CanaryWorld:
    """The canary world of `canary.build_world` on `attack_num_samples` samples split as
    `RunConfig`'s defaults split (the attacker's pool is the test pool): target,
    n_clients − 1 others and shadows, all trained as `config` trains teachers (DP-SGD under
    dp_mode=record)."""
    defaults = RunConfig()
    return build_world(
        config.replace(
            fraction=1.0,
            num_samples=settings.attack_num_samples,
            public_fraction=defaults.public_fraction,
            test_fraction=defaults.test_fraction,
        ),
        n_clients,
        settings.canaries,
        settings.shadows,
        settings.population_shadows,
        report.progress,
    )


def check_dp_bound(
    scores: np.ndarray, is_member: np.ndarray, eps: float, delta: float
) -> dict[str, float]:
    """Attack metrics plus the DP bound TPR <= e^ε·FPR + δ at the best threshold with FPR <= 1 %.

    ``eps_lower`` is the ε this operating point proves at 95 % confidence
    (`simulations.leak.audit.empirical_epsilon`: Clopper-Pearson bounds on both rates); a
    violation counts only when it exceeds ε. The threshold is chosen on the same data, so this
    is a screening check; `audited` adds the held-out audit bound.

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
    eps_lower = empirical_epsilon(
        float(tpr[best]), float(fpr[best]), row["members"], row["non_members"], delta
    )[1]
    bound = math.exp(min(eps, 700.0)) * FPR_TARGET + delta
    return row | {
        "epsilon": eps,
        "bound_at_1%": min(bound, 1.0),
        "achieved_fpr": float(fpr[best]),
        "eps_lower": eps_lower,
        "violation": bool(eps_lower > eps),
    }


def audited(
    scores: np.ndarray,
    is_member: np.ndarray,
    eps: float,
    delta: float,
    report: Report,
    where: str,
) -> dict[str, float]:
    """`check_dp_bound` plus the held-out audit lower bound ``audit_eps_lower``
    (`audit_epsilon_from_scores`, 95 %); either above ε fails the report loudly."""
    row = check_dp_bound(scores, is_member, eps, delta)
    row["audit_eps_lower"] = audit_epsilon_from_scores(scores, is_member, delta, 0.95)
    row["violation"] = bool(row["violation"] or row["audit_eps_lower"] > eps)
    if row["violation"]:
        report.fail(
            f"DP audit violated ({where}): the attack proves ε >= "
            f"{max(row['eps_lower'], row['audit_eps_lower']):.3f} > accountant's ε = {eps:.3f}; "
            "the release carries less noise than the accountant assumes"
        )
    return row


def _check_settings(settings: Settings) -> None:
    if settings.attack_rows < 1:
        raise ValueError(f"attack_rows must be >= 1, got {settings.attack_rows}")
    if settings.attack_cohort < 2:
        raise ValueError(f"attack_cohort must be >= 2, got {settings.attack_cohort}")
    if settings.record_clients < 2:
        raise ValueError(f"record_clients must be >= 2, got {settings.record_clients}")
    for key in ("record_rounds", "record_local_epochs"):
        if getattr(settings, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(settings, key)}")
    bad = [s for s in settings.record_noise_multipliers if s <= 0]
    if bad:
        raise ValueError(f"record_noise_multipliers must all be > 0, got {bad}")
    bad = [z for z in settings.noise_multipliers if z < 0]
    if bad:
        raise ValueError(f"noise_multipliers must all be >= 0 (0 = no DP), got {bad}")


def _plot(
    report: Report, points: list[Point], accuracy: dict, run_epsilon: dict, pooled: dict
) -> None:
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    colours = {"record": "tab:blue", "client": "tab:orange"}
    for mode in MODES:
        baseline = [p for p in points if p.mode == mode and not p.private]
        dp_points = [p for p in points if p.mode == mode and p.private]
        if baseline:
            left.axhline(
                np.mean(accuracy[baseline[0].label]),
                color=colours[mode],
                ls="--",
                lw=1,
                label=f"{mode}-level federation, no DP",
            )
        if not dp_points:
            continue
        eps = [run_epsilon[p.label] for p in dp_points]
        means = [np.mean(accuracy[p.label]) for p in dp_points]
        stds = [
            np.std(accuracy[p.label], ddof=1) if len(accuracy[p.label]) > 1 else 0.0
            for p in dp_points
        ]
        left.errorbar(eps, means, yerr=stds, marker="o", capsize=3, color=colours[mode])
        for p, x, y in zip(dp_points, eps, means, strict=True):
            row = pooled[(p.label, "lira")]
            left.annotate(
                f"TPR@0.1% {row['tpr@0.1%']:.3f}\naudit ε≥{row['audit_eps_lower']:.2f}",
                (x, y),
                textcoords="offset points",
                xytext=(4, -22),
                fontsize=6,
            )
        release = [pooled[(p.label, "lira")]["epsilon"] for p in dp_points]
        audit = [max(pooled[(p.label, s)]["audit_eps_lower"] for s in SCORES) for p in dp_points]
        right.scatter(release, audit, color=colours[mode], label=f"{mode}-level")
    left.set(
        xscale="log", xlabel="ε of the run (δ = 1e-5)", ylabel="student test accuracy", ylim=(0, 1)
    )
    top = max([pooled[key]["epsilon"] for key in pooled] + [1.0])
    right.plot([0, top], [0, top], "k:", label="audit = accountant (must stay below)")
    right.set(xlabel="accountant ε of the attacked release", ylabel="audit ε lower bound (95 %)")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.savefig(report.plot_path("frontier.png"), dpi=130)


def _epsilon_cell(eps: float) -> str:
    return "∞ (no DP)" if math.isinf(eps) else f"{eps:.2f}"


def _write_tables(
    report: Report,
    settings: Settings,
    points: list[Point],
    accuracy: dict,
    ensemble: dict,
    run_epsilon: dict,
    pooled: dict,
) -> None:
    frontier = []
    for point in points:
        row = {
            "point": point.label,
            "clients (per round)": f"{point.config.num_clients} ({_cohort(point.config)})",
            "rounds": point.config.rounds,
            "ε run": _epsilon_cell(run_epsilon[point.label]),
            "student acc": mean_std(accuracy[point.label]),
            "ensemble acc (public rows)": mean_std(ensemble[point.label]),
        }
        if point.private:
            lira = pooled[(point.label, "lira")]
            row |= {
                "ε release": _epsilon_cell(lira["epsilon"]),
                "LiRA AUC": lira["auc"],
                "LiRA TPR@0.1% FPR [95% CI]": tpr_cell(lira, "0.1%"),
                "audit ε ≥ (LiRA, conf.)": "{:.2f}, {:.2f}".format(
                    *(pooled[(point.label, s)]["audit_eps_lower"] for s in ("lira", "confidence"))
                ),
                "check": "VIOLATION" if lira["violation"] else "ok",
            }
        frontier.append(row)
    table = pd.DataFrame(frontier).astype(object).fillna("—")
    report.add_section(
        "Frontier: student accuracy against ε",
        f"{len(settings.seeds)} seed(s), δ = {points[0].config.dp_delta}; mean ± std over seeds "
        "of the last round's student test accuracy and of its ensemble's accuracy on the queried "
        "public rows (their labels are never used in training). "
        f"'ε run' is the accountant's ε after the whole run for the most exposed record "
        f"(record-level, Opacus PRV) or client (client-level, PLD over the rounds of the "
        f"most-sampled client). Attacks: {settings.canaries} canaries per seed (half members), "
        f"pooled over seeds; 'ε release' is the ε of the one release the attack reads; 'audit "
        f"ε ≥' is the 95 % lower bound from a held-out threshold (`simulations.leak.audit`), "
        f"which must stay below 'ε release'.\n\n{markdown_table(table)}",
    )
    report.add_section("Sensitivity and accounting", _accounting_text(settings, points))
    report.summary["student_accuracy"] = {label: values for label, values in accuracy.items()}
    report.summary["ensemble_accuracy"] = {label: values for label, values in ensemble.items()}
    report.summary["epsilon_run"] = {
        f"z={p.noise:g}": run_epsilon[p.label] for p in points if p.mode == "client"
    }
    report.summary["record_epsilon_run"] = {
        f"sigma={p.noise:g}": run_epsilon[p.label] for p in points if p.mode == "record"
    }
    report.summary["pooled"] = {f"{label}/{score}": row for (label, score), row in pooled.items()}


def _cohort(config: RunConfig) -> int:
    return cohort_size(config.num_clients, config.fraction, config.min_clients)


def _accounting_text(settings: Settings, points: list[Point]) -> str:
    record = next(p.config for p in points if p.mode == "record")
    client = next(p.config for p in points if p.mode == "client")
    steps = steps_per_round(record.dp_record_sample_rate, record.local_epochs)
    q = client.public_query_size
    cohort = _cohort(client)
    per_round = soft_label_sensitivity(q) if q else float("nan")
    return (
        f"Record-level: DP-SGD with Poisson rate q = {record.dp_record_sample_rate}, clip "
        f"C = {record.dp_record_clip}, {steps} steps per round ({record.local_epochs} epochs of "
        f"⌈1/q⌉), composed over {record.rounds} rounds (the teacher continues across rounds). "
        f"Client-level: Q = {q or 'all'} public rows per round; one client's rows move the sum by "
        f"at most Δ₂ = sqrt(2) per row (replace adjacency, rows on the simplex) and "
        f"sqrt(2Q) = {per_round:.2f} per round; {cohort} clients per round, so every entry of "
        f"the ensemble mean carries noise z·sqrt(2Q)/{cohort} = {per_round / cohort:.4f}·z. The "
        f"client-level attack sums {settings.attack_rows} canary rows per release "
        f"(Δ₂ = {soft_label_sensitivity(settings.attack_rows):.2f})."
        + (
            " One-round client-level points train the cohort once per seed and sum each z's "
            "noised reports in the clear (`simulations.leak.one_shot`): the value SecAgg+ returns."
            if client.rounds == 1
            else ""
        )
    )


EXPERIMENT = Experiment(
    name="dp-tradeoff", settings_type=Settings, run_defaults=RUN_DEFAULTS, run=run
)
