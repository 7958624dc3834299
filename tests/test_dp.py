"""Tests for common.dp: sensitivity, noise shares and the privacy accountant."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import numpy as np
import pytest
from scipy import optimize, stats

from common.dp import (
    add_noise_share,
    epsilon,
    noise_share_std,
    soft_label_sensitivity,
)


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε of a Gaussian mechanism with sensitivity / σ = mu (Balle & Wang 2018, Thm. 8).

    δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ), solved for ε; T-fold composition of the same
    mechanism is again Gaussian with μ·sqrt(T) (Dong, Roth & Su 2022).
    """

    def delta_of(eps: float) -> float:
        upper_tail = math.exp(eps + stats.norm.logcdf(-mu / 2 - eps / mu))
        return stats.norm.cdf(mu / 2 - eps / mu) - upper_tail - delta

    return optimize.brentq(delta_of, 0.0, 500.0, xtol=1e-12)


# --- sensitivity -----------------------------------------------------------------------------


def test_sensitivity_values_for_both_adjacencies():
    assert soft_label_sensitivity(50) == pytest.approx(math.sqrt(100))
    assert soft_label_sensitivity(50, "replace") == pytest.approx(10.0)
    assert soft_label_sensitivity(50, "add_remove") == pytest.approx(math.sqrt(50))


def test_sensitivity_is_attained_by_one_hot_rows_and_bounds_random_rows():
    # Prepare: Q rows, K classes; one-hot matrices on different classes are the extreme case.
    rng = np.random.default_rng(0)
    n_public, n_classes = 7, 4
    one_hot_a = np.eye(n_classes)[np.zeros(n_public, dtype=int)]
    one_hot_b = np.eye(n_classes)[np.ones(n_public, dtype=int)]
    random_a = rng.dirichlet(np.full(n_classes, 0.2), size=(2000, n_public))
    random_b = rng.dirichlet(np.full(n_classes, 0.2), size=(2000, n_public))

    # Execute
    replace = soft_label_sensitivity(n_public, "replace")
    add_remove = soft_label_sensitivity(n_public, "add_remove")
    random_distances = np.linalg.norm(random_a - random_b, axis=(1, 2))
    random_norms = np.linalg.norm(random_a, axis=(1, 2))

    # Assert
    assert np.linalg.norm(one_hot_a - one_hot_b) == pytest.approx(replace)
    assert np.linalg.norm(one_hot_a) == pytest.approx(add_remove)
    assert random_distances.max() <= replace
    assert random_norms.max() <= add_remove


def test_simplex_row_difference_is_at_most_sqrt_two_over_all_vertex_pairs():
    vertices = np.eye(5)
    distances = [np.linalg.norm(a - b) for a, b in itertools.combinations(vertices, 2)]
    assert max(distances) == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize(
    ("n_public", "adjacency", "message"),
    [
        (0, "replace", "n_public must be an integer >= 1, got 0"),
        (2.5, "replace", "n_public must be an integer >= 1, got 2.5"),
        (True, "replace", "n_public must be an integer >= 1, got True"),
        (10, "swap", "adjacency must be 'replace' or 'add_remove', got 'swap'"),
    ],
)
def test_sensitivity_rejects_bad_inputs(n_public, adjacency, message):
    with pytest.raises(ValueError, match=message):
        soft_label_sensitivity(n_public, adjacency)


# --- noise shares ----------------------------------------------------------------------------


def test_noise_share_std_divides_sigma_by_sqrt_n_min():
    assert noise_share_std(1.5, 4.0, 9) == pytest.approx(1.5 * 4.0 / 3.0)
    assert noise_share_std(1.0, 2.0, np.int64(4)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 1.0, 5), "noise_multiplier must be a finite number > 0, got 0.0"),
        ((-1.0, 1.0, 5), "noise_multiplier must be a finite number > 0, got -1.0"),
        ((float("nan"), 1.0, 5), "noise_multiplier must be a finite number > 0, got nan"),
        ((1.0, 0.0, 5), "sensitivity must be a finite number > 0, got 0.0"),
        ((1.0, float("inf"), 5), "sensitivity must be a finite number > 0, got inf"),
        ((1.0, 1.0, 0), "n_clients must be an integer >= 1, got 0"),
        ((1.0, 1.0, 3.0), "n_clients must be an integer >= 1, got 3.0"),
    ],
)
def test_noise_share_std_rejects_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        noise_share_std(*args)


def test_add_noise_share_keeps_shape_and_zero_std_is_identity():
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    noised = add_noise_share(values, 0.0, np.random.default_rng(0))
    assert noised.shape == (2, 3) and noised.dtype == np.float64
    np.testing.assert_array_equal(noised, values)


