"""What every FD method is made of: the client's per-row weights and the server's combine rule.

A method never sees one client's report on the server: it gets the secure per-row sums
S_j = Σ_i w_ij · p_ij (Q, K) and W_j = Σ_i w_ij (Q,) (or one scalar Σ_i w_i when the method
sends no per-row weights) and turns them into ensemble rows plus a mask of rows worth distilling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from common.config import RunConfig


@dataclass(frozen=True)
class ClientView:
    """What a client-side selector may look at after the teacher's local training.

    Attributes
    ----------
    teacher : the client's trained teacher (its penultimate features serve as a representation).
    private_x : (N, ...) the client's private inputs.
    public_x : (P, ...) the whole public set (a selector may use it as its reference sample).
    query_x : (Q, ...) the public inputs queried this round.
    probs : (Q, K) the teacher's soft labels on `query_x` at the method's temperature.
    generator : seeded per (seed, round, client); any sampling draws from it.
    device : where the teacher lives.
    """

    teacher: torch.nn.Module
    private_x: np.ndarray
    public_x: np.ndarray
    query_x: np.ndarray
    probs: np.ndarray
    generator: torch.Generator
    device: torch.device


@dataclass(frozen=True)
class Ensemble:
    """The server's ensemble teacher for one round.

    Attributes
    ----------
    probs : (Q, K) float64 rows on the simplex (rows not kept are still filled, never used).
    kept : (Q,) bool, the rows the student distils and the clients digest.
    low_weight : (Q,) bool, rows left out because their total weight fell below the floor.
    ambiguous : (Q,) bool, rows left out by the method's server-side filter.
    """

    probs: np.ndarray
    kept: np.ndarray
    low_weight: np.ndarray
    ambiguous: np.ndarray


@dataclass(frozen=True)
class Method:
    """One FD method: the rules both apps call. Each module under `common.methods` builds one.

    Attributes
    ----------
    name : the value of the `method` config key.
    citation : the paper the method follows.
    per_row_weights : whether clients send a weight per queried row (Q more summed values).
    temperature : config → T of the reported soft labels, the clients' digest and the student's
        distillation.
    row_weights : ClientView, config → (Q,) float64 weights in [0, 1] (0 = abstain); None for
        methods without per-row weights.
    combine : (S (Q, K), W (Q,) or scalar, config) → Ensemble.
    warm_up : (teacher, public_x (P, ...), public_y (P,), config, generator, device) → None,
        run once on a fresh teacher before its first private training when
        allow_public_labels=true; None for methods without a warm-up.
    """

    name: str
    citation: str
    per_row_weights: bool
    temperature: Callable[[RunConfig], float]
    combine: Callable[[np.ndarray, np.ndarray | float, RunConfig], Ensemble]
    row_weights: Callable[[ClientView, RunConfig], np.ndarray] | None = None
    warm_up: Callable[..., None] | None = None


def configured_temperature(config: RunConfig) -> float:
    """The run's `temperature` key, for methods that follow it."""
    return config.temperature


def weighted_rows(
    weighted_sum: np.ndarray, row_weight: np.ndarray | float, floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row weighted means S_j / W_j on the simplex, and the rows whose W_j >= floor.

    Parameters
    ----------
    weighted_sum : (Q, K) Σ_i w_ij · p_ij (may carry fixed-point rounding or DP noise).
    row_weight : (Q,) Σ_i w_ij, or one scalar Σ_i w_i shared by every row.
    floor : rows with a total weight below it are marked as not usable.

    Returns
    -------
    probs : (Q, K) float64; negative entries (DP noise) clipped to 0, rows renormalised; rows
        with no usable mass are uniform.
    usable : (Q,) bool, W_j >= floor and W_j > 0.
    """
    q = weighted_sum.shape[0]
    totals = np.broadcast_to(np.asarray(row_weight, dtype=np.float64), (q,))  # (Q,)
    usable = (totals > 0) & (totals >= floor)
    safe = np.where(totals > 0, totals, 1.0)[:, None]  # (Q, 1)
    mean = np.clip(weighted_sum / safe, 0.0, None)  # (Q, K)
    row_sums = mean.sum(axis=1, keepdims=True)
    uniform = np.full_like(mean, 1.0 / mean.shape[1])
    probs = np.where(row_sums > 0, mean / np.where(row_sums > 0, row_sums, 1.0), uniform)
    return probs, usable & (row_sums[:, 0] > 0)


def mean_ensemble(
    weighted_sum: np.ndarray, row_weight: np.ndarray | float, config: RunConfig
) -> Ensemble:
    """The plain (weighted) mean of the clients' rows, every row with mass kept."""
    probs, usable = weighted_rows(weighted_sum, row_weight, floor=0.0)
    nothing = np.zeros(len(probs), dtype=bool)
    return Ensemble(probs=probs, kept=usable, low_weight=~usable, ambiguous=nothing)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """H(p_j) / log K per row, in [0, 1]: (Q, K) → (Q,)."""
    logs = np.log(np.clip(probs, 1e-12, None))
    return -(probs * logs).sum(axis=1) / np.log(probs.shape[1])
