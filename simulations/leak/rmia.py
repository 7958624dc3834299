"""RMIA: membership inference by pairwise likelihood ratios against population samples.

Zarifzadeh, Liu & Shokri, "Low-Cost High-Power Membership Inference Attacks" (ICML 2024).
For a candidate x and a population sample z (known non-member of the target θ), the attack
compares how much more likely θ makes x than a typical model does with the same for z:

    LR_θ(x, z) = [Pr(x | θ) / Pr(x)] / [Pr(z | θ) / Pr(z)],

where Pr(· | θ) is the target's signal (here its confidence on the true label) and Pr(·) its
average over reference models. The score is the share of population samples z that x
dominates, Score(x) = Pr_z[LR_θ(x, z) >= γ]; larger = more likely a member.

Online, the reference models include x for half of them and Pr(x) = (mean_IN + mean_OUT)/2.
Offline, no reference model trained on x, and the missing IN mean is interpolated linearly from
the OUT mean, Pr_IN(x) ≈ a·Pr_OUT(x) + (1 − a), so Pr(x) = ((1 + a)·Pr_OUT(x) + 1 − a)/2; the same
normalisation applies to z. The paper picks a by attacking one reference model with the others,
which `choose_offline_a` does.
"""

from __future__ import annotations

import numpy as np

from simulations.leak.metrics import roc_auc

