"""Which public samples a round queries: at random, or where the server's knowledge is least sure.

Informative selection (CFD's active curation, Sattler et al. 2021) scores every public input by
the student's prediction at T = 1, the server's summary of every earlier ensemble and of nothing
else: no label is ever read. `entropy` picks the highest predictive entropy, `margin` the smallest
gap between the top two classes. Round 1 (no student has learnt yet) and `random` draw a seeded
random subset, the same in every engine. Indices are returned sorted, as the wire coding expects.
"""

from __future__ import annotations

import numpy as np

from common.config import RunConfig
from common.methods.base import normalised_entropy

QUERY_SEED_TAG = 4


def choose_queries(
    config: RunConfig, n_public: int, round_number: int, student_probs: np.ndarray | None
) -> np.ndarray:
    """The round's public query indices.

    Parameters
    ----------
    config : `public_query_size` Q (0 = all) and `query_selection`.
    n_public : N, the size of the public set.
    round_number : 1-based round (seeds the random draw).
    student_probs : (N, K) the student's probabilities at T = 1 on every public input, or None
        before the first distillation (then the draw is random).

    Returns
    -------
    (Q,) sorted int64 indices into the public set.
    """
    size = config.public_query_size
    if not size or size >= n_public:
        return np.arange(n_public, dtype=np.int64)
    if config.query_selection == "random" or student_probs is None:
        rng = np.random.default_rng([config.seed, round_number, QUERY_SEED_TAG])
        return np.sort(rng.choice(n_public, size, replace=False)).astype(np.int64)
    if student_probs.shape[0] != n_public:
        raise ValueError(f"student_probs has {student_probs.shape[0]} rows, expected {n_public}")
    uncertainty = informativeness(student_probs, config.query_selection)  # (N,)
    chosen = np.argsort(-uncertainty, kind="stable")[:size]  # ties: the lower index first
    return np.sort(chosen).astype(np.int64)


def informativeness(probs: np.ndarray, rule: str) -> np.ndarray:
    """(N, K) probabilities → (N,) scores, higher = more informative to query."""
    if rule == "entropy":
        return normalised_entropy(probs.astype(np.float64))
    if rule == "margin":
        top_two = np.sort(probs, axis=1)[:, -2:]  # (N, 2)
        return -(top_two[:, 1] - top_two[:, 0])
    raise ValueError(f"query selection rule must be 'entropy' or 'margin', got {rule!r}")
