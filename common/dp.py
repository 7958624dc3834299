"""Distributed Gaussian differential privacy for the securely aggregated soft-label sum.

Each client i reports P_i ∈ R^{Q×K} whose rows lie on the probability simplex, with weight 1.
Every client adds an independent Gaussian noise share before secure aggregation, so the server
learns only

    S = Σ_i P_i + Σ_i E_i,    E_i ~ N(0, σ²/n_min · I),    σ = noise_multiplier · Δ₂,

which carries at least N(0, σ² I) whenever at least n_min noise shares reach the sum.

Sensitivity (client-level, one round)
-------------------------------------
For rows p, p' on the simplex, ‖p‖₂² ≤ ‖p‖₁·‖p‖_∞ ≤ 1 and ⟨p, p'⟩ ≥ 0, hence
‖p − p'‖₂² = ‖p‖₂² + ‖p'‖₂² − 2⟨p, p'⟩ ≤ 2, with equality for one-hot rows on different classes
(K ≥ 2). Summing over the Q rows gives the Frobenius bounds

- replace one client's matrix by any other valid matrix: Δ₂ = sqrt(2·Q);
- add or remove one client: Δ₂ = sqrt(Q).

Both are tight, and no row clipping is needed: a valid probability row is already bounded.
The replace bound is sqrt(2), not 2, times the add/remove bound, because both rows lie on the
simplex. A temperature T does not lower the worst case: softmax(z / T) still approaches a
vertex for large logits. The bounds hold only for rows on the simplex with weight 1; weighting by
sample counts would scale Δ₂ by the largest weight and reveal Σ w_i.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Literal

import numpy as np

Adjacency = Literal["replace", "add_remove"]
Accountant = Literal["pld", "rdp"]


def soft_label_sensitivity(n_public: int, adjacency: Adjacency = "replace") -> float:
    """L2 sensitivity Δ₂ of Σ_i P_i to one client, for rows on the probability simplex.

    Parameters
    ----------
    n_public : Q, the number of public examples (rows) in each reported matrix, >= 1.
    adjacency : ``"replace"`` (one client's matrix is swapped for any valid matrix; the cohort
        is known, as it is to our server) or ``"add_remove"`` (one client joins or leaves).

    Returns
    -------
    Δ₂ in probability units (Frobenius norm): sqrt(2·Q) for replace, sqrt(Q) for add/remove.
    See the module docstring for the derivation.
    """
    n_public = _positive_int("n_public", n_public)
    if adjacency == "replace":
        return math.sqrt(2.0 * n_public)
    if adjacency == "add_remove":
        return math.sqrt(float(n_public))
    raise ValueError(f"adjacency must be 'replace' or 'add_remove', got {adjacency!r}")


def noise_share_std(noise_multiplier: float, sensitivity: float, n_clients: int) -> float:
    """Standard deviation of one client's Gaussian noise share, σ / sqrt(n_min).

    Independent shares N(0, σ²/n_min) from m clients sum to N(0, m·σ²/n_min), at least the
    target N(0, σ²) when m >= n_min.

    Parameters
    ----------
    noise_multiplier : z = σ / Δ₂ > 0, the ratio the accountant (`epsilon`) takes.
    sensitivity : Δ₂ > 0 in the units of the released values (see `soft_label_sensitivity`).
    n_clients : n_min >= 1, the fewest clients whose shares are certain to reach the sum.

    Returns
    -------
    Per-client standard deviation z·Δ₂ / sqrt(n_min), in the units of `sensitivity`.

    Notes
    -----
    Dropout: a client that drops before its masked input is committed takes its share with it.
    If fewer than n_min shares survive, the sum carries less than σ² and the reported ε no longer
    holds; choose n_min as the secure-aggregation survival threshold, not the cohort size.
    Collusion: clients colluding with the server can subtract their own shares, so n_min should
    count only surviving clients assumed honest. If more than n_min survive, the noise variance
    grows to m·σ²/n_min, costing utility but not privacy.
    """
    _finite_number("noise_multiplier", noise_multiplier)
    _finite_number("sensitivity", sensitivity)
    n_clients = _positive_int("n_clients", n_clients)
    return noise_multiplier * sensitivity / math.sqrt(n_clients)


def add_noise_share(values: np.ndarray, std: float, generator: np.random.Generator) -> np.ndarray:
    """Add one client's Gaussian noise share to its report.

    Parameters
    ----------
    values : array of any shape, e.g. (Q, K) soft labels.
    std : per-entry standard deviation >= 0 (from `noise_share_std`), in the units of `values`.
    generator : source of the noise. In deployment it must be seeded from OS entropy
        (``np.random.default_rng()``): a seed the server can guess lets it subtract the noise.

    Returns
    -------
    float64 array shaped like `values`: values + N(0, std²) drawn independently per entry.
    """
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator, got {type(generator)}")
    _finite_number("std", std, allow_zero=True)
    values = np.asarray(values, dtype=np.float64)
    return values + generator.normal(0.0, std, size=values.shape)


def epsilon(
    noise_multiplier: float,
    rounds: int,
    delta: float,
    sampling_rate: float = 1.0,
    *,
    accountant: Accountant = "pld",
) -> float:
    """ε of `rounds` composed (optionally Poisson-subsampled) Gaussian mechanisms at δ.

    Uses Google's ``dp_accounting``: the privacy-loss-distribution accountant (tight up to
    discretisation, rounded pessimistically, Meiser & Mohammadi 2018; Doroshenko et al. 2022)
    or the Rényi-DP accountant (Mironov 2017; Mironov, Talwar & Zhang 2019), which is looser.

    Parameters
    ----------
    noise_multiplier : z = σ / Δ₂ > 0, with Δ₂ for the adjacency being claimed. For
        ``sampling_rate == 1`` the ε depends only on z, so either adjacency of
        `soft_label_sensitivity` may be used; with subsampling, Δ₂ must be the add/remove one.
    rounds : number of rounds in which the client contributed, >= 1.
    delta : target δ in (0, 1).
    sampling_rate : q in (0, 1], the probability that a client joins a round, drawn
        independently per round (Poisson). Amplification holds only if the adversary does not
        learn who was sampled; our server picks the cohort, so against the server use q = 1.
    accountant : ``"pld"`` (default, tighter) or ``"rdp"`` (faster, an upper bound on PLD).

    Returns
    -------
    ε >= 0 such that releasing all rounds is (ε, δ)-DP for one client.
    """
    _finite_number("noise_multiplier", noise_multiplier)
    rounds = _positive_int("rounds", rounds)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not 0.0 < sampling_rate <= 1.0:
        raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}")

    # Imported here: dp_accounting takes seconds to import, and clients never need it.
    import dp_accounting
    from dp_accounting import pld, rdp

    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    event = dp_accounting.SelfComposedDpEvent(event, rounds)

    # Always ADD_OR_REMOVE_ONE: our adjacency is already in z through Δ₂. dp_accounting's PLD
    # REPLACE_ONE would read z against the add/remove sensitivity and double it, counting twice.
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    if accountant == "pld":
        privacy_accountant = pld.PLDAccountant(neighboring_relation=relation)
    elif accountant == "rdp":
        privacy_accountant = rdp.RdpAccountant(neighboring_relation=relation)
    else:
        raise ValueError(f"accountant must be 'pld' or 'rdp', got {accountant!r}")
    privacy_accountant.compose(event)
    return float(privacy_accountant.get_epsilon(delta))


def _finite_number(name: str, value: float, *, allow_zero: bool = False) -> None:
    is_real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (is_real and math.isfinite(value) and (value > 0 or (allow_zero and value == 0))):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _positive_int(name: str, value: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        as_int = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if as_int < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return as_int
