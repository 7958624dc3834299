"""FD methods (common/methods): aggregation rules on hand-computed inputs, client selectors on
cases with a known answer, the per-row wire layout, and a smoke round per method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.config import RunConfig
from common.data import load_splits
from common.kd import era_sharpen
from common.methods import METHOD_NAMES, ClientView, get_method
from common.methods.base import normalised_entropy, weighted_rows
from common.methods.density import kulsif_ratio, logistic_certainty, median_width
from common.protocol import Contribution, split_weighted_vector, summed_length
from common.secagg.encoding import encode
from common.secure_codec import decode_aggregate
from simulations.bench.plain_loop import run_plain
from simulations.leak.scores import abstention_class_histogram
from tests.test_secagg_protocol import Deployment, plain_sum

CONFIG = RunConfig()

# Two clients, three rows, two classes: S and W as the server would decode them.
PROBS_A = np.array([[0.8, 0.2], [0.5, 0.5], [1.0, 0.0]])
PROBS_B = np.array([[0.4, 0.6], [0.1, 0.9], [0.0, 1.0]])


# --- the registry --------------------------------------------------------------------------


def test_registry_names_the_four_methods():
    assert METHOD_NAMES == ("fedmd", "dsfl", "selective", "certainty")
    assert [get_method(name).per_row_weights for name in METHOD_NAMES] == [
        False,
        False,
        True,
        True,
    ]


def test_unknown_method_is_refused_with_the_allowed_names():
    with pytest.raises(ValueError, match=r"unknown method 'fedavg'; allowed: \('fedmd'"):
        get_method("fedavg")


# --- server-side rules, exact values -------------------------------------------------------


def test_fedmd_is_the_plain_mean():
    ensemble = get_method("fedmd").combine(PROBS_A + PROBS_B, 2.0, CONFIG)

    np.testing.assert_allclose(ensemble.probs, [[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    assert ensemble.kept.all() and not ensemble.ambiguous.any()


def test_dsfl_sharpens_the_mean_with_era():
    ensemble = get_method("dsfl").combine(PROBS_A + PROBS_B, 2.0, CONFIG)

    # softmax([0.6, 0.4] / 0.1) = [e^2, 1] / (e^2 + 1)
    assert ensemble.probs[0, 0] == pytest.approx(np.exp(2) / (np.exp(2) + 1))
    np.testing.assert_allclose(ensemble.probs, era_sharpen(ensemble_mean_rows(), 0.1))
    assert get_method("dsfl").temperature(CONFIG) == 1.0
    assert get_method("fedmd").temperature(CONFIG) == CONFIG.temperature


def ensemble_mean_rows() -> np.ndarray:
    return (PROBS_A + PROBS_B) / 2


def test_weighted_rows_divides_each_row_by_its_own_total_and_marks_the_floor():
    # A abstains on row 1, B on row 2; nobody keeps row 0 entirely... row 0 kept by both.
    weights_a, weights_b = np.array([1.0, 0.0, 1.0]), np.array([1.0, 1.0, 0.0])
    weighted_sum = weights_a[:, None] * PROBS_A + weights_b[:, None] * PROBS_B
    probs, usable = weighted_rows(weighted_sum, weights_a + weights_b, floor=1.5)

    np.testing.assert_allclose(probs, [[0.6, 0.4], [0.1, 0.9], [1.0, 0.0]])
    np.testing.assert_array_equal(usable, [True, False, False])


def test_a_row_every_client_abstained_on_is_uniform_and_never_kept():
    probs, usable = weighted_rows(np.zeros((1, 4)), np.zeros(1), floor=0.0)

    np.testing.assert_allclose(probs, [[0.25] * 4])
    assert not usable[0]


def test_selective_drops_low_weight_rows_and_ambiguous_rows():
    config = CONFIG.replace(min_row_weight=1.0, ambiguity_threshold=0.5, temperature=1.0)
    weights_a, weights_b = np.array([1.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.0])
    confident, ambiguous = [0.95, 0.05], [0.5, 0.5]
    rows = np.array([confident, ambiguous, confident])
    weighted_sum = (weights_a + weights_b)[:, None] * rows

    ensemble = get_method("selective").combine(weighted_sum, weights_a + weights_b, config)

    np.testing.assert_allclose(ensemble.probs[:2], rows[:2])
    np.testing.assert_array_equal(ensemble.kept, [True, False, False])
    np.testing.assert_array_equal(ensemble.ambiguous, [False, True, False])
    np.testing.assert_array_equal(ensemble.low_weight, [False, False, True])


def test_selective_reads_ambiguity_at_temperature_one():
    # At T = 3 the row [0.6, 0.4] is ambiguous; raised to the power 3 it is [0.77, 0.23].
    row = np.array([[0.6, 0.4]])
    sharp = row**3 / (row**3).sum()
    threshold = float(normalised_entropy(sharp)[0]) + 1e-9
    config = CONFIG.replace(temperature=3.0, ambiguity_threshold=min(threshold, 1.0))

    ensemble = get_method("selective").combine(row, np.ones(1), config)

    assert ensemble.kept[0] and normalised_entropy(row)[0] > threshold


def test_certainty_is_the_certainty_weighted_mean():
    certainty_a, certainty_b = np.array([0.9, 0.5, 0.1]), np.array([0.1, 0.5, 0.2])
    weighted_sum = certainty_a[:, None] * PROBS_A + certainty_b[:, None] * PROBS_B
    totals = certainty_a + certainty_b  # [1.0, 1.0, 0.3]

    ensemble = get_method("certainty").combine(weighted_sum, totals, CONFIG)

    np.testing.assert_allclose(ensemble.probs[0], [0.76, 0.24])
    np.testing.assert_allclose(ensemble.probs[1], [0.3, 0.7])
    np.testing.assert_array_equal(ensemble.kept, [True, True, False])  # 0.3 < 0.5 floor


# --- client-side selectors on cases with a known answer -------------------------------------


def _clusters(rng: np.random.Generator, centre: float, n: int) -> np.ndarray:
    return (rng.normal(size=(n, 4)) + centre).astype(np.float32)


def test_kulsif_ratio_is_high_where_only_the_numerator_has_mass():
    rng = np.random.default_rng(0)
    mine, other = _clusters(rng, 0.0, 200), _clusters(rng, 6.0, 200)
    reference = np.concatenate([mine[:100], other[:100]]).astype(np.float64)
    numerator = mine[100:].astype(np.float64)
    width = median_width(numerator, reference)

    ratios = kulsif_ratio(numerator, reference, np.concatenate([mine[:50], other[:50]]), width)

    assert ratios[:50].min() > ratios[50:].max()


def test_logistic_certainty_separates_private_from_other_public_inputs():
    rng = np.random.default_rng(1)
    mine, other = _clusters(rng, 0.0, 300), _clusters(rng, 6.0, 300)
    public = np.concatenate([mine[:150], other[:150]])

    scores = logistic_certainty(mine[150:], public, np.concatenate([mine[:20], other[:20]]))

    assert scores[:20].min() > 0.5 > scores[20:].max()


def _view(seed: int) -> ClientView:
    """A client that holds only the cluster at 0; queries: 20 rows there, 20 at 6."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    mine, other = _clusters(rng, 0.0, 400), _clusters(rng, 6.0, 400)
    public = np.concatenate([mine[:200], other[:200]])
    query = np.concatenate([mine[:20], other[:20]])
    return ClientView(
        teacher=teacher,
        private_x=mine[200:],
        public_x=public,
        query_x=query,
        probs=np.full((40, 3), 1 / 3, dtype=np.float32),
        generator=torch.Generator().manual_seed(seed),
        device=torch.device("cpu"),
    )


