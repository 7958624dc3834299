"""Collecting a round's soft labels: the aggregator interface and plain aggregation.

An aggregator turns a `RoundPlan` into an `Aggregate` (Σ_i w_i·P_i and Σ_i w_i over the clients
that delivered). Plain and secure aggregation implement the same `collect`, so the round loop
does not know which one runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.label_coding import decode_counts, encode_counts, encode_indices
from common.logs import error_summary, get_logger
from common.protocol import (
    ARRAYS_RECORD,
    CONTRIBUTION_RECORD,
    METRICS_RECORD,
    MSG_TRAIN,
    ROUND_RECORD,
    Contribution,
    arrays_to_record,
    payload_bytes,
    record_to_arrays,
    split_weighted_vector,
    summed_length,
)
from common.quantise import dequantise
from server.cohort import NodeInfo

log = get_logger(__name__)


class RoundFailed(RuntimeError):
    """A round could not produce a trustworthy aggregate (logged, recorded, not aggregated)."""


@dataclass(frozen=True)
class RoundPlan:
    """What the server asks of one round's cohort.

    Attributes
    ----------
    round : 1-based round number.
    cohort : sampled nodes in stable order.
    query_indices : (Q,) sorted int64 public indices to predict on.
    n_public : N, the size of the public set (the index bitmasks cover it).
    num_classes : K.
    label_bits : b, the width of soft labels on the wire (both directions).
    public_hash : SHA-256 of the public inputs (clients refuse a mismatch).
    min_clients : fewest contributions that make a valid aggregate.
    timeout : seconds to wait for each stage's replies.
    digest_indices, digest_counts : the previous ensemble for the digest step, (Q',) sorted
        indices and (Q', K) int64 counts at b bits, or None.
    per_row_weights : whether contributions carry a weight per queried row (the method's).
    """

    round: int
    cohort: list[NodeInfo]
    query_indices: np.ndarray
    n_public: int
    num_classes: int
    label_bits: int
    public_hash: str
    min_clients: int
    timeout: float
    digest_indices: np.ndarray | None = None
    digest_counts: np.ndarray | None = None
    per_row_weights: bool = False
    _coded: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def train_message(self, node_id: int, extra: dict[str, object] | None = None) -> Message:
        """The `train` message for one node; `extra` adds round-config fields (e.g. secagg)."""
        return Message(
            self.train_content(extra),
            dst_node_id=node_id,
            message_type=MSG_TRAIN,
            group_id=str(self.round),
        )

    def train_content(self, extra: dict[str, object] | None = None) -> RecordDict:
        """The records of a `train` message: the round config and the coded arrays (the same
        for every node, so they are coded once per round)."""
        round_config = ConfigRecord(
            {
                "round": self.round,
                "public_hash": self.public_hash,
                "num_classes": self.num_classes,
                "label_bits": self.label_bits,
                **(extra or {}),
            }
        )
        return RecordDict({ROUND_RECORD: round_config, ARRAYS_RECORD: self._train_arrays()})

    def _train_arrays(self) -> ArrayRecord:
        """query_mask (⌈N/8⌉,) uint8; with a digest also digest_mask and digest_counts (LZMA)."""
        if not self._coded:
            self._coded["query_mask"] = encode_indices(self.query_indices, self.n_public)
            if self.digest_counts is not None and self.digest_indices is not None:
                self._coded["digest_mask"] = encode_indices(self.digest_indices, self.n_public)
                self._coded["digest_counts"] = encode_counts(
                    self.digest_counts, self.label_bits, per_row=False
                )
        return arrays_to_record(self._coded)


@dataclass
class Aggregate:
    """The result of one round's collection.

    Attributes
    ----------
    weighted_sum : (Q, K) float64 Σ_i w_i · P_i over contributors (per-row weights:
        Σ_i w_i·r_ij · P_ij).
    total_weight : Σ_i w_i, or the (Q,) per-row totals Σ_i w_i·r_ij.
    contributors : node ids whose contribution is in the sum.
    failed : node id → reason, for cohort members left out.
    bytes_up, bytes_down : payload bytes received from / sent to clients this round.
    client_metrics : node id → metrics the client chose to send (plain aggregation only).
    seconds : wall time of the collection.
    stage_seconds : SecAgg+ stage → wall time of its round trip (empty for plain).
    """

    weighted_sum: np.ndarray
    total_weight: float | np.ndarray
    contributors: list[int]
    failed: dict[int, str] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    client_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def key_setup(self) -> bool:
        """Whether this round set up SecAgg+ keys (a new key epoch) rather than reusing them."""
        return "advertise" in self.stage_seconds


class Aggregator(Protocol):
    """Anything that can collect one round's aggregate from the grid."""

    def collect(self, grid: Grid, plan: RoundPlan) -> Aggregate:
        """Run the round's messages; raise RoundFailed if no trustworthy aggregate results."""
        ...


class PlainAggregator:
    """Clients send their soft labels in the clear; the server validates and sums them."""

    def collect(self, grid: Grid, plan: RoundPlan) -> Aggregate:
        start = time.perf_counter()
        messages = [plan.train_message(node.node_id, {"secagg": False}) for node in plan.cohort]
        bytes_down = sum(payload_bytes(message.content) for message in messages)
        replies = {
            reply.metadata.src_node_id: reply
            for reply in grid.send_and_receive(messages, timeout=plan.timeout)
        }
        expected_shape = (len(plan.query_indices), plan.num_classes)
        total = np.zeros(summed_length(*expected_shape, plan.per_row_weights))  # (Q·K + 1 or Q,)
        contributors, failed, metrics, bytes_up = [], {}, {}, 0
        for node in plan.cohort:  # stable order: the float sum does not depend on arrival
            reply = replies.get(node.node_id)
            if reply is not None and not reply.has_error():
                bytes_up += payload_bytes(reply.content)
            try:
                contribution = _unpack(reply, expected_shape, plan)
            except LeftOut as reason:
                failed[node.node_id] = str(reason)
                log.warning(
                    "round %d: left out %s (node %d): %s",
                    plan.round,
                    node.label,
                    node.node_id,
                    reason,
                )
                continue
            total += contribution.weighted_vector()
            contributors.append(node.node_id)
            if METRICS_RECORD in reply.content:
                metrics[node.node_id] = dict(reply.content[METRICS_RECORD])
        weighted_sum, total_weight = split_weighted_vector(
            total, plan.num_classes, plan.per_row_weights
        )
        if len(contributors) < plan.min_clients:
            raise RoundFailed(
                f"round {plan.round}: {len(contributors)} valid contributions < min_clients="
                f"{plan.min_clients}; failures: {failed}"
            )
        return Aggregate(
            weighted_sum=weighted_sum,
            total_weight=total_weight,
            contributors=contributors,
            failed=failed,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            client_metrics=metrics,
            seconds=time.perf_counter() - start,
        )


class LeftOut(ValueError):
    """Why one client's plain reply is not summed (recorded in the round's failures)."""


def _unpack(
    reply: Message | None, expected_shape: tuple[int, int], plan: RoundPlan
) -> Contribution:
    """The reply's Contribution (dequantised counts, weight, row weights), or LeftOut."""
    if reply is None:
        raise LeftOut("no reply before the timeout")
    if reply.has_error():
        log.warning("client error, as the node reported it: %s", reply.error.reason)
        raise LeftOut(f"client error: {error_summary(reply.error.reason)}")
    try:
        coded = record_to_arrays(reply.content[CONTRIBUTION_RECORD])["counts"]
        round_record = reply.content[ROUND_RECORD]
        weight = float(round_record["weight"])
        reported_hash = str(round_record["public_hash"])
        label_bits = int(round_record["label_bits"])
    except (KeyError, TypeError, ValueError) as error:
        raise LeftOut(f"malformed reply ({error!r})") from None
    if reported_hash != plan.public_hash:
        raise LeftOut(f"public-set hash {reported_hash[:16]}… differs from the server's")
    if label_bits != plan.label_bits:
        raise LeftOut(f"label_bits={label_bits}, expected {plan.label_bits}")
    if not np.isfinite(weight) or weight <= 0:
        raise LeftOut(f"weight must be finite and > 0, got {weight}")
    try:
        counts = decode_counts(coded, plan.label_bits, plan.per_row_weights, expected_shape)
    except ValueError as error:
        raise LeftOut(str(error)) from None
    return dequantise(counts, plan.label_bits, weight, plan.per_row_weights)
