"""Soft labels at `label_bits` bits: unbiased stochastic rounding that keeps rows on the simplex.

A client's report is quantised once, before it is sent in the clear or encoded for SecAgg+: every
weighted row a_j·p_j (a_j = 1, or the method's per-row weight r_j) becomes integer counts
C_j· ∈ {0, …, 2^b} with Σ_k C_jk = A_j, where A_j is a_j·2^b rounded stochastically. The decoded
row C_j·/A_j is again a probability vector, and E[C_jk] = a_j·p_jk·2^b exactly, so the ensemble
(a sum over clients) is unbiased. On the SecAgg+ side C/2^b is exactly the fixed-point encoding at
`frac_bits = label_bits`, so the masked sum adds no second rounding.

The rounding within a row is systematic sampling (Madow 1949): with u ~ U[0, 1) and cumulative
sums S_k of the scaled values x_k = A_j·p_jk, entry k receives ⌊S_k − u⌋ − ⌊S_{k−1} − u⌋, which is
⌊x_k⌋ or ⌈x_k⌉ with P(⌈x_k⌉) = x_k − ⌊x_k⌋, and the row total is exactly A_j.

With distributed DP the Gaussian share is added after this step; on the fixed-point grid its
rounding is then independent of the data (x is already on the grid), so quantisation changes
neither the sensitivity nor what the noise hides. It does discretise the noise: at b bits the
grid step 2^-b should stay well below the per-client noise share σ/√n.
"""

from __future__ import annotations

import numpy as np

from common.config import MAX_LABEL_BITS, MIN_LABEL_BITS, RunConfig  # 2^-24: exact in float32
from common.protocol import Contribution

ROUNDING_SEED_TAG = 41
SERVER_PARTY = -1


def rounding_generator(seed: int, round_number: int, party: int) -> np.random.Generator:
    """The rounding offsets of one party (a client's index, or SERVER_PARTY for the digest) in
    one round: seeded, so runs repeat; they hide nothing (the counts are what is revealed)."""
    return np.random.default_rng([seed, round_number, party + 1, ROUNDING_SEED_TAG])


def check_label_bits(bits: int) -> None:
    """Raise ValueError unless `bits` is an allowed label width."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"label_bits must be an integer, got {bits!r}")
    if not MIN_LABEL_BITS <= bits <= MAX_LABEL_BITS:
        raise ValueError(f"label_bits must be in [{MIN_LABEL_BITS}, {MAX_LABEL_BITS}], got {bits}")


def stochastic_round(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unbiased stochastic rounding of non-negative values to integers (int64, same shape)."""
    floor = np.floor(values)
    return (floor + (rng.random(values.shape) < values - floor)).astype(np.int64)


