"""Tests for the privacy-leakage experiments: the in-process secure sum with DP noise, settings,
the DP bound check, and each experiment's smallest setting end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from common.config import RunConfig
from common.dp import soft_label_sensitivity
from common.protocol import Contribution
from simulations.leak.cli import main
from simulations.leak.dp_tradeoff import check_dp_bound
from simulations.leak.experiment import resolve
from simulations.leak.membership import EXPERIMENT as MEMBERSHIP
from simulations.leak.secure import secure_sum

# Tiny, fast runs shared by the end-to-end tests (the smoke config's data, cheap models).
TINY = [
    "num_samples=3000",
    "local_epochs=1",
    "distill_epochs=2",
    "teacher_models=mlp-s",
    "student_model=mlp-s",
]


def random_reports(n_clients: int, rows: int, classes: int, seed: int = 0) -> list[Contribution]:
    """Soft-label reports (rows, classes) on the simplex, weight 1 each."""
    rng = np.random.default_rng(seed)
    return [
        Contribution(rng.dirichlet(np.ones(classes), size=rows).astype(np.float32), 1.0)
        for _ in range(n_clients)
    ]


# --- secure sum ------------------------------------------------------------------------------


def test_secure_sum_without_noise_equals_the_plain_sum_within_quantisation():
    reports = random_reports(5, rows=40, classes=10)
    config = RunConfig()

    result = secure_sum(reports, config)

    # The quantised reports lie on the fixed-point grid: the masked sum adds no error, and each
    # client's stochastic rounding moves an entry by less than 2^-label_bits.
    assert result.total_weight == 5.0
    assert result.noise_std == 0.0
    assert result.quantisation_error == 0.0
    np.testing.assert_allclose(
        result.weighted_sum, result.clean_sum, rtol=0, atol=5 * 2.0**-config.label_bits
    )


@pytest.mark.parametrize(("n_clients", "dp_min_clients"), [(4, 0), (6, 3)])
def test_dp_noise_in_the_secure_aggregate_has_the_configured_variance(n_clients, dp_min_clients):
    # Prepare: each client adds its share through client.privacy.add_dp_noise_share, then the
    # shares are summed by SecAgg+; n_min shares carry σ² = (z·sqrt(2Q))², m shares m/n_min·σ².
    rows, classes, z = 1000, 10, 0.7
    reports = random_reports(n_clients, rows, classes, seed=1)
    config = RunConfig(dp_noise_multiplier=z, dp_min_clients=dp_min_clients)
    n_min = dp_min_clients or n_clients
    expected_variance = (z * soft_label_sensitivity(rows)) ** 2 * n_clients / n_min

    # Execute
    result = secure_sum(reports, config)

    # Assert: the noise has mean 0, so Σ noise² / σ² ~ χ²(M) over M = Q·K entries; accept inside
    # its central 1 − 1e-6 interval (±5 standard deviations of sqrt(2 / M) ≈ 0.045).
    noise = result.weighted_sum - result.clean_sum
    ratio = np.mean(noise**2) / expected_variance
    low = stats.chi2.ppf(0.5e-6, noise.size) / noise.size
    high = stats.chi2.isf(0.5e-6, noise.size) / noise.size
    assert low < ratio < high
    assert abs(np.mean(noise)) < 5 * math.sqrt(expected_variance / noise.size)


def test_secure_sum_refuses_a_cohort_below_the_minimum():
    with pytest.raises(ValueError, match="below min_cohort=3"):
        secure_sum(random_reports(2, rows=3, classes=4), RunConfig())


# --- settings and the DP bound check ---------------------------------------------------------


def test_resolve_splits_settings_from_run_config_keys():
    settings, config = resolve(
        MEMBERSHIP, {"cohort_sizes": "2, 5", "canaries": "40", "num_samples": "3000"}
    )
    assert settings.cohort_sizes == (2, 5) and settings.canaries == 40
    assert config.num_samples == 3000


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ({"no_such_key": "1"}, r"unknown key\(s\) \['no_such_key'\] for membership"),
        ({"canaries": "many"}, "canaries must be int, got 'many'"),
        ({"cohort_sizes": ","}, "cohort_sizes needs at least one comma-separated value"),
        ({"num_clients": "x"}, "num_clients must be an integer, got 'x'"),
    ],
)
def test_resolve_names_the_bad_key_or_value(pairs, message):
    with pytest.raises(ValueError, match=message):
        resolve(MEMBERSHIP, pairs)


def test_dp_bound_check_flags_a_perfect_attack_at_small_epsilon_only():
    # A perfect attack on 500 + 500 examples proves ε >= ln(0.9926 / 0.0074) ≈ 4.9.
    is_member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    scores = is_member.astype(float)

    violated = check_dp_bound(scores, is_member, eps=1.0, delta=1e-5)
    allowed = check_dp_bound(scores, is_member, eps=6.0, delta=1e-5)
    chance = check_dp_bound(np.zeros(1000), is_member, eps=0.1, delta=1e-5)

    assert violated["violation"] and violated["eps_lower"] == pytest.approx(4.9, abs=0.1)
    assert not allowed["violation"]
    assert not chance["violation"] and chance["eps_lower"] == 0.0


# --- each experiment end to end --------------------------------------------------------------


def run_experiment(tmp_path, name: str, *sets: str) -> tuple[pd.DataFrame, dict, str]:
    """Run `feddistill leak NAME` through the CLI; return results.csv, summary.json, report."""
    out = tmp_path / name
    args = [name, "--out", str(out)]
    for pair in [*TINY, *sets]:
        args += ["--set", pair]
    assert main(args) == 0
    for file in ("results.csv", "summary.json", "report.md"):
        assert (out / file).stat().st_size > 0
    assert list(out.glob("*.png"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_checks"] == []
    return pd.read_csv(out / "results.csv"), summary, (out / "report.md").read_text()


def test_membership_smallest_setting(tmp_path):
    results, summary, report = run_experiment(
        tmp_path,
        "membership",
        "seeds=0",
        "cohort_sizes=2,3",
        "canaries=40",
        "shadows=4",
        "population_shadows=1",
        "reference_rows=100",
    )
    assert set(results["n"]) == {1, 2, 3}
    assert set(results["score"]) == {"confidence", "lira", "rmia", "rmia-offline"}
    assert results["auc"].between(0, 1).all()
    assert (results["eps_lower"] >= 0).all()
    per_seed = results[results["seed"].astype(str) != "pooled"]
    assert per_seed["offline_a"].between(0, 1).all()
    assert summary["max_quantisation_error_over_bound"] <= 1.0
    assert "secagg sum, n=3" in report


def test_label_distribution_smallest_setting(tmp_path):
    results, _, _ = run_experiment(
        tmp_path, "label-distribution", "seeds=0", "alphas=0.5", "num_clients=3"
    )
    assert set(results["observation"]) >= {"own soft labels (no secagg)", "secure aggregate"}
    assert results["l1"].between(0, 2).all()


def test_differencing_smallest_setting_isolates_the_victim_exactly(tmp_path):
    results, _, _ = run_experiment(
        tmp_path,
        "differencing",
        "seeds=0",
        "num_clients=5",
        "cohort_sizes=4",
        "fresh_rounds=2,6",
        "noise_multipliers=1.0",
        "public_query_size=20",
        "label_bits=24",  # the fixed point's rounding (2^-25 per entry) stays far below 1e-5
    )
    exact = results[(results["setting"] == "fixed teachers") & (results["defence"] == "none")]
    assert (exact["error"] < 1e-5).all()
    noised = results[results["defence"] == "DP z=1"]
    assert (noised["error"] > 1.0).all()


def test_dp_tradeoff_smallest_setting(tmp_path):
    results, summary, _ = run_experiment(
        tmp_path,
        "dp-tradeoff",
        "seeds=0",
        "noise_multipliers=0.5",
        "record_noise_multipliers=1.1",
        "record_clients=3",
        "record_rounds=1",
        "record_local_epochs=1",
        "record_num_samples=3000",
        "attack_num_samples=3000",
        "canaries=40",
        "shadows=4",
        "population_shadows=1",
        "num_clients=3",
        "rounds=1",
        "public_fraction=0.2",
        "test_fraction=0.2",
        "public_query_size=20",
    )
    assert not results["violation"].any()
    assert summary["epsilon_run"]["z=0.5"] == pytest.approx(9.997, abs=0.01)


def test_student_observer_smallest_setting(tmp_path):
    results, summary, _ = run_experiment(
        tmp_path,
        "student-observer",
        "seeds=0",
        "candidates=50",
        "shadows=3",
        "population_samples=50",
        "num_clients=3",
        "rounds=1",
    )
    assert set(results["score"]) == {"confidence", "lira", "rmia"}
    assert results["auc"].between(0, 1).all()
    assert 0 <= summary["student_accuracy"][0] <= 1


def test_public_outputs_smallest_setting(tmp_path):
    results, _, report = run_experiment(
        tmp_path,
        "public-outputs",
        "seeds=0",
        "candidates=40",
        "shadows=4",
        "population_samples=50",
        "proxy_epochs=2",
        "num_clients=3",
    )
    assert set(results["channel"]) == {"public outputs (proxy)", "direct query (not allowed)"}
    assert set(results["score"]) == {"confidence", "lira", "rmia"}
    assert results["auc"].between(0, 1).all()
    assert (results["members"] == 40).all() and (results["non_members"] == 40).all()
    assert "Shi et al. 2025 setting" in report


def test_label_distribution_attacks_the_per_row_totals_of_an_abstaining_method(tmp_path):
    results, _, _ = run_experiment(
        tmp_path,
        "label-distribution",
        "seeds=0",
        "alphas=0.5",
        "num_clients=3",
        "method=selective",
    )
    abstentions = results[results["estimator"] == "abstentions"]
    assert set(abstentions["observation"]) == {
        "own row weights (no secagg)",
        "secure per-row totals",
    }
    assert abstentions["l1"].between(0, 2).all()
