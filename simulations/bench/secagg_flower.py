"""Benchmark: plain vs our SecAgg+ vs Flower's SecAgg+, all in Flower's simulation engine.

For each cohort size n, one in-process simulation (`flwr.simulation.run_simulation`, Ray
backend, one CPU per client actor) runs every round of all three methods back to back on the
same nodes and the same payload: each client reports a fixed pseudo-random (2000, 10) float32
probability matrix and weight 1, and does no training.

- ``plain``: our `PlainAggregator` (soft labels in the clear, one `train` message).
- ``ours``: our `SecureAggregator`, one for the whole run, so keys are set up once per key
  epoch of `secagg_epoch_rounds` = R rounds (default 5); the clients answer with the real
  handlers of `client/secagg_handlers.py`, so the whole protocol runs. Its rounds are reported
  apart: ``ours`` = steady-state rounds (train + masked input, consistency, unmask: three round
  trips), ``ours_setup`` = rounds that start an epoch (advertise, share-keys, masked input,
  consistency, unmask: five), and ``ours_amortised`` = (setup + (R − 1)·steady) / R.
- ``flower``: Flower 1.42's `SecAggPlusWorkflow` + `secaggplus_mod` on the legacy ``fit`` path
  (`DefaultWorkflow`, `FedAvg`, a `NumPyClient` whose ``fit`` returns the matrix with
  ``num_examples=1``). The global "model" sent down is a (2000, 10) array, as ``fit`` requires.

Matching the protocol settings: our k counts a node's neighbours *excluding* itself and our t
counts the node itself among the k + 1 holders of its shares. Flower's ``num_shares`` is the
size of a node's neighbourhood *including* itself (it keeps one share) and its
``reconstruction_threshold`` is checked against alive neighbours including the node. So
Flower ``num_shares = k + 1`` and ``reconstruction_threshold = t``. We use our defaults for each n
(k = min(n-1, 2·ceil(1.5·log2 n)), t = floor((k+1)/2) + 1): n = 10 → k = 9, t = 6 (all-to-all,
Flower 10/6); n = 50 → k = 18, t = 10 (Flower 19/10); n = 100 → k = 20, t = 11 (Flower 21/11).
Flower's ``max_weight`` is the clients' weight (1): at its default, 1000, its quantisation of
w·x would be 1000 times coarser (errors ~2e-3 instead of ~1e-6).

A round is timed on the server from sending its first message to holding the aggregate: for
plain and ours the aggregator's ``collect``, for Flower the fit workflow (its four stages and
``aggregate_fit``). The first round of each method pays first-use costs (imports and caches in
the client actors) and is not counted; the table gives the median of the rest. With the default
10 timed rounds and R = 5, ours sets up keys in rounds 1 (warm-up), 6 and 11. Each result is
checked against the float64 mean of the clients' matrices (``max_abs_error``).

Usage::

    python -m simulations.bench.secagg_flower [--out DIR] [--sizes 10,50,100] [--rounds 10]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid, ServerApp

from client.app import plain_reply_content
from client.secagg_handlers import continue_secure_round, start_secure_round
from common.config import RunConfig
from common.protocol import NODE_RECORD, ROUND_RECORD, Contribution
from common.quantise import dequantise, quantise_probs, rounding_generator
from common.secagg import STAGES, SecAggParams
from common.secagg.identity import ensure_identities
from common.secure_codec import client_policy, value_bound
from server.aggregation import Aggregator, PlainAggregator, RoundFailed, RoundPlan
from server.cohort import NodeRegistry
from server.secure_aggregator import SecureAggregator, stage_message_type
from simulations.launcher import OFFLINE_ENV

ROWS, CLASSES = 2000, 10
PAYLOAD_SEED = 2024
PUBLIC_HASH = "feddistill-bench-secagg"
STAGE_TIMEOUT = 300.0  # seconds; generous, a stage only waits this long if a client hangs
NODE_WAIT = 120.0  # seconds for the simulated nodes to register
METHODS = ("plain", "ours", "flower")  # what each round runs
REPORTED = ("plain", "ours", "ours_setup", "flower")  # table rows: ours split by key set-up
LATER_STAGES = STAGES[1:-1]  # the SecAgg+ stages after advertise, each its own message type
DEFAULT_SIZES = (10, 50, 100)
DEFAULT_ROUNDS = 10  # timed rounds per method, after one warm-up round
DEFAULT_OUT = Path("runs/bench-secagg")
TARGET_OURS_VS_PLAIN = 2.5  # ours (steady state) ≤ 2.5× plain at the largest n (issue 12)
TARGET_AMORTISED_VS_PLAIN = 3.5  # set-up amortised over 5 rounds ≤ 3.5× plain (issue 12)
TARGET_FLOWER_VS_OURS = 8.0  # ours ≥ 8× faster than Flower at equal settings (issue 12)
CLIENT_WEIGHT = 1.0  # every client's ensemble weight (the uniform rule)
CLIENT_CONFIG = RunConfig()  # defaults: uniform weights, auto k and t, label_bits, no DP


@dataclass(frozen=True)
class RoundOutcome:
    """One round of one method, as the server saw it.

    Attributes
    ----------
    round : 1-based round number.
    seconds : wall time from the round's first message to its aggregate (or its failure).
    ensemble : (Q, K) float64 aggregated mean soft labels, or None if the round failed.
    contributors : partition ids whose matrices are in the sum (empty for Flower, which does not
        say, and for a failed round).
    failure : why the round failed, or "" if it did not.
    stage_seconds : ours: SecAgg+ stage → seconds of its round trip (the first includes training,
        here none).
    """

    round: int
    seconds: float
    ensemble: np.ndarray | None
    contributors: tuple[int, ...] = ()
    failure: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def key_setup(self) -> bool:
        """Whether ours set up keys this round (a new key epoch)."""
        return "advertise" in self.stage_seconds


def fixed_probs(partition_id: int) -> np.ndarray:
    """The fixed soft labels of one client: a seeded softmax of Gaussian logits.

    Returns
    -------
    np.ndarray
        (ROWS, CLASSES) float32, rows on the probability simplex.
    """
    logits = np.random.default_rng([PAYLOAD_SEED, partition_id]).normal(size=(ROWS, CLASSES))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))  # (Q, K)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def fixed_counts(partition_id: int) -> np.ndarray:
    """Client ``partition_id``'s fixed matrix quantised at `label_bits`: (ROWS, CLASSES) int64."""
    rounding = rounding_generator(PAYLOAD_SEED, 1, partition_id)
    return quantise_probs(fixed_probs(partition_id), CLIENT_CONFIG.label_bits, rounding)


