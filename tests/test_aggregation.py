"""Tests for the server's soft-label validation and seeded cohort sampling."""

from __future__ import annotations

import numpy as np
import pytest

from server.aggregation import ROW_SUM_TOLERANCE, validate_probs
from server.cohort import NodeInfo, sample_cohort

# --- validate_probs --------------------------------------------------------------------------

VALID = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=np.float32)


def test_valid_matrix_is_accepted():
    assert validate_probs(VALID, (2, 3)) is None


def test_row_sum_within_tolerance_is_accepted():
    probs = np.array([[0.2, 0.3, 0.5 + ROW_SUM_TOLERANCE / 2]], dtype=np.float32)

    assert validate_probs(probs, (1, 3)) is None


def _with(row: int, col: int, value: float) -> np.ndarray:
    probs = VALID.copy()
    probs[row, col] = value
    return probs


@pytest.mark.parametrize(
    ("probs", "reason"),
    [
        (VALID[:1], "shape (1, 3), expected (2, 3)"),
        (VALID.T.copy(), "shape (3, 2), expected (2, 3)"),
        (VALID.astype(np.float64), "dtype float64, expected float32"),
        (VALID.astype(np.float16), "dtype float16, expected float32"),
        (_with(0, 0, np.nan), "NaN or Inf values"),
        (_with(1, 2, np.inf), "NaN or Inf values"),
        (_with(0, 0, -np.inf), "NaN or Inf values"),
        # Rows still sum to 1, so only the range check can catch these.
        (np.array([[-0.5, 0.5, 1.0], [1, 0, 0]], dtype=np.float32), "values outside [0, 1]"),
        (np.array([[1.5, -0.5, 0.0], [1, 0, 0]], dtype=np.float32), "values outside [0, 1]"),
        (_with(0, 2, 0.4), "rows do not sum to 1 (worst deviation 0.1"),
        (np.zeros((2, 3), dtype=np.float32), "rows do not sum to 1 (worst deviation 1"),
    ],
    ids=[
        "too-few-rows",
        "transposed",
        "float64",
        "float16",
        "nan",
        "inf",
        "minus-inf",
        "negative",
        "above-one",
        "row-sum-0.9",
        "zero-rows",
    ],
)
def test_invalid_matrices_are_rejected_with_the_reason(probs, reason):
    result = validate_probs(probs, (2, 3))

    assert result is not None and result.startswith(reason), result


# --- sample_cohort ---------------------------------------------------------------------------

NODES = [NodeInfo(node_id=1000 + 7 * i, index=i, label=f"partition-{i}") for i in range(10)]


@pytest.mark.parametrize(
    ("fraction", "min_clients", "size"),
    [
        (1.0, 2, 10),
        (0.3, 2, 3),
        (0.25, 2, 3),  # ⌈2.5⌉
        (0.01, 2, 2),  # min_clients wins over ⌈0.1⌉ = 1
        (0.3, 5, 5),
        (0.5, 10, 10),
    ],
)
def test_cohort_size_is_max_of_min_clients_and_ceil_fraction(fraction, min_clients, size):
    cohort = sample_cohort(NODES, fraction, min_clients, seed=0, round_number=1)

    assert len(cohort) == size
    assert len({node.node_id for node in cohort}) == size
    assert all(node in NODES for node in cohort)


def test_cohort_keeps_the_registry_order():
    cohort = sample_cohort(NODES, 0.5, 2, seed=0, round_number=1)

    assert [node.index for node in cohort] == sorted(node.index for node in cohort)


def test_cohort_is_deterministic_per_seed_and_round():
    # Execute
    first = sample_cohort(NODES, 0.3, 2, seed=4, round_number=2)
    again = sample_cohort(NODES, 0.3, 2, seed=4, round_number=2)
    by_round = [sample_cohort(NODES, 0.3, 2, seed=4, round_number=r) for r in range(1, 11)]
    by_seed = [sample_cohort(NODES, 0.3, 2, seed=s, round_number=2) for s in range(10)]

    # Assert: same (seed, round) → same cohort; other rounds and seeds do vary.
    assert first == again
    assert len({tuple(n.index for n in cohort) for cohort in by_round}) > 1
    assert len({tuple(n.index for n in cohort) for cohort in by_seed}) > 1


def test_cohort_does_not_depend_on_node_ids():
    # The runtime assigns random node ids; the same data sources must give the same cohort.
    renumbered = [NodeInfo(node_id=5 * n.node_id + 3, index=n.index, label=n.label) for n in NODES]

    cohort = sample_cohort(NODES, 0.3, 2, seed=1, round_number=3)
    renumbered_cohort = sample_cohort(renumbered, 0.3, 2, seed=1, round_number=3)

    assert [n.index for n in cohort] == [n.index for n in renumbered_cohort]


def test_too_few_nodes_is_an_error_naming_both_numbers():
    with pytest.raises(ValueError, match=r"only 3 nodes are connected; min_clients=4"):
        sample_cohort(NODES[:3], 1.0, 4, seed=0, round_number=1)