def test_add_noise_share_rejects_bad_std_and_generator():
    with pytest.raises(ValueError, match=r"std must be a finite number >= 0, got -0\.1"):
        add_noise_share(np.zeros(3), -0.1, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"generator must be a numpy\.random\.Generator"):
        add_noise_share(np.zeros(3), 1.0, np.random.RandomState(0))


def test_summed_noise_shares_have_the_target_variance():
    # Prepare: n_min clients each add a share to a (Q, K) zero report; the server sees the sum.
    noise_multiplier, n_public, n_classes, n_clients = 0.8, 10_000, 10, 8
    sigma = noise_multiplier * soft_label_sensitivity(n_public)
    share_std = noise_share_std(noise_multiplier, soft_label_sensitivity(n_public), n_clients)
    rngs = [np.random.default_rng(seed) for seed in range(n_clients)]

    # Execute
    summed = sum(add_noise_share(np.zeros((n_public, n_classes)), share_std, rng) for rng in rngs)

    # Assert: the mean is known (0), so Σ x² / σ² ~ χ²(M) with M = Q·K entries. Accept inside
    # its central 1 − 1e-6 interval (about ±5 standard deviations of sqrt(2 / M) ≈ 0.02).
    n_entries = summed.size
    variance_ratio = np.mean(summed**2) / sigma**2
    low = stats.chi2.ppf(0.5e-6, n_entries) / n_entries
    high = stats.chi2.isf(0.5e-6, n_entries) / n_entries
    assert low < variance_ratio < high
    assert high - low < 0.06


# --- accountant ------------------------------------------------------------------------------


def test_reference_analytic_gaussian_matches_dp_accounting_closed_form():
    # Guards the test's own reference: dp_accounting implements the same theorem independently.
    assert analytic_gaussian_epsilon(1.0, 1e-5) == pytest.approx(
        dp_accounting.get_epsilon_gaussian(1.0, 1e-5), rel=1e-8
    )


@pytest.mark.parametrize(
    ("noise_multiplier", "rounds", "delta"), [(1.0, 1, 1e-5), (2.0, 9, 1e-5), (4.0, 10, 1e-6)]
)
def test_pld_is_tight_and_rdp_is_an_upper_bound_for_gaussian_composition(
    noise_multiplier, rounds, delta
):
    # Prepare: R rounds of a Gaussian mechanism with z compose exactly to μ = sqrt(R) / z.
    exact = analytic_gaussian_epsilon(math.sqrt(rounds) / noise_multiplier, delta)

    # Execute
    pld_epsilon = epsilon(noise_multiplier, rounds, delta, accountant="pld")
    rdp_epsilon = epsilon(noise_multiplier, rounds, delta, accountant="rdp")

    # Assert: PLD rounds pessimistically to a 1e-4 grid of privacy losses, so it sits on or just
    # above the exact value; RDP's conversion to (ε, δ) is looser.
    assert exact - 1e-6 <= pld_epsilon <= exact + 1e-3
    assert rdp_epsilon > pld_epsilon


def test_subsampling_amplifies_and_rdp_stays_above_pld():
    full = epsilon(1.0, 50, 1e-5, sampling_rate=1.0, accountant="rdp")
    sampled_rdp = epsilon(1.0, 50, 1e-5, sampling_rate=0.05, accountant="rdp")
    sampled_pld = epsilon(1.0, 50, 1e-5, sampling_rate=0.05, accountant="pld")
    assert sampled_pld < sampled_rdp < full


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    assert epsilon(1.0, 10, 1e-5, accountant="rdp") > epsilon(1.0, 5, 1e-5, accountant="rdp")
    assert epsilon(2.0, 5, 1e-5, accountant="rdp") < epsilon(1.0, 5, 1e-5, accountant="rdp")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier must be a finite number > 0, got 0.0"),
        ({"rounds": 0}, "rounds must be an integer >= 1, got 0"),
        ({"rounds": 1.5}, "rounds must be an integer >= 1, got 1.5"),
        ({"delta": 0.0}, r"delta must be in \(0, 1\), got 0.0"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\), got 1.0"),
        ({"sampling_rate": 0.0}, r"sampling_rate must be in \(0, 1\], got 0.0"),
        ({"sampling_rate": 1.2}, r"sampling_rate must be in \(0, 1\], got 1.2"),
        ({"accountant": "moments"}, "accountant must be 'pld' or 'rdp', got 'moments'"),
    ],
)
def test_epsilon_rejects_bad_inputs(kwargs, message):
    arguments = {"noise_multiplier": 1.0, "rounds": 3, "delta": 1e-5} | kwargs
    with pytest.raises(ValueError, match=message):
        epsilon(**arguments)