def fixed_contribution(partition_id: int) -> Contribution:
    """What client ``partition_id`` reports every round: its quantised matrix with weight 1."""
    counts = fixed_counts(partition_id)
    return dequantise(counts, CLIENT_CONFIG.label_bits, CLIENT_WEIGHT, per_row=False)


def expected_mean(partition_ids: Iterable[int]) -> np.ndarray:
    """Float64 mean of the clients' quantised matrices, shape (ROWS, CLASSES): the exact
    ensemble, which plain and secure aggregation must both reproduce bit for bit."""
    return np.mean([fixed_contribution(i).probs for i in partition_ids], axis=0)


def secagg_params(n_clients: int) -> SecAggParams:
    """Our settings resolved for a cohort of n, as `SecureAggregator` resolves them."""
    return client_policy(CLIENT_CONFIG).validate(n_clients, value_bound(CLIENT_CONFIG))


def stage_action(stage: str) -> str:
    """The ClientApp action of a later SecAgg+ stage ('share-keys' → 'secagg_share_keys')."""
    return stage_message_type(stage).removeprefix("train.")


# --- the ClientApp: fixed payload; our real handlers and Flower's legacy client with its mod ----


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


def describe_reply(msg: Message, context: Context) -> Message:
    """Answer the server's ``query.describe`` with this node's partition id as its data source."""
    partition_id = _partition_id(context)
    record = ConfigRecord({"label": f"bench-{partition_id}", "index": partition_id})
    return Message(RecordDict({NODE_RECORD: record}), reply_to=msg)


def train_reply(msg: Message, context: Context, config: RunConfig) -> Message:
    """Answer our ``train``: the fixed contribution in the clear, or the SecAgg+ stage the
    message carries (advertise, or masked-input in a later round of a key epoch).

    ``config`` is the clients' run config (`bench_config`: CLIENT_CONFIG with a roster).
    """
    contribution = fixed_contribution(_partition_id(context))
    round_config = msg.content[ROUND_RECORD]
    if bool(round_config.get("secagg", False)):
        stage = str(round_config.get("secagg_stage", ""))
        training_round = int(round_config["round"])
        return start_secure_round(msg, context, config, contribution, stage, training_round)
    counts = fixed_counts(_partition_id(context))
    content = plain_reply_content(contribution, counts, CLIENT_CONFIG.label_bits, PUBLIC_HASH)
    return Message(content, reply_to=msg)


