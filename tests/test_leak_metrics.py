"""Tests for simulations.leak: attack metrics, LiRA and label-distribution scores, ROC plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from simulations.leak.metrics import (
    clopper_pearson,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
    tpr_at_fpr_with_interval,
)
from simulations.leak.plots import plot_roc_loglog
from simulations.leak.scores import (
    calibrated_class_histogram,
    estimate_class_histogram,
    kl_divergence,
    l1_error,
    lira_offline_score,
    lira_online_score,
    logit_scale,
    true_label_confidence,
)

# Two members {0.9, 0.8}, two non-members {0.8, 0.3}: one member/non-member tie at 0.8.
TIED_SCORES = np.array([0.9, 0.8, 0.8, 0.3])
TIED_MEMBERS = np.array([True, True, False, False])

# Ten non-members scored 1..10 and four members; thresholds are easy to enumerate by hand.
LADDER_SCORES = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 5.5, 9.5, 11, 12], dtype=float)
LADDER_MEMBERS = np.r_[np.zeros(10, dtype=bool), np.ones(4, dtype=bool)]


# --- ROC and AUC -----------------------------------------------------------------------------


def test_roc_curve_moves_tied_scores_together():
    fpr, tpr = roc_curve(TIED_SCORES, TIED_MEMBERS)
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0, 1.0])


def test_roc_curve_of_all_tied_scores_is_the_diagonal():
    fpr, tpr = roc_curve(np.ones(5), [1, 0, 1, 0, 0])
    np.testing.assert_allclose(fpr, [0.0, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 1.0])


def test_roc_auc_counts_ties_as_half():
    # Pairs (member, non-member): 0.9>0.8, 0.9>0.3, 0.8=0.8 (1/2), 0.8>0.3 -> 3.5 / 4.
    assert roc_auc(TIED_SCORES, TIED_MEMBERS) == pytest.approx(0.875)
    assert roc_auc(np.ones(6), [1, 0, 1, 0, 1, 0]) == pytest.approx(0.5)


def test_roc_auc_extremes():
    assert roc_auc([3.0, 4.0, 1.0, 2.0], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert roc_auc([1.0, 2.0, 3.0, 4.0], [1, 1, 0, 0]) == pytest.approx(0.0)


def test_roc_auc_equals_pairwise_count_and_trapezoid_area_with_many_ties():
    # Prepare: integer scores in a small range, so most pairs tie.
    rng = np.random.default_rng(3)
    is_member = rng.random(300) < 0.4
    scores = rng.integers(0, 6, size=300) + is_member

    # Execute
    auc = roc_auc(scores, is_member)
    fpr, tpr = roc_curve(scores, is_member)

    # Assert
    member_scores, other_scores = scores[is_member][:, None], scores[~is_member][None, :]
    pairwise = np.mean((member_scores > other_scores) + 0.5 * (member_scores == other_scores))
    assert auc == pytest.approx(pairwise, abs=1e-12)
    assert auc == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-12)


# --- TPR at low FPR --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fpr_target", "expected_tpr"),
    [(0.0, 0.5), (0.05, 0.5), (0.1, 0.75), (0.4, 0.75), (0.5, 1.0), (1.0, 1.0)],
)
def test_tpr_at_fpr_on_hand_enumerated_thresholds(fpr_target, expected_tpr):
    # Thresholds: >=11 flags 2 members, 0 FP; >=9.5 flags 3 members, 1 FP (10);
    # >=5.5 flags all 4 members, 5 FP (6..10).
    assert tpr_at_fpr(LADDER_SCORES, LADDER_MEMBERS, fpr_target) == pytest.approx(expected_tpr)


def test_tpr_at_zero_fpr_cannot_split_a_tie_at_the_top():
    assert tpr_at_fpr([5.0, 5.0, 1.0, 0.0], [1, 0, 1, 0], 0.0) == 0.0


def test_tpr_at_fpr_with_interval_uses_clopper_pearson_on_flagged_members():
    tpr, low, high = tpr_at_fpr_with_interval(LADDER_SCORES, LADDER_MEMBERS, 0.1, 0.9)
    assert tpr == pytest.approx(0.75)
    assert (low, high) == pytest.approx(clopper_pearson(3, 4, 0.9))


# --- Clopper-Pearson -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [
        (0, 10, (0.0, 0.3085)),
        (5, 10, (0.1871, 0.8129)),
        (10, 10, (0.6915, 1.0)),
    ],
)
def test_clopper_pearson_matches_published_values(successes, trials, expected):
    assert clopper_pearson(successes, trials) == pytest.approx(expected, abs=1e-4)


def test_clopper_pearson_zero_successes_has_closed_form_upper_bound():
    # For x = 0 the upper bound solves (1 − p)^n = α/2.
    assert clopper_pearson(0, 30, 0.99)[1] == pytest.approx(1 - 0.005 ** (1 / 30))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((11, 10), "need 0 <= successes <= trials and trials >= 1, got 11 of 10"),
        ((0, 0), "need 0 <= successes <= trials and trials >= 1, got 0 of 0"),
        ((-1, 10), "successes must be an integer >= 0, got -1"),
        ((2.5, 10), "successes must be an integer >= 0, got 2.5"),
        ((2, 10, 1.0), r"confidence must be in \(0, 1\), got 1.0"),
    ],
)
def test_clopper_pearson_rejects_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        clopper_pearson(*args)


@pytest.mark.parametrize(
    ("scores", "is_member", "message"),
    [
        ([0.1, 0.2], [1, 0, 1], "must be 1-D of equal length"),
        ([0.1, float("nan")], [1, 0], "scores must not contain NaN"),
        ([0.1, 0.2], [1, 2], "is_member must be boolean or 0/1"),
        ([0.1, 0.2], [1, 1], "both members and non-members, got 2 members of 2"),
    ],
)
def test_metrics_reject_bad_inputs(scores, is_member, message):
    with pytest.raises(ValueError, match=message):
        roc_auc(scores, is_member)
    with pytest.raises(ValueError, match=message):
        roc_curve(scores, is_member)


def test_tpr_at_fpr_rejects_target_outside_unit_interval():
    with pytest.raises(ValueError, match=r"fpr_target must be in \[0, 1\], got 1.5"):
        tpr_at_fpr(TIED_SCORES, TIED_MEMBERS, 1.5)


# --- confidences and LiRA --------------------------------------------------------------------


def test_true_label_confidence_picks_each_rows_label():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(true_label_confidence(probs, np.array([1, 2])), [0.2, 0.8])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got range \[0, 3\]"):
        true_label_confidence(probs, np.array([0, 3]))
    with pytest.raises(ValueError, match="labels must be integers"):
        true_label_confidence(probs, np.array([0.0, 1.0]))


def test_logit_scale_values_and_clipping():
    np.testing.assert_allclose(logit_scale([0.5, 0.75, 0.25]), [0.0, math.log(3), -math.log(3)])
    saturated = logit_scale([0.0, 1.0], eps=1e-6)
    np.testing.assert_allclose(saturated, [-math.log(1e6 - 1), math.log(1e6 - 1)])
    with pytest.raises(ValueError, match=r"confidences must lie in \[0, 1\]"):
        logit_scale([1.5])


def test_lira_scores_on_a_hand_computed_case():
    # Shadow logits OUT {-1, 0, 1} (mean 0, std 1) and IN {1, 2, 3} (mean 2, std 1); target 2.
    shadow_out = special.expit(np.array([[-1.0], [0.0], [1.0]]))
    shadow_in = special.expit(np.array([[1.0], [2.0], [3.0]]))
    target = special.expit(np.array([2.0]))

    offline = lira_offline_score(target, shadow_out)
    online = lira_online_score(target, shadow_in, shadow_out)

    np.testing.assert_allclose(offline, [2.0])
    # log N(2; 2, 1) − log N(2; 0, 1) = 0 − (−2²/2)
    np.testing.assert_allclose(online, [2.0])


def test_lira_ignores_missing_observations_and_pools_variance():
    # Canary 0 OUT logits {-1, 0, 1}; canary 1 {4, 6} with one NaN (missing observation).
    shadow_out = special.expit(np.array([[-1.0, 4.0], [0.0, np.nan], [1.0, 6.0]]))
    target = special.expit(np.array([1.0, 6.0]))

    per_canary = lira_offline_score(target, shadow_out)
    pooled = lira_offline_score(target, shadow_out, fixed_variance=True)

    np.testing.assert_allclose(per_canary, [1.0, 1.0 / math.sqrt(2.0)])
    # Pooled std: sqrt((2 + 2) / (5 observations − 2 means)).
    np.testing.assert_allclose(pooled, np.array([1.0, 1.0]) / math.sqrt(4.0 / 3.0))


def synthetic_lira_game(membership_shift: float, seed: int, n_canaries: int = 2000):
    """Canaries of varied difficulty; membership raises a canary's logit by `membership_shift`.

    Returns target confidences, IN and OUT shadow confidences and the ground truth.
    """
    rng = np.random.default_rng(seed)
    n_shadows = 16
    mean_out = rng.normal(0.0, 3.0, size=n_canaries)  # (n_canaries,) per-canary difficulty
    spread = rng.uniform(0.3, 1.0, size=n_canaries)
    is_member = rng.random(n_canaries) < 0.5
    out_logits = mean_out + spread * rng.standard_normal((n_shadows, n_canaries))
    in_logits = mean_out + membership_shift + spread * rng.standard_normal((n_shadows, n_canaries))
    target_logits = (
        mean_out + membership_shift * is_member + spread * rng.standard_normal(n_canaries)
    )
    as_conf = special.expit
    return as_conf(target_logits), as_conf(in_logits), as_conf(out_logits), is_member


def test_lira_separates_clear_members_better_than_raw_confidence():
    target, shadow_in, shadow_out, is_member = synthetic_lira_game(membership_shift=2.5, seed=0)

    online_auc = roc_auc(lira_online_score(target, shadow_in, shadow_out), is_member)
    offline_auc = roc_auc(lira_offline_score(target, shadow_out), is_member)
    raw_auc = roc_auc(target, is_member)

    assert online_auc > 0.97
    assert offline_auc > 0.97
    # Per-canary calibration is LiRA's point: a global threshold on confidence does far worse.
    assert raw_auc < 0.8
    assert tpr_at_fpr(lira_online_score(target, shadow_in, shadow_out), is_member, 0.01) > 0.5


def test_lira_is_at_chance_when_membership_changes_nothing():
    # Null: AUC's standard error is sqrt((n+1) / (12 n_pos n_neg)) ≈ 0.013 at n = 2000.
    target, shadow_in, shadow_out, is_member = synthetic_lira_game(membership_shift=0.0, seed=1)

    online_auc = roc_auc(lira_online_score(target, shadow_in, shadow_out), is_member)
    offline_auc = roc_auc(lira_offline_score(target, shadow_out), is_member)

    assert online_auc == pytest.approx(0.5, abs=0.05)
    assert offline_auc == pytest.approx(0.5, abs=0.05)


def test_lira_rejects_bad_shapes_and_too_few_shadows():
    target = np.array([0.5, 0.6])
    with pytest.raises(ValueError, match=r"must be \(n_shadows, 2\), got \(3, 3\)"):
        lira_offline_score(target, np.full((3, 3), 0.5))
    with pytest.raises(ValueError, match=r"canaries \[1\] have fewer"):
        lira_offline_score(target, np.array([[0.5, 0.5], [0.4, np.nan]]))
    with pytest.raises(ValueError, match="target_conf must be"):
        lira_online_score(np.array([np.nan, 0.5]), np.full((3, 2), 0.5), np.full((3, 2), 0.5))


# --- label-distribution inference ------------------------------------------------------------


def test_estimate_class_histogram_is_the_normalised_mean():
    probs = np.array([[0.5, 0.5, 0.0], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(estimate_class_histogram(probs), [0.3, 0.4, 0.3])


def test_estimate_class_histogram_clips_negative_noisy_means():
    noisy = np.array([[0.9, 0.4, -0.3], [0.7, 0.2, -0.1]])
    np.testing.assert_allclose(estimate_class_histogram(noisy), [0.8 / 1.1, 0.3 / 1.1, 0.0])


def test_calibrated_histogram_recovers_a_label_shifted_prior():
    # Prepare: public posteriors under a uniform prior (logits g), and a client whose teacher
    # saw the classes with prior π; both report soft labels at temperature T.
    rng = np.random.default_rng(2)
    n_public, n_classes, temperature = 400, 5, 3.0
    client_prior = np.array([0.55, 0.25, 0.1, 0.07, 0.03])
    public_logits = 2.0 * rng.standard_normal((n_public, n_classes))  # (Q, K)
    reference = special.softmax(public_logits / temperature, axis=1)
    client = special.softmax((public_logits + np.log(client_prior * n_classes)) / temperature, 1)

    # Execute
    naive = estimate_class_histogram(client)
    calibrated = calibrated_class_histogram(client, reference, temperature=temperature)

    # Assert: exact under label shift, while the naive mean is pulled toward uniform.
    np.testing.assert_allclose(calibrated, client_prior, atol=1e-9)
    assert l1_error(naive, client_prior) > 0.3


def test_calibrated_histogram_rejects_mismatched_inputs():
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="must have the same shape"):
        calibrated_class_histogram(probs, np.full((4, 2), 0.5))
    with pytest.raises(ValueError, match=r"reference_prior must have shape \(3,\)"):
        calibrated_class_histogram(probs, probs, reference_prior=np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"temperature must be > 0, got 0\.0"):
        calibrated_class_histogram(probs, probs, temperature=0.0)


def test_l1_error_and_kl_divergence_hand_values():
    assert l1_error([1.0, 0.0], [0.0, 1.0]) == pytest.approx(2.0)
    # 0.5·ln(0.5/0.25) + 0.5·ln(0.5/0.75)
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    assert kl_divergence([0.5, 0.5], [0.25, 0.75], eps=0.0) == pytest.approx(expected)
    assert kl_divergence([0.0, 1.0], [0.5, 0.5]) == pytest.approx(math.log(2.0))


def test_kl_divergence_smoothing_keeps_missed_classes_finite():
    assert math.isfinite(kl_divergence([0.5, 0.5], [1.0, 0.0]))
    assert kl_divergence([0.5, 0.5], [1.0, 0.0], eps=0.0) == math.inf


def test_distribution_distances_reject_non_distributions():
    with pytest.raises(ValueError, match=r"q must sum to 1, got 0\.9"):
        l1_error([0.5, 0.5], [0.5, 0.4])
    with pytest.raises(ValueError, match="must have the same shape"):
        kl_divergence([0.5, 0.5], [0.2, 0.3, 0.5])


# --- plots -----------------------------------------------------------------------------------


def test_plot_roc_loglog_writes_a_png(tmp_path):
    target, shadow_in, shadow_out, is_member = synthetic_lira_game(2.5, seed=0, n_canaries=300)
    curves = {
        "LiRA online": roc_curve(lira_online_score(target, shadow_in, shadow_out), is_member),
        "confidence": roc_curve(target, is_member),
    }

    written = plot_roc_loglog(curves, tmp_path / "plots" / "roc.png", title="synthetic")

    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_roc_loglog_rejects_empty_and_ragged_curves(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        plot_roc_loglog({}, tmp_path / "roc.png")
    with pytest.raises(ValueError, match="curve 'bad'"):
        plot_roc_loglog({"bad": (np.zeros(3), np.zeros(2))}, tmp_path / "roc.png")
