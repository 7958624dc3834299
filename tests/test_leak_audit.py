"""Tests for simulations.leak.audit: ε from TPR/FPR pairs, from score arrays, one-run audits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from simulations.leak.audit import (
    audit_epsilon_from_scores,
    empirical_epsilon,
    one_run_epsilon_lower_bound,
)

DELTA = 1e-5


# --- empirical_epsilon -------------------------------------------------------------------------


def test_empirical_epsilon_point_estimate_is_the_hypothesis_testing_bound():
    point, _ = empirical_epsilon(0.5, 0.01, 10**6, 10**6, DELTA)
    assert point == pytest.approx(math.log((0.5 - DELTA) / 0.01), rel=1e-12)


def test_empirical_epsilon_uses_the_complementary_region_when_it_proves_more():
    # TPR 0.99, FPR 0.5: ln(0.99/0.5) = 0.68 from TPR/FPR, ln(0.5/0.01) = 3.91 from TNR/FNR.
    point, _ = empirical_epsilon(0.99, 0.5, 10**6, 10**6, 0.0)
    assert point == pytest.approx(math.log(0.5 / 0.01), rel=1e-9)


def test_empirical_epsilon_lower_bound_is_below_the_point_and_converges_to_it():
    point = math.log((0.5 - DELTA) / 0.01)
    lowers = [empirical_epsilon(0.5, 0.01, n, n, DELTA)[1] for n in (1_000, 100_000, 10**7)]
    assert lowers[0] < lowers[1] < lowers[2] < point
    assert lowers[0] == pytest.approx(3.242, abs=1e-3)
    assert point - lowers[2] < 0.01


def test_empirical_epsilon_of_a_chance_attack_and_of_a_perfect_one():
    assert empirical_epsilon(0.3, 0.3, 1000, 1000, DELTA) == (0.0, 0.0)
    point, lower = empirical_epsilon(1.0, 0.0, 500, 500, DELTA)
    assert point == math.inf
    # Clopper-Pearson at 95 %: TPR >= 0.025^(1/500), FPR <= 1 − 0.025^(1/500).
    edge = 0.025 ** (1 / 500)
    assert lower == pytest.approx(math.log((edge - DELTA) / (1 - edge)), rel=1e-9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.5, 0.1, 10, 10, DELTA), "tpr must be in"),
        ((0.5, -0.1, 10, 10, DELTA), "fpr must be in"),
        ((0.5, 0.1, 0, 10, DELTA), "n_members must be an integer >= 1"),
        ((0.5, 0.1, 10, 10, 1.0), r"delta must be in \[0, 1\)"),
    ],
    ids=["tpr", "fpr", "members", "delta"],
)
def test_empirical_epsilon_names_the_bad_argument(args, message):
    with pytest.raises(ValueError, match=message):
        empirical_epsilon(*args)


# --- from score arrays -------------------------------------------------------------------------


def separable_scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    is_member = np.random.default_rng(seed).random(n) < 0.5
    return is_member.astype(float), is_member


@pytest.mark.parametrize("choice", ["split", "bonferroni"])
def test_audit_from_scores_of_identical_distributions_proves_nothing(choice):
    rng = np.random.default_rng(1)
    is_member = rng.random(2000) < 0.5
    scores = rng.normal(size=2000)
    assert audit_epsilon_from_scores(scores, is_member, DELTA, threshold_choice=choice) == 0.0


def test_audit_from_scores_of_a_perfect_attack_matches_the_held_out_half():
    # The split keeps half of each class for the bound, where the attack is still perfect:
    # the bound equals empirical_epsilon(1, 0) on those counts.
    scores, is_member = separable_scores(2000)
    held_members = int(is_member.sum()) - int(is_member.sum()) // 2
    held_others = int((~is_member).sum()) - int((~is_member).sum()) // 2
    expected = empirical_epsilon(1.0, 0.0, held_members, held_others, DELTA)[1]

    assert audit_epsilon_from_scores(scores, is_member, DELTA) == pytest.approx(expected)


def test_both_threshold_choices_see_a_real_but_bounded_leak():
    rng = np.random.default_rng(2)
    is_member = rng.random(1000) < 0.5
    scores = rng.normal(size=1000) + 1.5 * is_member
    corrected = audit_epsilon_from_scores(scores, is_member, DELTA, threshold_choice="bonferroni")
    split = audit_epsilon_from_scores(scores, is_member, DELTA)
    # Shifted Gaussians at 1.5σ: a real but bounded leak, seen by both ways.
    assert 0.5 < corrected < 3.0 and 0.5 < split < 3.0


def test_audit_from_scores_rejects_an_unknown_threshold_choice():
    with pytest.raises(ValueError, match="threshold_choice must be one of"):
        audit_epsilon_from_scores(np.arange(4.0), [1, 1, 0, 0], DELTA, threshold_choice="max")


# --- one-run auditing --------------------------------------------------------------------------


def test_one_run_bound_is_zero_for_chance_level_guesses():
    assert one_run_epsilon_lower_bound(500, 1000, 1000, DELTA) == 0.0
    assert one_run_epsilon_lower_bound(0, 0, 1000, DELTA) == 0.0


def test_one_run_bound_grows_with_accuracy():
    bounds = [one_run_epsilon_lower_bound(v, 100, 1000, 0.0) for v in (60, 70, 80, 90, 100)]
    assert all(a < b for a, b in itertools.pairwise(bounds))
    # All 100 guesses correct under pure DP: q^100 = 0.05 at the bound, q = 1/(1 + e^-ε).
    q = 0.05 ** (1 / 100)
    assert bounds[-1] == pytest.approx(math.log(q / (1 - q)), abs=1e-9)


def test_one_run_bound_with_delta_is_below_the_pure_bound():
    pure = one_run_epsilon_lower_bound(90, 100, 1000, 0.0)
    approximate = one_run_epsilon_lower_bound(90, 100, 1000, 1e-4)
    assert 0.0 < approximate < pure


def test_one_run_bound_rejects_more_correct_than_made():
    with pytest.raises(ValueError, match="guesses_correct <= guesses_made <= n_canaries"):
        one_run_epsilon_lower_bound(11, 10, 100, DELTA)