def stage_reply(msg: Message, context: Context, stage: str, config: RunConfig) -> Message:
    """Answer one of our later SecAgg+ stages (share-keys to unmask) with the clients' config."""
    return continue_secure_round(msg, context, config, stage)


def bench_config(identities_dir: Path, num_nodes: int) -> RunConfig:
    """CLIENT_CONFIG with a roster of ``num_nodes`` identities made under ``identities_dir``."""
    names = [f"partition-{i}" for i in range(num_nodes)]
    return CLIENT_CONFIG.replace(secagg_roster=str(ensure_identities(identities_dir, names)))


class _FixedSoftLabelsClient(NumPyClient):
    """A legacy client whose ``fit`` returns the fixed matrix of its partition, weight 1."""

    def __init__(self, partition_id: int) -> None:
        self.partition_id = partition_id

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        return [fixed_probs(self.partition_id)], int(CLIENT_WEIGHT), {}


def _flower_client_fn(context: Context) -> Client:
    return _FixedSoftLabelsClient(_partition_id(context)).to_client()


def bench_client_app(config: RunConfig) -> ClientApp:
    """One ClientApp for all three methods; no training anywhere; ``config`` from `bench_config`.

    Every stage of Flower's SecAgg+ is a ``train`` message carrying its ``secaggplus_configs``
    record; those go to Flower's legacy ClientApp with `secaggplus_mod`, all others to ours.
    """
    flower = ClientApp(client_fn=_flower_client_fn, mods=[secaggplus_mod])
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if RECORD_KEY_CONFIGS in msg.content:
            return flower(msg, context)
        return train_reply(msg, context, config)

    app.query("describe")(describe_reply)
    for stage in LATER_STAGES:
        app.train(stage_action(stage))(_stage_handler(stage, config))
    return app


def _stage_handler(stage: str, config: RunConfig) -> Callable[[Message, Context], Message]:
    def handler(msg: Message, context: Context) -> Message:
        return stage_reply(msg, context, stage, config)

    return handler


# --- the ServerApp: per round, plain, ours and Flower's SecAgg+ back to back ---------------------


