"""`differencing`: isolate one client (the victim, client 0) from secure aggregates.

A server that may choose cohorts asks two secure sums whose cohorts differ by the victim only,
and subtracts them. With fixed teachers (one-shot distillation queried twice) the difference is
the victim's soft labels up to fixed-point rounding; when teachers keep training between the two
rounds the others' drift remains in it. Defences measured: fresh cohort sampling with a minimum
size (the server cannot choose; it takes the best pair of rounds, or least squares over all
rounds it has seen), and distributed DP noise in every sum.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.config import RunConfig
from common.dp import epsilon
from common.kd import ensemble_mean
from common.protocol import Contribution
from server.cohort import NodeInfo, sample_cohort
from simulations.leak.experiment import Experiment, setting
from simulations.leak.report import Report, markdown_table, mean_std
from simulations.leak.secure import secure_sum
from simulations.leak.setup import load_federation, train_and_report

VICTIM = 0


@dataclass(frozen=True)
class Settings:
    """Settings of the `differencing` experiment (`--set key=value`)."""

    seeds: tuple[int, ...] = setting((0, 1, 2), "experiment seeds")
    cohort_sizes: tuple[int, ...] = setting(
        (4, 10), "chosen cohort sizes n (n − 1 must be >= secagg_min_cohort)"
    )
    fresh_rounds: tuple[int, ...] = setting(
        (2, 5, 10, 20), "rounds of freshly sampled cohorts the server collects"
    )
    fresh_fraction: float = setting(0.5, "fraction of clients sampled per fresh round")
    noise_multipliers: tuple[float, ...] = setting((0.1, 1.0), "DP noise multipliers z")


RUN_DEFAULTS = {"num_samples": 10000, "public_query_size": 200}


def run(settings: Settings, config: RunConfig, report: Report) -> None:
    """Per seed: train, difference chosen and fresh cohorts, with and without DP; tabulate."""
    largest = max(settings.cohort_sizes)
    if largest > config.num_clients or min(settings.cohort_sizes) - 1 < config.secagg_min_cohort:
        raise ValueError(
            f"cohort_sizes {settings.cohort_sizes} must lie in "
            f"[secagg_min_cohort + 1, num_clients] = "
            f"[{config.secagg_min_cohort + 1}, {config.num_clients}]"
        )
    for seed in settings.seeds:
        report.add_rows([{"seed": seed} | row for row in _one_seed(settings, config, seed, report)])
    _write_table(report, settings, config)


def _one_seed(settings: Settings, config: RunConfig, seed: int, report: Report) -> list[dict]:
    config = config.replace(seed=seed)
    federation = load_federation(config)
    splits = federation.splits
    query = np.arange(config.public_query_size or len(splits.public_x))
    n_clients = config.num_clients
    report.progress(f"seed {seed}: round 1, {n_clients} clients train and report")
    trained = [
        train_and_report(config, splits, federation.client_data(i), query) for i in range(n_clients)
    ]
    first = [probs for _, probs in trained]  # (Q, K) each: the round-1 reports
    victim = first[VICTIM].astype(np.float64)

    def error(estimate: np.ndarray) -> float:
        return float(np.linalg.norm(estimate - victim) / np.linalg.norm(victim))

    def total(reports: list[np.ndarray], run_config: RunConfig = config) -> np.ndarray:
        return secure_sum([Contribution(p, 1.0) for p in reports], run_config).weighted_sum

    rows = []
    for n in settings.cohort_sizes:
        base = {"setting": "fixed teachers", "n": n, "rounds": 2, "estimator": "difference"}
        estimate = total(first[:n]) - total(first[1:n])
        rows.append(base | {"defence": "none", "error": error(estimate)})
        for z in settings.noise_multipliers:
            noisy = config.replace(dp_noise_multiplier=z)
            estimate = total(first[:n], noisy) - total(first[1:n], noisy)
            eps = epsilon(z, 2, config.dp_delta)
            rows.append(base | {"defence": f"DP z={z:g}", "error": error(estimate), "epsilon": eps})
    report.progress(f"seed {seed}: round 2, clients keep training (digesting round 1)")
    everyone = total(first)
    digest = (query, ensemble_mean(everyone, n_clients))
    second = [first[VICTIM]] + [
        train_and_report(config, splits, federation.client_data(i), query, 2, teacher, digest)[1]
        for i, (teacher, _) in enumerate(trained)
        if i != VICTIM
    ]
    for n in settings.cohort_sizes:
        rows.append(
            {
                "setting": "teachers train between rounds",
                "defence": "none",
                "n": n,
                "rounds": 2,
                "estimator": "difference",
                "error": error(total(first[:n]) - total(second[1:n])),
            }
        )
    report.progress(f"seed {seed}: {max(settings.fresh_rounds)} freshly sampled rounds")
    rows += _fresh_sampling(settings, config, first, error, total)
    return rows


def _fresh_sampling(
    settings: Settings,
    config: RunConfig,
    reports: list[np.ndarray],
    error: Callable[[np.ndarray], float],
    total: Callable[[list[np.ndarray]], np.ndarray],
) -> list[dict]:
    """The server cannot choose cohorts: each round samples ⌈fraction·N⌉ >= secagg_min_cohort
    clients with the ServerApp's own `sample_cohort`; teachers stay fixed."""
    n_clients = config.num_clients
    nodes = [NodeInfo(node_id=i, index=i, label=f"partition-{i}") for i in range(n_clients)]
    cohorts, sums = [], []
    for round_number in range(1, max(settings.fresh_rounds) + 1):
        cohort = sample_cohort(
            nodes, settings.fresh_fraction, config.secagg_min_cohort, config.seed, round_number
        )
        cohorts.append([node.index for node in cohort])
        sums.append(total([reports[i] for i in cohorts[-1]]))
    rows = []
    for rounds in settings.fresh_rounds:
        defence = f"fresh sampling, fraction {settings.fresh_fraction:g}"
        base = {"setting": "fixed teachers", "defence": defence, "n": len(cohorts[0])}
        base["rounds"] = rounds
        pair = _best_pair(cohorts[:rounds])
        pair_error = math.nan if pair is None else error(sums[pair[0]] - sums[pair[1]])
        rows.append(base | {"estimator": "best pair", "error": pair_error})
        incidence = np.zeros((rounds, n_clients))  # (R, N): who was in each round
        for r, cohort in enumerate(cohorts[:rounds]):
            incidence[r, cohort] = 1.0
        stacked = np.stack([s.ravel() for s in sums[:rounds]])  # (R, Q·K)
        solution = np.linalg.lstsq(incidence, stacked, rcond=None)[0]  # (N, Q·K)
        estimate = solution[VICTIM].reshape(reports[VICTIM].shape)
        rank = int(np.linalg.matrix_rank(incidence))
        rows.append(base | {"estimator": "least squares", "rank": rank, "error": error(estimate)})
    return rows


