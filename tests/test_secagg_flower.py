"""End-to-end secure aggregation over the real Flower runtime.

Two families, one simulation (or one pair) each:

- smoke: `feddistill`'s own ServerApp and ClientApp on the smoke config, with secagg on and off
  (same seed), through the private simulation SuperLink; the students must agree.
- dropouts: in-process `run_simulation` with 5 bench clients whose fixed soft labels are known;
  round by round a plain round, a clean secure round that sets up a key epoch of 5 rounds, one
  client raising in each stage of the epoch's later rounds (masked input in the `train` reply,
  consistency, unmask) and in each set-up stage of the next epochs, and too many raising for
  the round to finish.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.data import load_splits
from common.protocol import ROUND_RECORD
from common.secagg import STAGES
from common.secure_codec import decode_aggregate, encode_contribution, value_bound
from server.aggregation import PlainAggregator
from server.secure_aggregator import SecureAggregator
from simulations.bench import secagg_flower as bench
from simulations.cli import resolve_config
from simulations.launcher import simulate

SMOKE_TIMEOUT = 900.0  # seconds per smoke simulation; ~20-40 s each on 2 idle cores
# The smoke config at its earlier, smaller size (3000 samples, 3 local and 5 distill epochs):
# there the ensembles' difference (< 2^-25 per entry) stays below 1e-7 in the student, while at
# 40 distill epochs chaotic training amplifies it to ~1e-3 and the test would compare noise.
# method=certainty: the pair also carries per-row weights through the real apps (the default
# method's scalar layout runs in test_simulation.py and test_fault_tolerance.py).
SMOKE_OVERRIDES = [
    "num_samples=3000",
    "public_fraction=0.2",
    "local_epochs=3",
    "distill_epochs=5",
    "method=certainty",
]
STUDENT_TOLERANCE = 1e-6  # largest difference seen ~6e-8
STUDENT_COLUMNS = ("student_nll", "student_ece", "distill_loss", "ensemble_entropy")
EXACT_COLUMNS = ("status", "clients", "rows_kept", "student_accuracy", "ensemble_public_accuracy")

N_CLIENTS = 5  # k = 4 (all-to-all), t = 3, min_cohort = 3
PLAIN_ROUND, SECURE_ROUND = 1, 2
# Rounds 2-6 are one key epoch (R = 5): set-up in round 2, then steady rounds 3-6 with a drop in
# each steady stage (round 6 clean: the round-3 dropout is back without re-keying). Round 7
# sets up a new epoch and loses a node at advertise; that node is missing from the epoch, so
# round 8 sets up again and loses one at share-keys; round 9 sets up again, with everyone.
# Rounds 10 and 11 lose too many (round 11 sets up after round 10's abort). Round 12 sets up
# after round 11's abort; in round 13 a node restarts (its keys are gone) and refuses, so
# round 14 sets up a new epoch and has everyone again.
SINGLE_DROP_ROUND = {
    "masked-input": 3,
    "consistency": 4,
    "unmask": 5,
    "advertise": 7,
    "share-keys": 8,
}
CLEAN_STEADY_ROUND, CLEAN_SETUP_ROUND = 6, 9
KEY_SETUP_ROUNDS = (2, 7, 8, 9, 12, 14)  # and round 11, which fails
TOO_MANY_ROUND = {"masked-input": 10, "unmask": 11}
RESTART_ROUND, RESTARTED, REKEYED_ROUND = 13, 3, 14
TOO_MANY = (0, 2, 4)  # three of five clients
TOO_MANY_REASON = {  # 2 masked inputs < min_cohort = 3; 2 holders release shares < t = 3
    "masked-input": "fewer than min_cohort=3",
    "unmask": "threshold is 3",
}
DROPS: dict[int, dict[int, str]] = {  # round -> partition -> stage it raises in
    **{round_: {round_ % N_CLIENTS: stage} for stage, round_ in SINGLE_DROP_ROUND.items()},
    **{round_: dict.fromkeys(TOO_MANY, stage) for stage, round_ in TOO_MANY_ROUND.items()},
    RESTART_ROUND: {RESTARTED: "restart"},  # loses its node state before the train message
}
ROUNDS = REKEYED_ROUND


# --- smoke: the real apps, secagg on and off ----------------------------------------------------


def _smoke_config(root: Path, secagg: bool) -> RunConfig:
    """The smoke config with secagg on or off, its data cached under ``root``."""
    overrides = [*SMOKE_OVERRIDES, f"secagg={secagg}".lower(), f"data_dir={root / 'data'}"]
    return resolve_config("smoke", overrides, str(root / f"secagg-{str(secagg).lower()}"))


def _smoke_run(config: RunConfig) -> pd.DataFrame:
    """Run one config through the launcher (log next to its run directory); its metrics."""
    with open(f"{config.out_dir}.log", "wb") as log_file:
        out_dir = simulate(config, stream_to=log_file.fileno(), timeout=SMOKE_TIMEOUT)
    return pd.read_csv(out_dir / "metrics.csv")


@pytest.fixture(scope="module")
def smoke_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, pd.DataFrame]:
    """Metrics of the smoke run with secagg on and off.

    One after the other: two Ray clusters starting at once on two busy cores can miss Ray's
    start-up deadline.
    """
    root = tmp_path_factory.mktemp("smoke")
    configs = {secagg: _smoke_config(root, secagg) for secagg in (True, False)}
    load_splits(configs[True])  # generate the data once, before either run's clients start
    return {secagg: _smoke_run(config) for secagg, config in configs.items()}


class TestSmoke:
    """The smoke pair, secagg on and off (one xdist scope: see conftest.py)."""

    def test_smoke_student_is_the_same_with_and_without_secagg(
        self,
        smoke_metrics: dict[bool, pd.DataFrame],
    ) -> None:
        secure, plain = smoke_metrics[True], smoke_metrics[False]

        assert list(secure["status"]) == ["ok"] * len(secure)
        assert len(secure) == len(plain)
        for column in EXACT_COLUMNS:
            assert list(secure[column]) == list(plain[column]), column
        differences = {
            column: float(np.max(np.abs(secure[column] - plain[column])))
            for column in STUDENT_COLUMNS
        }
        print(f"smoke secagg on vs off, max abs difference per column: {differences}")
        assert max(differences.values()) <= STUDENT_TOLERANCE, differences


# --- dropouts: bench clients with known payloads, failures injected per stage -------------------


def _partition(context: Context) -> int:
    return int(context.node_config["partition-id"])


def dropping_client_app(drops: Mapping[int, Mapping[int, str]], config: RunConfig) -> ClientApp:
    """The bench ClientApp, except that partition p raises in stage s of round r per ``drops``
    (stage "restart": it loses its node state before round r's train message).

        The ``train`` message carries advertise (set-up) or masked-input (a later round of a key
        epoch); the round is the message's group id.
    """

    def check(msg: Message, context: Context, stage: str) -> None:
        round_ = int(msg.metadata.group_id)
        partition = _partition(context)
        if drops.get(round_, {}).get(partition) == stage:
            raise RuntimeError(f"injected dropout: partition {partition}, {stage}, round {round_}")

    def train(msg: Message, context: Context) -> Message:
        if drops.get(int(msg.metadata.group_id), {}).get(_partition(context)) == "restart":
            context.state.clear()  # a restarted node: its key epoch is gone, its ledger is not
        check(msg, context, str(msg.content[ROUND_RECORD].get("secagg_stage", "")))
        return bench.train_reply(msg, context, config)

    def later_stage(stage: str) -> Callable[[Message, Context], Message]:
        def handler(msg: Message, context: Context) -> Message:
            check(msg, context, stage)
            return bench.stage_reply(msg, context, stage, config)

        return handler

    app = ClientApp()
    app.query("describe")(bench.describe_reply)
    app.train()(train)
    for stage in bench.LATER_STAGES:
        app.train(bench.stage_action(stage))(later_stage(stage))
    return app


def schedule_server_app(outcomes: dict[int, bench.RoundOutcome]) -> ServerApp:
    """A ServerApp running round 1 in the clear and every later round with SecAgg+."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rounds = bench.AggregatorRounds(grid, N_CLIENTS)
        plain, secure = PlainAggregator(), SecureAggregator(bench.CLIENT_CONFIG)
        for round_ in range(1, ROUNDS + 1):
            aggregator = plain if round_ == PLAIN_ROUND else secure
            outcomes[round_] = rounds.collect(aggregator, round_)

    return app


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[int, bench.RoundOutcome]:
    """Every round of one in-process simulation of 5 bench clients, by round number."""
    results: dict[int, bench.RoundOutcome] = {}
    config = bench.bench_config(tmp_path_factory.mktemp("identities"), N_CLIENTS)
    client_app = dropping_client_app(DROPS, config)
    bench.run_apps(schedule_server_app(results), client_app, N_CLIENTS)
    return results


def exact_secure_ensemble(partitions: list[int]) -> np.ndarray:
    """The mean the secure sum must decode to: Σ of the partitions' fixed-point encodings.

    Returns
    -------
    np.ndarray
        (ROWS, CLASSES) float64.
    """
    params = bench.secagg_params(N_CLIENTS)
    bound = value_bound(bench.CLIENT_CONFIG)
    encoded = [encode_contribution(bench.fixed_contribution(p), params, bound) for p in partitions]
    total = np.sum(encoded, axis=0, dtype=np.uint64) & np.uint64(2**params.modulus_bits - 1)
    weighted_sum, total_weight = decode_aggregate(total, params, bench.CLASSES)  # (Q, K), Σw
    return weighted_sum / total_weight


def test_secure_ensemble_equals_plain_exactly(
    outcomes: dict[int, bench.RoundOutcome],
) -> None:
    # Reports are quantised at label_bits before either path, and the fixed point has exactly
    # label_bits fractional bits, so the masked sum decodes to the plain float sum bit for bit.
    plain, secure = outcomes[PLAIN_ROUND], outcomes[SECURE_ROUND]
    everyone = list(range(N_CLIENTS))

    assert plain.contributors == secure.contributors == tuple(everyone)
    np.testing.assert_array_equal(plain.ensemble, bench.expected_mean(everyone))
    np.testing.assert_array_equal(secure.ensemble, exact_secure_ensemble(everyone))
    np.testing.assert_array_equal(secure.ensemble, plain.ensemble)


@pytest.mark.parametrize("stage", list(SINGLE_DROP_ROUND))
def test_one_dropout_keeps_the_exact_survivor_sum(
    outcomes: dict[int, bench.RoundOutcome], stage: str
) -> None:
    round_ = SINGLE_DROP_ROUND[stage]
    (dropped,) = DROPS[round_]
    # A client that fails after delivering its masked input is in the sum.
    in_sum = stage in ("consistency", "unmask")
    survivors = [p for p in range(N_CLIENTS) if p != dropped or in_sum]

    outcome = outcomes[round_]

    assert outcome.failure == ""
    assert outcome.contributors == tuple(survivors)
    np.testing.assert_array_equal(outcome.ensemble, exact_secure_ensemble(survivors))


def test_keys_are_set_up_once_per_epoch_and_dropouts_return_without_re_keying(
    outcomes: dict[int, bench.RoundOutcome],
) -> None:
    everyone = tuple(range(N_CLIENTS))
    secure_rounds = [r for r in outcomes if r != PLAIN_ROUND and r not in TOO_MANY_ROUND.values()]

    assert [r for r in secure_rounds if outcomes[r].key_setup] == list(KEY_SETUP_ROUNDS)
    for round_ in secure_rounds:  # set-up rounds run five stages, the others three
        stages = list(outcomes[round_].stage_seconds)
        expected = STAGES[:-1] if outcomes[round_].key_setup else STAGES[2:-1]
        assert stages == list(expected), round_
    for round_ in (CLEAN_STEADY_ROUND, CLEAN_SETUP_ROUND):
        assert outcomes[round_].contributors == everyone
        np.testing.assert_array_equal(outcomes[round_].ensemble, exact_secure_ensemble(everyone))


@pytest.mark.parametrize("stage", list(TOO_MANY_ROUND))
def test_too_many_dropouts_fail_the_round(
    outcomes: dict[int, bench.RoundOutcome], stage: str
) -> None:
    outcome = outcomes[TOO_MANY_ROUND[stage]]

    assert outcome.ensemble is None
    assert outcome.contributors == ()
    assert "secure aggregation aborted" in outcome.failure
    assert TOO_MANY_REASON[stage] in outcome.failure


def test_a_node_that_lost_its_keys_is_dropped_and_the_next_round_re_keys(
    outcomes: dict[int, bench.RoundOutcome],
) -> None:
    others = [p for p in range(N_CLIENTS) if p != RESTARTED]
    everyone = tuple(range(N_CLIENTS))

    assert not outcomes[RESTART_ROUND].key_setup
    assert outcomes[RESTART_ROUND].contributors == tuple(others)
    np.testing.assert_array_equal(outcomes[RESTART_ROUND].ensemble, exact_secure_ensemble(others))
    assert outcomes[REKEYED_ROUND].key_setup
    assert outcomes[REKEYED_ROUND].contributors == everyone
    np.testing.assert_array_equal(outcomes[REKEYED_ROUND].ensemble, exact_secure_ensemble(everyone))