def test_selective_client_abstains_outside_its_distribution():
    weights = get_method("selective").row_weights(_view(3), CONFIG)

    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert weights[:20].mean() >= 0.85  # ~1 − selective_quantile of in-distribution rows
    assert weights[20:].sum() == 0


def test_certainty_client_weights_its_own_distribution_higher():
    weights = get_method("certainty").row_weights(_view(4), CONFIG)

    assert ((weights > 0) & (weights < 1)).all()
    assert weights[:20].min() > weights[20:].max()


# --- the per-row wire layout ---------------------------------------------------------------


def test_per_row_vector_round_trips_and_keeps_the_scalar_layout_otherwise():
    probs = PROBS_A.astype(np.float32)
    row_weights = np.array([1.0, 0.0, 0.5])
    per_row = Contribution(probs, 2.0, row_weights)

    vector = per_row.weighted_vector()
    weighted_sum, totals = split_weighted_vector(vector, 2, per_row_weights=True)

    assert len(vector) == summed_length(3, 2, True) == 9
    np.testing.assert_allclose(weighted_sum, 2.0 * row_weights[:, None] * PROBS_A, rtol=1e-7)
    np.testing.assert_allclose(totals, [2.0, 0.0, 1.0])
    assert len(Contribution(probs, 2.0).weighted_vector()) == summed_length(3, 2, False) == 7


