"""Federated distillation as a plain single-process loop: the same compute without Flower.

Every round does what the simulation does, with the same functions and seeds: sample the cohort
(`sample_cohort`), plan its queries and digest (`plan_for_cohort`, the ServerApp's), run
each client's `run_local_round` on its partition (with `client_threads` torch threads, as a
ClientApp does), quantise its report, add DP noise shares, sum the soft labels (through the
same SecAgg+ protocol objects when `secagg` is on, in memory instead of over messages), form the
ensemble, distil and evaluate the `Student` (with `server_threads`, as the ServerApp does).
Payload bytes are counted on the records the apps would send. The difference to the simulation
is the framework: messages, serialisation, actors, state persistence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from client.app import plain_reply_content
from client.privacy import add_dp_noise_share
from client.secagg import SecAggClient
from client.teacher import RoundInput, new_teacher, run_local_round
from common.config import RunConfig
from common.data import DatasetSplits, public_hash
from common.methods import get_method
from common.protocol import (
    SECAGG_ARRAYS,
    SECAGG_CONFIG,
    Contribution,
    payload_bytes,
    split_weighted_vector,
    summed_length,
)
from common.quantise import counts_to_probs, quantise_contribution, rounding_generator
from common.secagg import SecAggParams
from common.secagg.identity import NodeIdentity
from common.secure_codec import (
    client_policy,
    decode_aggregate,
    dp_noise_share_std,
    encode_contribution,
    payload_to_records,
    value_bound,
)
from common.training import resolve_device, seeded_generator
from server.aggregation import RoundPlan
from server.app import ensemble_label_metrics, plan_for_cohort
from server.cohort import NodeInfo, sample_cohort
from server.secagg import SecAggServer
from server.student import Student
from simulations.bench.baselines import client_data

GRAPH_SEED_TAG = 31


ReportObserver = Callable[[int, int, np.ndarray], None]


def run_plain(
    config: RunConfig, splits: DatasetSplits, on_report: ReportObserver | None = None
) -> list[dict[str, Any]]:
    """Run `config.rounds` rounds in this process; one metrics row per round.

    `on_report(round, client index, counts)` sees every client's quantised report (Q, K) as
    it would go on the wire (benches measure codings with it).

    Rows carry the simulation's column names: `seconds` spans the same work as the ServerApp's
    round time (sampling through evaluation), `aggregate_seconds` the clients plus the sum.
    """
    caller_threads = torch.get_num_threads()
    try:
        return _rounds(config, splits, on_report)
    finally:  # the rounds switch between client and server thread counts; the caller keeps its
        torch.set_num_threads(caller_threads)


def _rounds(
    config: RunConfig, splits: DatasetSplits, on_report: ReportObserver | None
) -> list[dict[str, Any]]:
    device = resolve_device(config.device)
    clients = client_data(config, splits)
    nodes = [NodeInfo(node_id=p.index + 1, index=p.index, label=p.label) for p in clients]
    teachers: dict[int, torch.nn.Module] = {}
    student = Student(config, splits, device)
    method = get_method(config.method)
    public_digest = public_hash(splits.public_x)
    previous: tuple[np.ndarray, np.ndarray] | None = None
    secure_sums = SecureSums(config)
    rows = []
    for round_number in range(1, config.rounds + 1):
        round_start = time.perf_counter()
        cohort = sample_cohort(
            nodes, config.fraction, config.min_clients, config.seed, round_number
        )
        plan = plan_for_cohort(
            config, splits, student, cohort, public_digest, round_number, previous
        )
        query = plan.query_indices
        request = RoundInput(
            round=round_number,
            query_indices=query,
            digest_indices=plan.digest_indices,
            digest_probs=None
            if plan.digest_counts is None
            else counts_to_probs(plan.digest_counts, config.label_bits),
        )
        torch.set_num_threads(config.client_threads)
        contributions = {}
        wire = WireBytes() if config.secagg else WireBytes.of_train_messages(plan)
        noise_std = dp_noise_share_std(config, len(query), len(cohort))
        for node in cohort:
            fresh = node.index not in teachers
            if fresh:
                teachers[node.index] = new_teacher(config, splits, node.index)
            contribution, metrics = run_local_round(
                teachers[node.index],
                config,
                splits.public,
                clients[node.index],
                request,
                device,
                fresh,
            )
            rounding = rounding_generator(config.seed, round_number, node.index)
            contribution, counts = quantise_contribution(contribution, config.label_bits, rounding)
            if on_report is not None:
                on_report(round_number, node.index, counts)
            if not config.secagg:
                reply = plain_reply_content(
                    contribution, counts, config.label_bits, public_digest, metrics
                )
                wire.up += payload_bytes(reply)
            contributions[node.node_id] = add_dp_noise_share(contribution, noise_std)
        weighted_sum, total_weight = (
            secure_sums.sum(plan, contributions, noise_std, wire)
            if config.secagg
            else plain_sum(contributions, splits.num_classes, method.per_row_weights)
        )
        aggregate_seconds = time.perf_counter() - round_start
        torch.set_num_threads(config.server_threads)  # as the ServerApp does
        combined = method.combine(weighted_sum, total_weight, config)
        if not combined.kept.any():  # as the ServerApp: the round is skipped, loudly
            failed = {"status": "failed: no ensemble row kept", "rows_kept": 0}
            rows.append(
                {"round": round_number, **failed, "seconds": time.perf_counter() - round_start}
            )
            continue
        query, ensemble = query[combined.kept], combined.probs[combined.kept]  # (Q',), (Q', K)
        previous = (query, ensemble)
        distill_start = time.perf_counter()
        public_y = None if splits.public_y is None else splits.public_y[query]
        student.distill(round_number, splits.public_x[query], ensemble, public_y)
        distill_seconds = time.perf_counter() - distill_start
        rows.append(
            {
                "round": round_number,
                "status": "ok",
                **student.evaluate(splits.test_x, splits.test_y),
                **ensemble_label_metrics(ensemble, public_y, config),
                "clients": len(cohort),
                "rows_kept": int(combined.kept.sum()),
                "bytes_up": wire.up,
                "bytes_down": wire.down,
                "aggregate_seconds": aggregate_seconds,
                "distill_seconds": distill_seconds,
                "seconds": time.perf_counter() - round_start,
            }
        )
    return rows


@dataclass
class WireBytes:
    """Payload bytes of one round's messages, counted on the records the apps would send (the
    same `payload_bytes` as the ServerApp's metrics)."""

    up: int = 0
    down: int = 0

    @classmethod
    def of_train_messages(cls, plan: RoundPlan) -> WireBytes:
        """Start a plain round's count with its `train` messages."""
        one = payload_bytes(plan.train_content({"secagg": False}))
        return cls(down=one * len(plan.cohort))

    def add_stage(self, requests: dict[int, dict], replies: dict[int, dict]) -> None:
        """Add one SecAgg+ stage's request and reply payloads (as `payload_to_records` sends)."""
        for payloads, side in ((requests, "down"), (replies, "up")):
            total = sum(_secagg_bytes(payload) for payload in payloads.values())
            setattr(self, side, getattr(self, side) + total)