def wait_for_nodes(grid: Grid, num_nodes: int, timeout: float = NODE_WAIT) -> None:
    """Block until ``num_nodes`` nodes are connected (simulated nodes register after start)."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < num_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {num_nodes} nodes connected within {timeout:.0f}s")
        time.sleep(0.1)


class AggregatorRounds:
    """Runs rounds of our aggregators over every node of a grid, timing each.

    Parameters
    ----------
    grid : the ServerApp's grid.
    num_nodes : nodes to wait for; they are described once (node id → partition id) and every
        round's cohort is all of them.
    """

    def __init__(self, grid: Grid, num_nodes: int) -> None:
        wait_for_nodes(grid, num_nodes)
        self.grid = grid
        self.nodes = NodeRegistry(PUBLIC_HASH, CLASSES, STAGE_TIMEOUT).refresh(grid)
        self.partition_of = {node.node_id: node.index for node in self.nodes}

    def collect(self, aggregator: Aggregator, round_number: int) -> RoundOutcome:
        """Run one round with ``aggregator``; a `RoundFailed` becomes a failed outcome."""
        plan = RoundPlan(
            round=round_number,
            cohort=self.nodes,
            query_indices=np.arange(ROWS, dtype=np.int64),
            n_public=ROWS,
            num_classes=CLASSES,
            label_bits=CLIENT_CONFIG.label_bits,
            public_hash=PUBLIC_HASH,
            min_clients=CLIENT_CONFIG.secagg_min_cohort,
            timeout=STAGE_TIMEOUT,
        )
        start = time.perf_counter()
        try:
            aggregate = aggregator.collect(self.grid, plan)
        except RoundFailed as error:
            return RoundOutcome(round_number, time.perf_counter() - start, None, (), str(error))
        seconds = time.perf_counter() - start
        contributors = tuple(sorted(self.partition_of[node] for node in aggregate.contributors))
        ensemble = aggregate.weighted_sum / aggregate.total_weight  # (Q, K)
        return RoundOutcome(
            round_number,
            seconds,
            ensemble,
            contributors,
            stage_seconds=aggregate.stage_seconds,
        )


class _InterleavedRound:
    """Stands in Flower's fit-workflow slot: each round runs plain, ours, then Flower's SecAgg+;
    ours keeps one aggregator, so its key epochs span rounds as in a real run."""

    def __init__(
        self,
        rounds: AggregatorRounds,
        flower: SecAggPlusWorkflow,
        outcomes: dict[str, list[RoundOutcome]],
    ) -> None:
        self.rounds = rounds
        self.flower = flower
        self.outcomes = outcomes
        self.ours = SecureAggregator(CLIENT_CONFIG)

    def __call__(self, grid: Grid, context: LegacyContext) -> None:
        round_number = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        aggregators = {"plain": PlainAggregator(), "ours": self.ours}
        for method, aggregator in aggregators.items():
            self.outcomes[method].append(self.rounds.collect(aggregator, round_number))
        self.outcomes["flower"].append(self._flower_round(grid, context, round_number))

    def _flower_round(self, grid: Grid, context: LegacyContext, round_number: int) -> RoundOutcome:
        before = context.state.array_records[MAIN_PARAMS_RECORD]
        start = time.perf_counter()
        self.flower(grid, context)
        seconds = time.perf_counter() - start
        after = context.state.array_records[MAIN_PARAMS_RECORD]
        if after is before:  # the workflow halted: it replaces the record only on success
            return RoundOutcome(round_number, seconds, None, (), "Flower's SecAgg+ halted")
        (ensemble,) = after.to_numpy_ndarrays()  # (Q, K) float64
        return RoundOutcome(round_number, seconds, ensemble)


def bench_server_app(
    num_nodes: int, rounds: int, outcomes: dict[str, list[RoundOutcome]]
) -> ServerApp:
    """The bench's ServerApp: ``rounds`` rounds of all three methods over ``num_nodes`` nodes.

    Flower's workflow gets ``num_shares = k + 1`` and ``reconstruction_threshold = t`` of our
    settings for n (see the module docstring) and ``max_weight`` = the clients' weight.

    Parameters
    ----------
    num_nodes : nodes to wait for; every round's cohort is all of them.
    rounds : rounds to run.
    outcomes : method → list the server appends one `RoundOutcome` per round to (it runs in a
        thread of this process under `run_simulation`).
    """
    params = secagg_params(num_nodes)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rounds_of_ours = AggregatorRounds(grid, num_nodes)
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=num_nodes,
            min_available_clients=num_nodes,
            initial_parameters=ndarrays_to_parameters([np.zeros((ROWS, CLASSES))]),
        )
        legacy = LegacyContext(context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        flower = SecAggPlusWorkflow(
            num_shares=params.neighbours + 1,
            reconstruction_threshold=params.threshold,
            max_weight=CLIENT_WEIGHT,
            timeout=STAGE_TIMEOUT,
        )
        interleaved = _InterleavedRound(rounds_of_ours, flower, outcomes)
        DefaultWorkflow(fit_workflow=interleaved)(grid, legacy)

    return app


# --- running and reporting ----------------------------------------------------------------------


def run_apps(server_app: ServerApp, client_app: ClientApp, num_nodes: int) -> None:
    """Run a ServerApp and ClientApp to completion in Flower's simulation engine (in process).

    One CPU per client actor, so the engine runs as many clients at once as there are cores.
    """
    from flwr.simulation import run_simulation  # deprecated but the one in-process runner

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_nodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )


def run_size(num_nodes: int, rounds: int) -> dict[str, list[RoundOutcome]]:
    """Run ``rounds`` rounds of every method in one simulation of ``num_nodes`` clients.

    Returns
    -------
    dict[str, list[RoundOutcome]]
        Method → one outcome per round, in round order.
    """
    outcomes: dict[str, list[RoundOutcome]] = {method: [] for method in METHODS}
    with tempfile.TemporaryDirectory(prefix="feddistill-bench-ids-") as identities:
        client_app = bench_client_app(bench_config(Path(identities), num_nodes))
        run_apps(bench_server_app(num_nodes, rounds, outcomes), client_app, num_nodes)
    return outcomes


def summarise(method: str, num_nodes: int, outcomes: list[RoundOutcome]) -> dict[str, object]:
    """One table row: median round time without the warm-up round, and the worst error.

    A method with no timed round (``ours_setup`` when the run is shorter than one key epoch)
    gets NaN times.

    Raises
    ------
    RuntimeError
        If a round failed: a benchmark of failed rounds means nothing.
    """
    failed = [outcome for outcome in outcomes if outcome.ensemble is None]
    if failed:
        raise RuntimeError(f"{method} at n={num_nodes}: round(s) failed: {failed[0].failure}")
    timed = [outcome.seconds for outcome in outcomes if outcome.round > 1] or [float("nan")]
    exact = expected_mean(range(num_nodes))
    error = max((float(np.max(np.abs(o.ensemble - exact))) for o in outcomes), default=0.0)
    params = secagg_params(num_nodes)
    return {
        "n": num_nodes,
        "method": method,
        "k": params.neighbours,
        "t": params.threshold,
        "flower_num_shares": params.neighbours + 1,
        "flower_threshold": params.threshold,
        "rounds_timed": int(np.sum(np.isfinite(timed))),
        "median_s": float(np.median(timed)),
        "min_s": float(np.min(timed)),
        "max_s": float(np.max(timed)),
        "max_abs_error": error,
    }


def ratio_table(frame: pd.DataFrame, epoch_rounds: int) -> pd.DataFrame:
    """Per n: median seconds of each method, ours amortised over a key epoch of R rounds
    ((setup + (R − 1)·steady) / R), and the ratios to plain and Flower's to ours (steady)."""
    wide = frame.pivot(index="n", columns="method", values="median_s")[list(REPORTED)]
    wide.columns = [f"{method}_s" for method in REPORTED]
    wide["ours_amortised_s"] = (
        wide["ours_setup_s"] + (epoch_rounds - 1) * wide["ours_s"]
    ) / epoch_rounds
    wide["ours/plain"] = wide["ours_s"] / wide["plain_s"]
    wide["amortised/plain"] = wide["ours_amortised_s"] / wide["plain_s"]
    wide["setup/plain"] = wide["ours_setup_s"] / wide["plain_s"]
    wide["flower/ours"] = wide["flower_s"] / wide["ours_s"]
    wide["flower/plain"] = wide["flower_s"] / wide["plain_s"]
    return wide.reset_index()


