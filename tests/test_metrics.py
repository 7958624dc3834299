"""Tests for common.metrics: accuracy, NLL, 15-bin ECE, reliability data, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from common.metrics import (
    ECE_BINS,
    accuracy,
    cross_fitted_temperature_scaling,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
    reliability_bins,
    softmax_at,
)

# Five predictions over two classes. Bin b of 15 covers (b/15, (b+1)/15].
#   probs          label  confidence  correct  bin (interval)
#   (0.95, 0.05)   0      0.95        yes      14 (0.9333, 1]
#   (0.90, 0.10)   1      0.90        no       13 (0.8667, 0.9333]
#   (0.30, 0.70)   1      0.70        yes      10 (0.6667, 0.7333]
#   (0.35, 0.65)   0      0.65        no        9 (0.6, 0.6667]
#   (0.68, 0.32)   1      0.68        no       10 (0.6667, 0.7333]
PROBS = np.array([[0.95, 0.05], [0.90, 0.10], [0.30, 0.70], [0.35, 0.65], [0.68, 0.32]])
LABELS = np.array([0, 1, 1, 0, 1])


def test_accuracy_counts_top1_hits():
    # 0.95→0 ✓, 0.90→0 ✗, 0.70→1 ✓, 0.65→1 ✗, 0.68→0 ✗ → 2/5
    assert accuracy(PROBS, LABELS) == pytest.approx(0.4, abs=1e-15)


def test_nll_is_mean_negative_log_of_true_class_probability():
    # −(ln 0.95 + ln 0.10 + ln 0.70 + ln 0.35 + ln 0.32) / 5
    # = (0.0512933 + 2.3025851 + 0.3566749 + 1.0498221 + 1.1394343) / 5 = 0.9799619
    assert nll(PROBS, LABELS) == pytest.approx(0.9799619, abs=1e-7)


def test_nll_clips_zero_probability_to_a_finite_value():
    # A true class with probability 0 costs −ln(1e-12) = 27.6310211 instead of infinity.
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    labels = np.array([1, 0])

    value = nll(probs, labels)

    assert value == pytest.approx((27.6310211 + 0.6931472) / 2, abs=1e-6)


def test_ece_with_15_bins_matches_hand_computation():
    # Per non-empty bin, (n_b / N) · |acc_b − conf_b|:
    #   bin 14: 1/5 · |1 − 0.95|                      = 1/5 · 0.05
    #   bin 13: 1/5 · |0 − 0.90|                      = 1/5 · 0.90
    #   bin 10: 2/5 · |1/2 − (0.70 + 0.68)/2 = 0.69|  = 2/5 · 0.19
    #   bin  9: 1/5 · |0 − 0.65|                      = 1/5 · 0.65
    # ECE = (0.05 + 0.90 + 0.38 + 0.65) / 5 = 1.98 / 5 = 0.396
    assert ECE_BINS == 15

    ece = expected_calibration_error(PROBS, LABELS)

    assert ece == pytest.approx(0.396, abs=1e-12)


def test_reliability_bins_per_bin_counts_confidence_and_accuracy():
    # Execute
    counts, mean_conf, mean_acc = reliability_bins(PROBS, LABELS)

    # Assert: only bins 9, 10, 13 and 14 are occupied (see the table above).
    expected_counts = np.zeros(15)
    expected_counts[[9, 10, 13, 14]] = [1, 2, 1, 1]
    np.testing.assert_array_equal(counts, expected_counts)
    np.testing.assert_allclose(mean_conf[[9, 10, 13, 14]], [0.65, 0.69, 0.90, 0.95], atol=1e-12)
    np.testing.assert_allclose(mean_acc[[9, 10, 13, 14]], [0.0, 0.5, 0.0, 1.0], atol=1e-12)
    assert np.all(mean_conf[counts == 0] == 0) and np.all(mean_acc[counts == 0] == 0)


def test_confidence_one_falls_in_the_last_bin():
    # Confidence exactly 1.0 belongs to (14/15, 1], not to a 16th bin.
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 0])

    counts, mean_conf, mean_acc = reliability_bins(probs, labels)

    assert counts[14] == 2 and counts.sum() == 2
    assert mean_conf[14] == 1.0 and mean_acc[14] == 0.5
    # ECE = 1 · |0.5 − 1.0| = 0.5
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("k", range(1, 15))
def test_confidence_on_a_bin_edge_belongs_to_the_lower_bin(k):
    # Bins are right-closed: confidence k/15 is the top of bin k−1, not the bottom of bin k.
    # The row has 16 classes; the other 15 share 1 − k/15 equally, each below k/15.
    confidence = k / 15
    probs = np.array([[confidence] + [(1.0 - confidence) / 15] * 15])
    labels = np.array([0])

    counts, mean_conf, _ = reliability_bins(probs, labels)

    expected_counts = np.zeros(15)
    expected_counts[k - 1] = 1
    np.testing.assert_array_equal(counts, expected_counts)
    assert mean_conf[k - 1] == confidence


def test_bin_edges_with_exactly_representable_confidences():
    # With 4 bins the edges 0.25, 0.5, 0.75 and 1 are exact in binary floating point:
    # 0.5 → bin 1 (0.25, 0.5], 0.75 → bin 2 (0.5, 0.75], 1.0 → bin 3 (0.75, 1].
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.75, 0.25], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 0])

    counts, mean_conf, mean_acc = reliability_bins(probs, labels, n_bins=4)

    # Ties go to class 0 (argmax), so row 2 (label 1) is wrong: bin 1 has accuracy 1/2.
    np.testing.assert_array_equal(counts, [0, 2, 1, 1])
    np.testing.assert_array_equal(mean_conf, [0.0, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(mean_acc, [0.0, 0.5, 0.0, 1.0])


# --- reliability diagram data ----------------------------------------------------------------


def test_reliability_gives_the_diagram_bins_and_their_ece():
    # The five predictions above: bins 9 (1 sample), 10 (2), 13 (1), 14 (1); ECE 0.396.
    diagram = reliability(PROBS, LABELS)

    np.testing.assert_allclose(diagram.edges, np.arange(16) / 15, rtol=0, atol=1e-15)
    expected_counts = np.zeros(15)
    expected_counts[[9, 10, 13, 14]] = [1, 2, 1, 1]
    np.testing.assert_array_equal(diagram.counts, expected_counts)
    np.testing.assert_allclose(
        diagram.confidence[[9, 10, 13, 14]], [0.65, 0.69, 0.90, 0.95], rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(diagram.accuracy[[9, 10, 13, 14]], [0, 0.5, 0, 1], atol=0)
    assert diagram.ece == pytest.approx(0.396, abs=1e-12)


# --- temperature scaling ---------------------------------------------------------------------


def test_fit_temperature_matches_the_closed_form_for_two_classes():
    # Logits (2, 0) for four samples, three of them labelled 0: the NLL is minimal where
    # sigmoid(2/T) = 3/4, i.e. 2/T = ln 3, T = 2 / ln 3 = 1.8204784.
    logits = np.array([[2.0, 0.0]] * 4)
    labels = np.array([0, 0, 0, 1])

    assert fit_temperature(logits, labels) == pytest.approx(1.8204784, abs=1e-7)


def test_fit_temperature_stays_inside_its_bounds():
    # Every prediction right: the NLL keeps falling as T → 0, so the lower bound is returned.
    logits = np.array([[2.0, 0.0], [0.0, 2.0]])

    assert fit_temperature(logits, np.array([0, 1]), bounds=(0.1, 10.0)) == pytest.approx(
        0.1, rel=1e-6
    )


def test_softmax_at_divides_logits_by_the_temperature():
    # softmax((ln 4, 0) / 2) = softmax(ln 2, 0) = (2/3, 1/3)
    np.testing.assert_allclose(
        softmax_at(np.array([[np.log(4.0), 0.0]]), 2.0), [[2 / 3, 1 / 3]], rtol=0, atol=1e-15
    )


def test_cross_fitted_scaling_applies_each_halfs_temperature_to_the_other_half():
    # Prepare: 40 two-class samples with varied logits and labels.
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 2)) * 3
    labels = rng.integers(0, 2, size=40)

    # Execute
    probs, (first, second) = cross_fitted_temperature_scaling(logits, labels, seed=7)

    # Assert: rebuild the halves from the same seeded permutation.
    order = np.random.default_rng([7, 41]).permutation(40)
    half_a, half_b = order[:20], order[20:]
    assert first == fit_temperature(logits[half_a], labels[half_a])
    assert second == fit_temperature(logits[half_b], labels[half_b])
    np.testing.assert_array_equal(probs[half_b], softmax_at(logits[half_b], first))
    np.testing.assert_array_equal(probs[half_a], softmax_at(logits[half_a], second))