def test_per_row_secure_sum_equals_the_plain_sum_with_a_dropout():
    rng = np.random.default_rng(5)
    n_query, classes = 6, 3
    deployment = Deployment(8, length=summed_length(n_query, classes, True))
    params = deployment.params
    contributions = {
        node: Contribution(
            rng.dirichlet(np.ones(classes), size=n_query).astype(np.float32),
            1.0,
            rng.integers(0, 2, size=n_query).astype(np.float64),  # abstain or share per row
        )
        for node in deployment.cohort
    }
    deployment.vectors = {
        node: encode(c.weighted_vector(), params.frac_bits, params.modulus_bits, 1.0)
        for node, c in contributions.items()
    }
    dropped = deployment.cohort[1]

    result = deployment.finish({"masked-input": [dropped]})

    survivors = [node for node in deployment.cohort if node != dropped]
    assert result.survivors == survivors
    expected = plain_sum(deployment.vectors, survivors, params.modulus_bits)
    np.testing.assert_array_equal(result.total, expected)  # exact in the integer domain
    weighted_sum, totals = decode_aggregate(result.total, params, classes, per_row_weights=True)
    float_sum = sum(contributions[node].weighted_vector() for node in survivors)
    expected_sum, expected_totals = split_weighted_vector(float_sum, classes, True)
    tolerance = len(survivors) * 2.0 ** -(params.frac_bits + 1)
    np.testing.assert_allclose(weighted_sum, expected_sum, atol=tolerance)
    np.testing.assert_array_equal(totals, expected_totals)  # 0/1 weights encode exactly


# --- one smoke round per method, through the secure sum ------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> RunConfig:
    return RunConfig.from_mapping(
        {
            "data_dir": str(tmp_path_factory.mktemp("methods")),
            "num_samples": 1500,
            "num_clients": 4,
            "rounds": 2,
            "local_epochs": 2,
            "distill_epochs": 2,
            "teacher_models": "cnn1d-s",
            "student_model": "cnn1d-s",
        }
    )


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_runs_rounds_through_the_secure_sum(tiny, method):
    # Teachers this small are ambiguous everywhere: the ambiguity filter (tested above on exact
    # values) would drop every row, so it is off here.
    config = tiny.replace(method=method, ambiguity_threshold=1.0)
    splits = load_splits(config)

    rows = run_plain(config, splits)

    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert all(0 < row["rows_kept"] <= len(splits.public_x) for row in rows)
    assert all(np.isfinite(row["student_accuracy"]) for row in rows)


def test_fedmd_public_warm_up_runs_only_with_public_labels(tiny):
    splits = load_splits(tiny)
    without = run_plain(tiny.replace(rounds=1), splits)
    with_labels = run_plain(tiny.replace(rounds=1, allow_public_labels=True), splits)
    no_epochs = run_plain(
        tiny.replace(rounds=1, allow_public_labels=True, public_warmup_epochs=0), splits
    )

    assert with_labels[0]["ensemble_public_accuracy"] != without[0]["ensemble_public_accuracy"]
    assert no_epochs[0]["ensemble_public_accuracy"] == without[0]["ensemble_public_accuracy"]


# --- what per-row weights reveal -------------------------------------------------------------


def test_abstentions_reveal_the_class_support():
    labels = np.array([0, 0, 1, 1, 2, 2])  # the attacker's labels of six public rows
    keeps_classes_0_and_2 = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])

    estimate = abstention_class_histogram(keeps_classes_0_and_2, labels, num_classes=4)

    np.testing.assert_allclose(estimate, [2 / 3, 0.0, 1 / 3, 0.0])
    uniform = abstention_class_histogram(np.zeros(6), labels, num_classes=4)
    np.testing.assert_allclose(uniform, [0.25] * 4)
