"""The canary membership attack of a malicious server, shared by `membership` and `dp-tradeoff`.

Setup for one seed (Carlini et al. 2022, "Membership Inference Attacks From First Principles"):

- C canaries are drawn from the test pool (never in any client's partition); a random half, the
  members, is added to the target client's (client 0's) training set; the other half are the
  non-members, from the same distribution and never trained on.
- The server plants all C canaries in the public set and queries exactly those rows.
- The other clients of the cohort are real teachers trained on their own partitions.
- The attacker trains S target shadows on records of its own (the rest of the test pool) drawn
  with the target's class histogram (an oracle the label-distribution attack approximates),
  each with a balanced random half of the canaries, and R population shadows on its own records
  partitioned by the federation's partitioner, to model the rest of a cohort.
- Optionally the server also queries Z ordinary public rows, known non-members of every model:
  RMIA's population samples z (`simulations.leak.rmia`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from client.data_source import PrivateData
from common.config import RunConfig
from common.data import partition_indices
from common.protocol import Contribution
from simulations.leak.rmia import rmia_score
from simulations.leak.scores import lira_online_score, true_label_confidence
from simulations.leak.secure import SecureSum, secure_sum
from simulations.leak.setup import (
    POPULATION_SHADOW_BASE,
    TARGET_SHADOW_BASE,
    Federation,
    draw_with_histogram,
    load_federation,
    plant,
    test_records,
    train_and_report,
    with_extra,
)

MIN_ATTACKER_RECORDS = 200  # the attacker needs its own records to train shadows


@dataclass(frozen=True)
class CanaryWorld:
    """Everything one seed of the canary attack trained, as soft labels on the C canaries.

    Attributes
    ----------
    labels : (C,) int64 true labels of the canaries.
    is_member : (C,) bool, True where the canary is in the target's training set.
    target : (C, K) float32 the target client's soft labels (what it reports).
    cohort : the other clients' (C, K) soft labels, in cohort order (client 1, 2, …).
    shadow_confs : (S, C) target shadows' confidence on each canary's true label.
    shadow_in : (S, C) bool, True where the shadow trained on the canary (S/2 per canary).
    population_confs : (R, C) population shadows' confidence on the true labels.
    reference_labels : (Z,) int64 labels of the Z public rows queried as population samples.
    target_reference : (Z, K) float32 the target's soft labels on them.
    cohort_reference : the other clients' (Z, K) soft labels on them, in cohort order.
    shadow_reference_confs : (S, Z) target shadows' confidence on their true labels.
    population_reference_confs : (R, Z) population shadows' confidence on their true labels.
    """

    labels: np.ndarray
    is_member: np.ndarray
    target: np.ndarray
    cohort: list[np.ndarray]
    shadow_confs: np.ndarray
    shadow_in: np.ndarray
    population_confs: np.ndarray
    reference_labels: np.ndarray
    target_reference: np.ndarray
    cohort_reference: list[np.ndarray]
    shadow_reference_confs: np.ndarray
    population_reference_confs: np.ndarray


def build_world(
    config: RunConfig,
    n_clients: int,
    n_canaries: int,
    n_shadows: int,
    n_population: int,
    progress: Callable[[str], None],
    n_reference_rows: int = 0,
) -> CanaryWorld:
    """Train the target, the rest of the cohort and the attacker's shadows for `config.seed`.

    Parameters
    ----------
    config : run config; its seed fixes the data, partitions, canaries and models.
    n_clients : federation size N (target + N − 1 others); the largest cohort attacked.
    n_canaries : C, even; half become members.
    n_shadows : S, even and >= 4, so each canary has S/2 IN and S/2 OUT shadows.
    n_population : R >= 1 population shadows.
    progress : prints one line per step.
    n_reference_rows : Z public rows also queried from every model (RMIA's population
        samples); 0 = none. No model trains on public rows in round 1, so they are non-members
        of all, and adding them leaves every canary's soft labels unchanged.

    Returns
    -------
    The trained world's soft labels and confidences on the canaries.
    """
    if n_canaries < 2 or n_canaries % 2:
        raise ValueError(f"canaries must be an even number >= 2, got {n_canaries}")
    if n_shadows < 4 or n_shadows % 2:
        raise ValueError(f"shadows must be an even number >= 4, got {n_shadows}")
    if n_population < 1:
        raise ValueError(f"population_shadows must be >= 1, got {n_population}")
    config = config.replace(num_clients=n_clients)
    progress(f"seed {config.seed}: data and {n_clients} partitions")
    federation = load_federation(config)
    splits = federation.splits
    rng = np.random.default_rng([config.seed, 91])
    order = rng.permutation(len(splits.test_y))
    canaries, attacker_pool = order[:n_canaries], order[n_canaries:]
    if len(attacker_pool) < MIN_ATTACKER_RECORDS:
        raise ValueError(
            f"{n_canaries} canaries leave the attacker {len(attacker_pool)} test records "
            f"(< {MIN_ATTACKER_RECORDS}); raise num_samples or lower canaries"
        )
    is_member = np.zeros(n_canaries, dtype=bool)
    is_member[rng.permutation(n_canaries)[: n_canaries // 2]] = True
    if not 0 <= n_reference_rows <= len(splits.public_x):
        raise ValueError(
            f"reference_rows must be in [0, {len(splits.public_x)}] (the public set), got "
            f"{n_reference_rows}"
        )
    planted, canary_rows = plant(splits, canaries)
    # Its own stream, so the canaries and shadow halves do not depend on Z.
    public_order = np.random.default_rng([config.seed, 95]).permutation(len(splits.public_x))
    reference_rows = np.sort(public_order[:n_reference_rows])
    query = np.concatenate([canary_rows, reference_rows])
    labels = splits.test_y[canaries]
    reference_labels = splits.public.labels("the canary experiment's reference rows")[
        reference_rows
    ]
    all_labels = np.concatenate([labels, reference_labels])

    def confidences(probs: np.ndarray) -> np.ndarray:
        return true_label_confidence(probs, all_labels)

    progress(f"seed {config.seed}: target client (+{int(is_member.sum())} member canaries)")
    target_data = with_extra(federation.client_data(0), splits, canaries[is_member])
    target = train_and_report(config, planted, target_data, query)[1]
    progress(f"seed {config.seed}: {n_clients - 1} other clients on their own partitions")
    cohort = [
        train_and_report(config, planted, federation.client_data(i), query)[1]
        for i in range(1, n_clients)
    ]
    progress(f"seed {config.seed}: {n_shadows} target shadows on attacker data")
    shadow_in = np.argsort(rng.random((n_shadows, n_canaries)), axis=0) < n_shadows // 2
    shadow_confs = []
    for j in range(n_shadows):
        index = TARGET_SHADOW_BASE + j
        own = draw_with_histogram(
            splits.test_y,
            attacker_pool,
            len(federation.partitions[0]),
            federation.class_histogram(0),
            [config.seed, index],
        )
        data = with_extra(test_records(splits, own, index), splits, canaries[shadow_in[j]])
        shadow_confs.append(confidences(train_and_report(config, planted, data, query)[1]))
    progress(f"seed {config.seed}: {n_population} population shadows on attacker data")
    population_confs = np.stack(
        [
            confidences(train_and_report(config, planted, data, query)[1])
            for data in _population_data(config, federation, attacker_pool, n_population)
        ]
    )
    shadow_confs_all = np.stack(shadow_confs)
    c = n_canaries
    return CanaryWorld(
        labels=labels,
        is_member=is_member,
        target=target[:c],
        cohort=[probs[:c] for probs in cohort],
        shadow_confs=shadow_confs_all[:, :c],
        shadow_in=shadow_in,
        population_confs=population_confs[:, :c],
        reference_labels=reference_labels,
        target_reference=target[c:],
        cohort_reference=[probs[c:] for probs in cohort],
        shadow_reference_confs=shadow_confs_all[:, c:],
        population_reference_confs=population_confs[:, c:],
    )


@dataclass(frozen=True)
class Observation:
    """The server's view of the canaries in one setting.

    Attributes
    ----------
    confidences : (C,) observed confidence on each canary's true label (a cohort mean; DP noise
        can push it outside [0, 1]).
    noise_std : (C,) std of the DP noise in each observed confidence (0 without DP).
    first_sum : the first secure sum, kept for its quantisation check (None for n = 1).
    reference_confidences : (Z,) observed confidence on the reference rows' true labels, read
        from the same reports (n = 1) or the same secure sums.
    """

    confidences: np.ndarray
    noise_std: np.ndarray
    first_sum: SecureSum | None
    reference_confidences: np.ndarray


def observe(world: CanaryWorld, n: int, config: RunConfig, batch_rows: int = 0) -> Observation:
    """What the server sees on the canaries: the target's report (n = 1) or a cohort's secure sum.

    Parameters
    ----------
    world : the trained world.
    n : cohort size; 1 = no secure aggregation (the target's own soft labels), else the target
        and clients 1..n−1 through `secure_sum` (with the config's DP noise shares, if any).
    config : secure-aggregation and DP settings (`secagg_min_cohort` must allow n).
    batch_rows : queried rows (canaries, then reference rows) per secure-aggregation round, each
        one DP release sized for its own rows; 0 = all rows in one round.

    Returns
    -------
    The observed confidences and the noise they carry.
    """
    n_canaries = len(world.labels)
    labels = np.concatenate([world.labels, world.reference_labels])
    if n == 1:
        observed = true_label_confidence(
            np.concatenate([world.target, world.target_reference]), labels
        )
        return Observation(observed[:n_canaries], np.zeros(n_canaries), None, observed[n_canaries:])
    if not 2 <= n <= len(world.cohort) + 1:
        raise ValueError(f"cohort size must be in [2, {len(world.cohort) + 1}], got {n}")
    reports = [
        np.concatenate([canary_probs, reference_probs])
        for canary_probs, reference_probs in zip(
            [world.target, *world.cohort[: n - 1]],
            [world.target_reference, *world.cohort_reference[: n - 1]],
            strict=True,
        )
    ]
    n_rows = len(labels)
    step = batch_rows or n_rows
    means, noise, sums = [], [], []
    for start in range(0, n_rows, step):
        rows = slice(start, start + step)
        result = secure_sum([Contribution(probs[rows], 1.0) for probs in reports], config)
        means.append(result.weighted_sum / result.total_weight)  # (B, K)
        # n shares of std s each, then divided by n: s / sqrt(n) on every row of this round
        noise.append(np.full(len(means[-1]), result.noise_std / np.sqrt(n)))
        sums.append(result)
    observed = true_label_confidence(np.concatenate(means), labels)
    return Observation(
        observed[:n_canaries],
        np.concatenate(noise)[:n_canaries],
        sums[0],
        observed[n_canaries:],
    )


def shadow_views(world: CanaryWorld, n: int, rng: np.random.Generator) -> np.ndarray:
    """(S, C) the attacker's simulated observations: each target shadow in a simulated cohort.

    For n >= 2 the rest of shadow j's cohort is n − 1 population shadows drawn with replacement,
    so the simulated cohort mean varies like a real one: (conf_j + Σ_{i<n} pop_{b(j,i)}) / n.
    """
    return _simulated_cohorts(world.shadow_confs, world.population_confs, n, rng)


def reference_views(world: CanaryWorld, n: int, rng: np.random.Generator) -> np.ndarray:
    """(S, Z) `shadow_views` of the reference rows, with cohorts drawn afresh: RMIA uses only
    each row's mean over the shadows, which does not depend on how rows pair across cohorts."""
    return _simulated_cohorts(
        world.shadow_reference_confs, world.population_reference_confs, n, rng
    )


def _simulated_cohorts(
    own: np.ndarray, population: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """(S, X) cohort means of each shadow's (S, X) confidences with n − 1 random rows of the
    population shadows' (R, X) confidences."""
    if n == 1:
        return own
    picks = rng.integers(0, len(population), size=(len(own), n - 1))
    return (own + population[picks].sum(axis=1)) / n


def lira_score(world: CanaryWorld, views: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Online LiRA (logit-scaled, pooled variance) of observed confidences in [0, 1]."""
    shadow_in = np.where(world.shadow_in, views, np.nan)
    shadow_out = np.where(world.shadow_in, np.nan, views)
    return lira_online_score(observed, shadow_in, shadow_out, fixed_variance=True)


def rmia_scores(
    world: CanaryWorld,
    views: np.ndarray,
    population_views: np.ndarray,
    observation: Observation,
    offline_a: float | None,
) -> np.ndarray:
    """RMIA of observed confidences in [0, 1]: online (IN and OUT shadow views) when
    `offline_a` is None, else offline with only each canary's OUT views and that a.

    Parameters
    ----------
    world : the trained world (its `shadow_in` marks the IN views).
    views : (S, C) `shadow_views`; population_views : (S, Z) `reference_views`.
    observation : the server's view, with its reference-row confidences as the z samples.
    offline_a : None for online RMIA, else a in [0, 1].

    Returns
    -------
    (C,) scores in [0, 1], larger = more likely a member.
    """
    if offline_a is None:
        return rmia_score(
            observation.confidences,
            observation.reference_confidences,
            views,
            population_views,
            world.shadow_in,
        )
    return rmia_score(
        observation.confidences,
        observation.reference_confidences,
        _out_views(world, views),
        population_views,
        offline_a=offline_a,
    )


def _out_views(world: CanaryWorld, views: np.ndarray) -> np.ndarray:
    """(S/2, C) each canary's OUT views (S/2 per canary by construction), stacked by rank."""
    return np.sort(np.where(world.shadow_in, np.nan, views), axis=0)[: views.shape[0] // 2]


def noisy_lira_score(
    world: CanaryWorld, views: np.ndarray, observed: np.ndarray, noise_std: np.ndarray
) -> np.ndarray:
    """LiRA for an observation carrying known Gaussian DP noise, in probability space.

    DP noise can push a cohort-mean confidence outside [0, 1], where LiRA's logit scaling is
    undefined; but the noise is Gaussian with a std the attacker knows (the mechanism is public),
    so per canary the observation is N(μ_in, σ_in² + s²) or N(μ_out, σ_out² + s²), with μ and the
    pooled σ fitted to the shadows' (noise-free) simulated observations and s = `noise_std`
    ((C,), per canary).

    Returns
    -------
    (C,) log likelihood ratios, larger = more likely a member.
    """
    fits = []
    for mask in (world.shadow_in, ~world.shadow_in):
        values = np.where(mask, views, np.nan)  # (S, C)
        mean = np.nanmean(values, axis=0)  # (C,)
        pooled = np.nansum((values - mean) ** 2) / (mask.sum() - mask.shape[1])
        fits.append((mean, np.sqrt(pooled + noise_std**2)))
    (mean_in, std_in), (mean_out, std_out) = fits
    return stats.norm.logpdf(observed, mean_in, std_in) - stats.norm.logpdf(
        observed, mean_out, std_out
    )


def _population_data(
    config: RunConfig, federation: Federation, attacker_pool: np.ndarray, n_population: int
) -> list[PrivateData]:
    """Training sets of the population shadows: the attacker partitions its own records with
    the federation's partitioner and keeps a typical partition's size of each part."""
    splits = federation.splits
    typical = int(np.median([len(part) for part in federation.partitions]))
    parts = partition_indices(splits.test_y[attacker_pool], config, max(n_population, 2))
    data = []
    for r in range(n_population):
        index = POPULATION_SHADOW_BASE + r
        records = np.random.default_rng([config.seed, index]).permutation(attacker_pool[parts[r]])
        data.append(test_records(splits, records[:typical], index))
    return data