def round_rows(scaled: np.ndarray, totals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round each row of `scaled` to integers that sum exactly to its total, unbiasedly.

    Parameters
    ----------
    scaled : (Q, K) float64, non-negative; row j is rescaled to sum to A_j (a probability row
        p_j becomes A_j·p_j, absorbing any float error in its sum).
    totals : (Q,) int64 row totals A_j.
    rng : the generator of the offsets u (one per row).

    Returns
    -------
    (Q, K) int64 counts with row sums equal to `totals` and E[counts] = the rescaled rows.
    """
    row_sums = scaled.sum(axis=1, keepdims=True)  # (Q, 1)
    exact = np.divide(
        scaled * totals[:, None], row_sums, out=np.zeros_like(scaled), where=row_sums > 0
    )  # (Q, K) rows summing to A_j in exact arithmetic
    cumulative = np.cumsum(exact, axis=1)  # (Q, K)
    cumulative[:, -1] = totals  # pin the end so float error cannot move the total
    offsets = rng.random((len(scaled), 1))  # (Q, 1)
    crossings = np.floor(cumulative - offsets)  # (Q, K)
    before = np.concatenate([np.floor(-offsets), crossings[:, :-1]], axis=1)  # (Q, K)
    return (crossings - before).astype(np.int64)


def quantise_contribution(
    contribution: Contribution, bits: int, rng: np.random.Generator
) -> tuple[Contribution, np.ndarray]:
    """Quantise a report to `bits` bits.

    Parameters
    ----------
    contribution : probs (Q, K) on the simplex, weight w, optional row_weights (Q,) in [0, 1].
    bits : label_bits b.
    rng : the client's rounding generator (seeded per client and round).

    Returns
    -------
    (the dequantised Contribution, counts (Q, K) int64): counts' rows sum to 2^b without row
    weights and to the stochastically rounded r_j·2^b with them; the Contribution is
    `dequantise(counts, b, w, per_row)`, so every party reading the counts gets the same floats.
    """
    check_label_bits(bits)
    scale = 2**bits
    probs = np.asarray(contribution.probs, dtype=np.float64)  # (Q, K)
    per_row = contribution.row_weights is not None
    if not per_row:
        counts = quantise_probs(probs, bits, rng)
        return dequantise(counts, bits, contribution.weight, per_row), counts
    totals = stochastic_round(np.asarray(contribution.row_weights) * scale, rng)  # (Q,)
    counts = round_rows(np.clip(probs, 0.0, None), totals, rng)
    return dequantise(counts, bits, contribution.weight, per_row), counts


def quantise_probs(probs: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """(Q, K) probabilities → (Q, K) int64 counts summing to 2^b per row (unbiased)."""
    check_label_bits(bits)
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    return round_rows(probs, np.full(len(probs), 2**bits, dtype=np.int64), rng)


def digest_counts(ensemble_probs: np.ndarray, config: RunConfig, round_number: int) -> np.ndarray:
    """The previous ensemble (Q', K) as the server sends it in `round_number`: (Q', K) counts at
    `label_bits`, rounded with the server's own seeded offsets (every engine gets the same)."""
    rng = rounding_generator(config.seed, round_number, SERVER_PARTY)
    return quantise_probs(ensemble_probs, config.label_bits, rng)


def dequantise(counts: np.ndarray, bits: int, weight: float, per_row: bool) -> Contribution:
    """Counts (Q, K) at `bits` bits → Contribution (probs float64 (Q, K), weight, row weights).

    Without per-row weights probs = C / 2^b (rows sum to 1). With them the row weight is
    r_j = A_j / 2^b and the row C_j· / A_j (a row with A_j = 0 stays all zero: it abstains).
    """
    counts = np.asarray(counts, dtype=np.int64)
    if not per_row:
        return Contribution(probs=np.ldexp(counts.astype(np.float64), -bits), weight=weight)
    totals = counts.sum(axis=1)  # (Q,)
    probs = np.divide(
        counts.astype(np.float64),
        totals[:, None].astype(np.float64),
        out=np.zeros(counts.shape),
        where=totals[:, None] > 0,
    )
    return Contribution(
        probs=probs, weight=weight, row_weights=np.ldexp(totals.astype(np.float64), -bits)
    )


def counts_to_probs(counts: np.ndarray, bits: int) -> np.ndarray:
    """(Q, K) counts whose rows sum to 2^b → (Q, K) float32 probabilities (exact)."""
    return dequantise(counts, bits, 1.0, per_row=False).probs.astype(np.float32)


def check_counts(counts: np.ndarray, bits: int, per_row: bool, shape: tuple[int, int]) -> None:
    """Raise ValueError unless `counts` is a valid quantised report of `shape` at `bits` bits."""
    if counts.shape != shape:
        raise ValueError(f"counts shape {counts.shape}, expected {shape}")
    scale = 2**bits
    if counts.size and (counts.min() < 0 or counts.max() > scale):
        raise ValueError(f"counts outside [0, 2^{bits}] (min {counts.min()}, max {counts.max()})")
    totals = counts.sum(axis=1)
    if per_row:
        if totals.size and totals.max() > scale:
            raise ValueError(f"row totals above 2^{bits} (max {totals.max()})")
    elif np.any(totals != scale):
        worst = int(np.abs(totals - scale).max())
        raise ValueError(f"rows do not sum to 2^{bits} (worst deviation {worst})")