def target_lines(ratios: pd.DataFrame, epoch_rounds: int) -> list[str]:
    """Whether the targets hold: at the largest n ours (steady) ≤ 2.5× plain and amortised over
    the epoch ≤ 3.5× plain; at every n Flower ≥ 8× ours. Flower/plain bounds the last one:
    ours cannot beat plain, whose single round trip it contains."""
    largest = ratios.loc[ratios["n"].idxmax()]
    n = int(largest["n"])
    steady, amortised = float(largest["ours/plain"]), float(largest["amortised/plain"])
    lines = [
        f"ours (steady state) ≤ {TARGET_OURS_VS_PLAIN:g}× plain at n={n}: "
        f"{'met' if steady <= TARGET_OURS_VS_PLAIN else 'NOT met'} ({steady:.2f}×)",
        f"ours with set-up amortised over {epoch_rounds} rounds ≤ "
        f"{TARGET_AMORTISED_VS_PLAIN:g}× plain at n={n}: "
        f"{'met' if amortised <= TARGET_AMORTISED_VS_PLAIN else 'NOT met'} ({amortised:.2f}×)",
    ]
    for _, row in ratios.iterrows():
        speedup = float(row["flower/ours"])
        verdict = "met" if speedup >= TARGET_FLOWER_VS_OURS else "NOT met"
        lines.append(
            f"ours ≥ {TARGET_FLOWER_VS_OURS:g}× faster than Flower at n={int(row['n'])}: "
            f"{verdict} ({speedup:.2f}×; Flower is {float(row['flower/plain']):.2f}× plain, "
            "the most any secure method can gain here)"
        )
    return lines


def machine_note() -> str:
    """Where the numbers come from: cores, Python, Flower, date."""
    import flwr

    return (
        f"{os.cpu_count()} logical cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, flwr {flwr.__version__}, "
        f"{datetime.now():%Y-%m-%d %H:%M}; other processes may share the cores, so compare "
        "ratios within one run"
    )


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table; floats with 3 significant digits."""

    def cell(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |"]
    lines.append("|" + "---|" * len(frame.columns))
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(value) for value in row) + " |")
    return "\n".join(lines)


def stage_table(num_nodes: int, method: str, outcomes: list[RoundOutcome]) -> dict[str, object]:
    """One row: median seconds of each SecAgg+ stage's round trip over the timed rounds."""
    timed = [outcome.stage_seconds for outcome in outcomes if outcome.round > 1]
    stages = [stage for stage in STAGES[:-1] if any(stage in times for times in timed)]
    return {
        "n": num_nodes,
        "method": method,
        **{stage: float(np.median([times[stage] for times in timed])) for stage in stages},
    }


