"""Tests for the server's reading of coded soft labels and seeded cohort sampling."""

from __future__ import annotations

import lzma

import numpy as np
import pytest

from common.label_coding import LZMA_FILTERS, decode_counts, encode_counts
from server.cohort import NodeInfo, sample_cohort

# --- coded soft labels as the plain server reads them ----------------------------------------

BITS = 4
VALID = np.array([[3, 5, 8], [16, 0, 0]])  # rows sum to 2^4


def _lzma(raw: bytes) -> np.ndarray:
    """A well-formed LZMA payload of arbitrary bytes, as a client could craft one."""
    data = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    return np.frombuffer(data, dtype=np.uint8)


def test_valid_counts_round_trip():
    coded = encode_counts(VALID, BITS, per_row=False)

    np.testing.assert_array_equal(decode_counts(coded, BITS, False, (2, 3)), VALID)


@pytest.mark.parametrize(
    ("payload", "per_row", "reason"),
    [
        (np.frombuffer(b"not lzma at all", np.uint8), False, "coded counts do not decompress"),
        (encode_counts(VALID[:1], BITS, False), False, "coded counts hold 2 bytes, expected 4"),
        (_lzma(bytes(10_000)), False, "coded counts hold 5+ bytes, expected 4"),
        (_lzma(bytes([17, 0, 3, 5])), False, "counts outside [0, 2^4] (min -1, max 17)"),
        (_lzma(bytes([9, 9, 3, 5])), False, "counts outside [0, 2^4] (min -2, max 9)"),
        (_lzma(bytes([9, 9, 0, 3, 5, 8])), True, "row totals above 2^4 (max 18)"),
        (VALID.astype(np.float32).ravel().view(np.uint8), False, "coded counts hold 0 bytes"),
        (np.array([[1, 2]], dtype=np.uint8), False, "coded counts must be 1-D uint8"),
    ],
    ids=[
        "garbage",
        "one-row-short",
        "inflates-beyond",
        "count-above",
        "row-above",
        "per-row-total",
        "float-bytes",
        "2-d",
    ],
)
def test_malformed_coded_counts_are_refused_with_the_reason(payload, per_row, reason):
    with pytest.raises(ValueError) as error:
        decode_counts(payload, BITS, per_row, (2, 3))

    assert str(error.value).startswith(reason), str(error.value)


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