def _secagg_bytes(payload: dict) -> int:
    config, arrays = payload_to_records(payload)
    return payload_bytes(RecordDict({SECAGG_CONFIG: config, SECAGG_ARRAYS: arrays}))


def plain_sum(
    contributions: dict[int, Contribution], num_classes: int, per_row_weights: bool
) -> tuple[np.ndarray, np.ndarray | float]:
    """Σ w_i·P_i (float64, (Q, K)) and Σ w_i (per-row: (Q,) totals), in cohort order."""
    total = sum(c.weighted_vector() for c in contributions.values())
    return split_weighted_vector(total, num_classes, per_row_weights)


class SecureSums:
    """The same sums through the SecAgg+ protocol objects, every party in this process with its
    own Ed25519 identity on a shared roster (the authenticated protocol the apps run). Key
    epochs span rounds exactly as `SecureAggregator`'s do, and each message's payload bytes
    (the `train` message with the stage it carries, then each later stage) go to a `WireBytes`.
    """

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.server: SecAggServer | None = None
        self.parties: dict[int, SecAggClient] = {}

    def sum(
        self,
        plan: RoundPlan,
        contributions: dict[int, Contribution],
        noise_std: float,
        wire: WireBytes,
    ) -> tuple[np.ndarray, np.ndarray | float]:
        """Σ w_i·P_i (float64, (Q, K)) and Σ w_i (per-row: (Q,) totals) of the cohort's
        contributions (DP noise shares already added, sized by ``noise_std``)."""
        config = self.config
        per_row = get_method(config.method).per_row_weights
        cohort = sorted(contributions)
        bound = value_bound(config, noise_std)
        params = client_policy(config).validate(len(cohort), bound)
        length = summed_length(len(plan.query_indices), plan.num_classes, per_row)
        server = self.server
        if server is not None and server.can_serve(plan.round, cohort, params, length):
            server.next_round(plan.round)
        else:
            server = self._new_epoch(plan.round, cohort, params, length, bound, noise_std)
        self.server = None  # reused only if this round finishes
        train = payload_bytes(plan.train_content({"secagg": True, "secagg_stage": server.stage}))
        wire.down += train * len(cohort)
        while (stage := server.stage) != "done":
            requests, replies = server.requests(), {}
            for node, request in requests.items():
                party = self.parties[node]
                vector = None
                if stage == "masked-input":
                    vector = encode_contribution(contributions[node], party.round_params, bound)
                replies[node] = party.respond(stage, request, vector)
            wire.add_stage(requests, replies)
            server.receive(replies)
        self.server = server
        return decode_aggregate(server.result().total, params, plan.num_classes, per_row)

    def _new_epoch(
        self,
        round_number: int,
        cohort: list[int],
        params: SecAggParams,
        length: int,
        bound: float,
        noise_std: float,
    ) -> SecAggServer:
        """A new key epoch's server, and fresh parties with fresh identities."""
        config = self.config
        graph_seed = int(seeded_generator(config.seed, round_number, GRAPH_SEED_TAG).initial_seed())
        identities = {node: NodeIdentity.generate() for node in cohort}
        roster = sorted(identity.public_key for identity in identities.values())
        min_contributors = (config.dp_min_clients or len(cohort)) if noise_std > 0 else 0
        self.parties = {
            node: SecAggClient(
                node,
                client_policy(config),
                identity=identities[node],
                roster=roster,
                expected_length=length,
                value_bound=bound,
                min_contributors=min_contributors,
            )
            for node in cohort
        }
        return SecAggServer(
            round_number,
            cohort,
            params,
            length,
            slots=config.secagg_epoch_rounds,
            graph_seed=graph_seed,
        )