# Keeps the ratios finite when a reference average is 0 (a class no reference ever predicts).
_MIN_PROBABILITY = 1e-12
A_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def rmia_score(
    target_conf: np.ndarray,
    target_population_conf: np.ndarray,
    reference_confs: np.ndarray,
    reference_population_confs: np.ndarray,
    reference_in: np.ndarray | None = None,
    *,
    offline_a: float = 1.0,
    gamma: float = 1.0,
) -> np.ndarray:
    """RMIA scores of C candidates against Z population samples.

    Parameters
    ----------
    target_conf : (C,) target's signal Pr(x | θ) on each candidate, in [0, 1].
    target_population_conf : (Z,) target's signal on each population sample, in [0, 1].
    reference_confs : (S, C) reference models' signals on the candidates, in [0, 1].
    reference_population_confs : (S', Z) reference models' signals on the population samples;
        no reference model trained on them. Only per-sample means enter, so S' may differ from
        S (e.g. offline: each candidate's OUT references, but every reference for z).
    reference_in : (S, C) bool, True where reference s trained on candidate c (online; each
        candidate needs >= 1 IN and >= 1 OUT reference), or None (offline: all OUT).
    offline_a : a in [0, 1] of the offline interpolation; unused online. a = 1 takes Pr(x) as
        the OUT mean.
    gamma : γ > 0, the threshold on the pairwise likelihood ratio (the paper uses 1 or 2).

    Returns
    -------
    (C,) float64 scores in [0, 1]: the share of population samples each candidate dominates.
    """
    target_conf = _probabilities("target_conf", target_conf, ndim=1)
    target_population_conf = _probabilities("target_population_conf", target_population_conf, 1)
    reference_confs = _probabilities("reference_confs", reference_confs, ndim=2)
    reference_population_confs = _probabilities(
        "reference_population_confs", reference_population_confs, ndim=2
    )
    n_candidates, n_population = target_conf.size, target_population_conf.size
    if reference_confs.shape[1] != n_candidates or reference_population_confs.shape[1] != (
        n_population
    ):
        raise ValueError(
            f"reference_confs must be (S, {n_candidates}) and reference_population_confs "
            f"(S', {n_population}), got {reference_confs.shape} and "
            f"{reference_population_confs.shape}"
        )
    if n_population < 1:
        raise ValueError("target_population_conf needs at least one population sample")
    if not 0.0 <= offline_a <= 1.0:
        raise ValueError(f"offline_a must be in [0, 1], got {offline_a}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if reference_in is None:
        marginal_x = _offline_marginal(reference_confs.mean(axis=0), offline_a)  # (C,)
        marginal_z = _offline_marginal(reference_population_confs.mean(axis=0), offline_a)
    else:
        marginal_x = _online_marginal(reference_confs, reference_in)
        marginal_z = reference_population_confs.mean(axis=0)  # (Z,), all OUT
    return _dominated_share(target_conf, target_population_conf, marginal_x, marginal_z, gamma)


def choose_offline_a(
    reference_confs: np.ndarray,
    reference_population_confs: np.ndarray,
    reference_in: np.ndarray,
    grid: tuple[float, ...] = A_GRID,
    gamma: float = 1.0,
) -> float:
    """The offline `a` that best attacks the reference models themselves (the paper's recipe).

    Each reference model s in turn plays the target, attacked offline with the OUT signals of
    the other references; its ground truth is `reference_in[s]`. The a of the highest mean AUC
    over all s wins (the smallest a on ties).

    Parameters
    ----------
    reference_confs : (S, C) reference signals on the candidates, S >= 2.
    reference_population_confs : (S, Z) reference signals on the population samples.
    reference_in : (S, C) bool membership of each candidate in each reference model; every
        row needs members and non-members, every candidate an OUT signal among any S − 1.
    grid : candidate values of a in [0, 1].
    gamma : γ of the attack.

    Returns
    -------
    The chosen a.
    """
    reference_confs = np.asarray(reference_confs, dtype=np.float64)
    reference_population_confs = np.asarray(reference_population_confs, dtype=np.float64)
    reference_in = np.asarray(reference_in, dtype=bool)
    n_references = reference_confs.shape[0]
    if n_references < 2 or reference_in.shape != reference_confs.shape:
        raise ValueError(
            f"need >= 2 reference models and reference_in shaped like reference_confs, got "
            f"{reference_confs.shape} and {reference_in.shape}"
        )
    if not grid:
        raise ValueError("grid must hold at least one value of a")
    mean_auc = []
    for a in grid:
        aucs = []
        for s in range(n_references):
            others = np.arange(n_references) != s
            out_confs = np.where(reference_in[others], np.nan, reference_confs[others])
            if np.isnan(out_confs).all(axis=0).any():
                raise ValueError(f"some candidate has no OUT signal once reference {s} is left out")
            scores = _dominated_share(
                reference_confs[s],
                reference_population_confs[s],
                _offline_marginal(np.nanmean(out_confs, axis=0), a),
                _offline_marginal(reference_population_confs[others].mean(axis=0), a),
                gamma,
            )
            aucs.append(roc_auc(scores, reference_in[s]))
        mean_auc.append(np.mean(aucs))
    return float(grid[int(np.argmax(mean_auc))])


def _dominated_share(
    target_conf: np.ndarray,
    target_population_conf: np.ndarray,
    marginal_x: np.ndarray,
    marginal_z: np.ndarray,
    gamma: float,
) -> np.ndarray:
    """(C,) share of the Z population samples with LR(x, z) >= γ, from the marginals Pr(x)
    (C,) and Pr(z) (Z,)."""
    ratio_x = target_conf / np.maximum(marginal_x, _MIN_PROBABILITY)  # (C,)
    ratio_z = np.sort(target_population_conf / np.maximum(marginal_z, _MIN_PROBABILITY))  # (Z,)
    # LR(x, z) >= γ  ⇔  ratio_z <= ratio_x / γ: count the z at or below that value.
    return np.searchsorted(ratio_z, ratio_x / gamma, side="right") / ratio_z.size


def _offline_marginal(mean_out: np.ndarray, a: float) -> np.ndarray:
    """Pr(x) = (Pr_OUT + Pr_IN)/2 with Pr_IN ≈ a·Pr_OUT + (1 − a)."""
    return 0.5 * ((1.0 + a) * mean_out + (1.0 - a))


def _online_marginal(reference_confs: np.ndarray, reference_in: np.ndarray) -> np.ndarray:
    """(C,) Pr(x) = (mean over IN references + mean over OUT references) / 2."""
    reference_in = np.asarray(reference_in, dtype=bool)
    if reference_in.shape != reference_confs.shape:
        raise ValueError(
            f"reference_in must be shaped like reference_confs {reference_confs.shape}, got "
            f"{reference_in.shape}"
        )
    n_in = reference_in.sum(axis=0)  # (C,)
    n_out = reference_in.shape[0] - n_in
    if (n_in == 0).any() or (n_out == 0).any():
        raise ValueError("online RMIA needs >= 1 IN and >= 1 OUT reference for every candidate")
    mean_in = np.where(reference_in, reference_confs, 0.0).sum(axis=0) / n_in
    mean_out = np.where(reference_in, 0.0, reference_confs).sum(axis=0) / n_out
    return 0.5 * (mean_in + mean_out)


def _probabilities(name: str, values: np.ndarray, ndim: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {values.shape}")
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise ValueError(f"{name} must be probabilities in [0, 1]")
    return values