def write_report(
    frame: pd.DataFrame,
    stages: pd.DataFrame,
    seconds: float,
    out_dir: Path,
    epoch_rounds: int,
) -> None:
    """Write ``secagg_bench.csv`` (one row per n and method), ``secagg_stages.csv`` (ours,
    per stage) and ``secagg_bench.md``."""
    ratios = ratio_table(frame, epoch_rounds)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_dir / "secagg_bench.csv", index=False)
    stages.to_csv(out_dir / "secagg_stages.csv", index=False)
    text = "\n".join(
        [
            "# Secure aggregation through Flower's simulation engine",
            "",
            f"Payload per client: ({ROWS}, {CLASSES}) float32 soft labels + weight 1. One "
            "simulation per n runs every round of the three methods back to back; round time "
            "= median over the timed rounds (each method's first round is a warm-up). Ours "
            f"keeps its keys for {epoch_rounds} rounds: `ours` = steady-state rounds, "
            "`ours_setup` = rounds that set up a new key epoch.",
            "",
            f"Machine: {machine_note()}. Whole benchmark: {seconds:.0f} s.",
            "",
            markdown_table(frame),
            "",
            markdown_table(ratios),
            "",
            "Ours, median seconds per stage (a stage = the server sending its requests to "
            "holding every reply; the first stage of a round is the `train` message):",
            "",
            markdown_table(stages.fillna("")),
            "",
            *(f"- {line}" for line in target_lines(ratios, epoch_rounds)),
            "",
        ]
    )
    (out_dir / "secagg_bench.md").write_text(text)


def run_secagg_bench(sizes: list[int], rounds: int, out_dir: Path) -> pd.DataFrame:
    """Time plain, ours and Flower's SecAgg+ at each cohort size and write the report.

    Parameters
    ----------
    sizes : cohort sizes n (every simulated client takes part in every round), each >= 3.
    rounds : timed rounds per method and size; one warm-up round is run before them.
    out_dir : where ``secagg_bench.csv`` and ``secagg_bench.md`` go.

    Returns
    -------
    pandas.DataFrame
        One row per (n, method): k, t, Flower's matching settings, median/min/max seconds per
        round and the largest absolute error of the aggregated mean.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    start = time.perf_counter()
    rows, stage_rows = [], []
    for num_nodes in sizes:
        print(f"secagg bench: n={num_nodes}, {rounds + 1} rounds of each method …", flush=True)
        outcomes = run_size(num_nodes, rounds + 1)
        ours = outcomes.pop("ours")
        outcomes["ours"] = [outcome for outcome in ours if not outcome.key_setup]
        outcomes["ours_setup"] = [outcome for outcome in ours if outcome.key_setup]
        for method in REPORTED:
            rows.append(summarise(method, num_nodes, outcomes[method]))
        for method in ("ours", "ours_setup"):
            if any(outcome.round > 1 for outcome in outcomes[method]):
                stage_rows.append(stage_table(num_nodes, method, outcomes[method]))
        medians = ", ".join(f"{row['method']} {row['median_s']:.3f}" for row in rows[-4:])
        print(f"secagg bench:   median s per round: {medians}", flush=True)
    frame = pd.DataFrame(rows)
    epoch_rounds = CLIENT_CONFIG.secagg_epoch_rounds
    stages = pd.DataFrame(stage_rows)
    stages = stages[["n", "method", *(s for s in STAGES[:-1] if s in stages.columns)]]
    write_report(frame, stages, time.perf_counter() - start, out_dir, epoch_rounds)
    return frame


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the tables and where the report is."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report directory")
    parser.add_argument(
        "--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="cohort sizes, e.g. 10,50,100"
    )
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="timed rounds")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower logs every stage at INFO
    start = time.perf_counter()
    frame = run_secagg_bench(sizes, args.rounds, args.out)
    epoch_rounds = CLIENT_CONFIG.secagg_epoch_rounds
    ratios = ratio_table(frame, epoch_rounds)
    print(frame.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print(ratios.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    for line in target_lines(ratios, epoch_rounds):
        print(line)
    print(f"secagg bench: done in {time.perf_counter() - start:.0f} s; report in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
