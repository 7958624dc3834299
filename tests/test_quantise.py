"""Quantised soft labels: unbiased, on the simplex, exact at 24 bits, and losslessly coded."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import RunConfig
from common.label_coding import decode_counts, decode_indices, encode_counts, encode_indices
from common.protocol import Contribution
from common.quantise import dequantise, quantise_contribution, quantise_probs, round_rows
from server.queries import choose_queries, informativeness

RNG = np.random.default_rng(7)
PROBS = RNG.dirichlet(np.full(10, 0.3), size=50)  # (50, 10) rows on the simplex


def test_rows_keep_their_totals_and_values_stay_within_one_of_the_scaled_value():
    scaled = PROBS * 2**6

    counts = round_rows(PROBS, np.full(50, 2**6), np.random.default_rng(0))

    np.testing.assert_array_equal(counts.sum(axis=1), np.full(50, 2**6))
    assert np.all((counts == np.floor(scaled)) | (counts == np.ceil(scaled)))


@pytest.mark.parametrize("bits", [2, 4])
def test_quantisation_is_unbiased(bits):
    # The mean of 20 000 independent roundings is within 5 standard errors of p·2^b: the
    # per-entry variance is at most 1/4, so the standard error is at most 0.5/√20000 = 0.0035.
    probs = PROBS[:5]
    draws = 20_000
    rng = np.random.default_rng(1)

    mean = sum(quantise_probs(probs, bits, rng) for _ in range(draws)) / draws

    np.testing.assert_allclose(mean, probs * 2**bits, rtol=0, atol=5 * 0.5 / np.sqrt(draws))


def test_deterministic_rounding_would_be_biased_and_ours_is_not():
    # p = 0.3 at 1 bit: round-to-nearest always gives 0 (bias −0.3); ours averages 0.3·2.
    probs = np.array([[0.3, 0.7]])
    rng = np.random.default_rng(2)

    mean = np.mean([quantise_probs(probs, 1, rng)[0, 0] for _ in range(20_000)])

    assert np.rint(0.3 * 2) == 1.0 and abs(mean - 0.6) < 0.02


@pytest.mark.parametrize("bits", [1, 3, 8, 16, 24])
def test_decoded_rows_stay_on_the_simplex(bits):
    contribution = Contribution(probs=PROBS.astype(np.float32), weight=1.0)

    quantised, counts = quantise_contribution(contribution, bits, np.random.default_rng(3))

    assert counts.min() >= 0 and counts.max() <= 2**bits
    np.testing.assert_array_equal(quantised.probs.sum(axis=1), np.ones(50))  # exact in float64


def test_values_already_on_the_24_bit_grid_round_trip_exactly():
    counts = quantise_probs(PROBS, 24, np.random.default_rng(4))
    on_grid = dequantise(counts, 24, 1.0, per_row=False).probs.astype(np.float32)  # exact

    again = quantise_probs(on_grid, 24, np.random.default_rng(5))

    np.testing.assert_array_equal(again, counts)


def test_per_row_weights_are_quantised_unbiasedly_and_rows_stay_normalised():
    row_weights = np.array([0.0, 0.3, 1.0, 0.55])
    contribution = Contribution(PROBS[:4].astype(np.float32), 2.0, row_weights)
    rng = np.random.default_rng(6)

    draws = [quantise_contribution(contribution, 3, rng)[0] for _ in range(20_000)]

    mean_weights = np.mean([d.row_weights for d in draws], axis=0)
    np.testing.assert_allclose(mean_weights, row_weights, atol=0.005)
    assert draws[0].row_weights[0] == 0 and not draws[0].probs[0].any()  # abstains exactly
    for draw in draws[:100]:
        kept = draw.row_weights > 0
        np.testing.assert_allclose(draw.probs[kept].sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bits", [1, 4, 8, 15, 16, 24])
@pytest.mark.parametrize("per_row", [False, True])
def test_coding_is_lossless(bits, per_row):
    contribution = Contribution(PROBS.astype(np.float32), 1.0, RNG.random(50) if per_row else None)
    _, counts = quantise_contribution(contribution, bits, np.random.default_rng(8))

    coded = encode_counts(counts, bits, per_row)

    np.testing.assert_array_equal(decode_counts(coded, bits, per_row, counts.shape), counts)


def test_coded_labels_are_much_smaller_than_float32_at_low_bits():
    _, counts = quantise_contribution(Contribution(PROBS, 1.0), 4, np.random.default_rng(9))

    coded = encode_counts(counts, 4, per_row=False)

    assert coded.nbytes < PROBS.astype(np.float32).nbytes / 8


def test_index_bitmask_round_trips_and_refuses_unsorted_indices():
    indices = np.array([0, 3, 9, 31, 32])

    mask = encode_indices(indices, 33)

    assert mask.shape == (5,)
    np.testing.assert_array_equal(decode_indices(mask, 33), indices)
    with pytest.raises(ValueError, match=r"sorted, unique and in \[0, 33\)"):
        encode_indices(np.array([3, 0]), 33)
    with pytest.raises(ValueError, match="beyond the public set's 30"):
        decode_indices(np.packbits(np.ones(32, bool)), 30)


# --- query selection ---------------------------------------------------------------------------

STUDENT = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.99, 0.01], [0.55, 0.45]])


@pytest.mark.parametrize("rule", ["entropy", "margin"])
def test_informative_selection_picks_the_least_certain_student_predictions(rule):
    config = RunConfig(public_query_size=2, query_selection=rule)

    chosen = choose_queries(config, 5, round_number=2, student_probs=STUDENT)

    np.testing.assert_array_equal(chosen, [1, 4])
    assert np.argmax(informativeness(STUDENT, rule)) == 1


def test_first_round_and_random_selection_draw_the_same_seeded_subset():
    informative = RunConfig(public_query_size=3, query_selection="entropy")
    random = RunConfig(public_query_size=3, query_selection="random")

    first = choose_queries(informative, 5, 1, None)

    np.testing.assert_array_equal(first, choose_queries(random, 5, 1, STUDENT))
    assert len(first) == 3 and np.all(np.diff(first) > 0)


def test_bad_label_bits_and_query_selection_are_refused():
    with pytest.raises(ValueError, match=r"label_bits must be in \[1, 24\], got 25"):
        RunConfig.from_mapping({"label_bits": 25})
    with pytest.raises(ValueError, match="query_selection must be one of"):
        RunConfig.from_mapping({"query_selection": "loss"})