def _best_pair(cohorts: list[list[int]]) -> tuple[int, int] | None:
    """Rounds (a, b) with the victim in a, not in b, and the fewest other clients differing."""
    best, best_size = None, math.inf
    for a, b in itertools.permutations(range(len(cohorts)), 2):
        if VICTIM in cohorts[a] and VICTIM not in cohorts[b]:
            size = len(set(cohorts[a]) ^ set(cohorts[b]))
            if size < best_size:
                best, best_size = (a, b), size
    return best


def _write_table(report: Report, settings: Settings, config: RunConfig) -> None:
    frame = pd.DataFrame(report.rows)
    keys = ["setting", "defence", "n", "rounds", "estimator"]
    lines = []
    for key, group in frame.groupby(keys, sort=False, dropna=False):
        line = dict(zip(keys, key, strict=True))
        line["relative L2 error (seeds)"] = mean_std(group["error"], ".2e")
        if "epsilon" in group and group["epsilon"].notna().any():
            line["ε (2 releases)"] = f"{group['epsilon'].iloc[0]:.2f}"
        if "rank" in group and group["rank"].notna().any():
            low, high = int(group["rank"].min()), int(group["rank"].max())
            line["rank of R×N incidence"] = str(low) if low == high else f"{low}–{high}"
        lines.append(line)
    report.add_section(
        "Isolating one client by differencing secure aggregates",
        f"Victim: client {VICTIM}; {config.num_clients} clients; Q = {config.public_query_size} "
        f"public rows; {len(settings.seeds)} seeds. Error = ‖estimate − P_victim‖ / ‖P_victim‖ "
        "(Frobenius), P_victim the victim's round-1 soft labels. Every sum went through SecAgg+ "
        "and was decoded.\n\n" + markdown_table(pd.DataFrame(lines).fillna("")),
    )
    means = frame.groupby(keys, sort=False, dropna=False)["error"].mean().reset_index()
    report.summary["mean_error"] = means.to_dict(orient="records")
    _plot(report, means)


def _plot(report: Report, means: pd.DataFrame) -> None:
    """Horizontal bars of the mean relative error per attack, on a log axis."""
    labels = [
        f"{row.setting}, {row.defence}, n={row.n}, R={row.rounds}, {row.estimator}"
        for row in means.itertuples()
    ]
    figure = Figure(figsize=(9, 0.3 * len(labels) + 1.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.barh(range(len(labels)), means["error"].fillna(0.0))
    axes.axvline(1.0, color="k", ls="--", lw=0.8, label="error 1 = no better than guessing zeros")
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    axes.invert_yaxis()
    axes.set(xscale="log", xlabel="relative L2 error of the isolated soft labels (mean)")
    axes.legend(fontsize=7)
    figure.savefig(report.plot_path("differencing.png"), dpi=130)


EXPERIMENT = Experiment(
    name="differencing", settings_type=Settings, run_defaults=RUN_DEFAULTS, run=run
)
