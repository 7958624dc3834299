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
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.logs import get_logger
from common.protocol import (
    ARRAYS_RECORD,
    CONTRIBUTION_RECORD,
    MSG_TRAIN,
    ROUND_RECORD,
    arrays_to_record,
    payload_bytes,
    record_to_arrays,
)
from server.cohort import NodeInfo

log = get_logger(__name__)

ROW_SUM_TOLERANCE = 1e-3


class RoundFailed(RuntimeError):
    """A round could not produce a trustworthy aggregate (logged, recorded, not aggregated)."""


@dataclass(frozen=True)
class RoundPlan:
    """What the server asks of one round's cohort.

    Attributes
    ----------
    round : 1-based round number.
    cohort : sampled nodes in stable order.
    query_indices : (Q,) int64 public indices to predict on.
    num_classes : K.
    public_hash : SHA-256 of the public inputs (clients refuse a mismatch).
    min_clients : fewest contributions that make a valid aggregate.
    timeout : seconds to wait for each stage's replies.
    digest_indices, digest_probs : previous ensemble (Q',), (Q', K) for the digest step, or None.
    per_row_weights : whether contributions carry a weight per queried row (the method's).
    """

    round: int
    cohort: list[NodeInfo]
    query_indices: np.ndarray
    num_classes: int
    public_hash: str
    min_clients: int
    timeout: float
    digest_indices: np.ndarray | None = None
    digest_probs: np.ndarray | None = None
    per_row_weights: bool = False

    def train_message(self, node_id: int, extra: dict[str, object] | None = None) -> Message:
        """The `train` message for one node; `extra` adds round-config fields (e.g. secagg)."""
        arrays = {"query_indices": self.query_indices}
        if self.digest_probs is not None and self.digest_indices is not None:
            arrays["digest_indices"] = self.digest_indices
            arrays["digest_probs"] = self.digest_probs.astype(np.float32)
        round_config = ConfigRecord(
            {
                "round": self.round,
                "public_hash": self.public_hash,
                "cohort_size": len(self.cohort),
                **(extra or {}),
            }
        )
        content = RecordDict({ROUND_RECORD: round_config, ARRAYS_RECORD: arrays_to_record(arrays)})
        return Message(
            content, dst_node_id=node_id, message_type=MSG_TRAIN, group_id=str(self.round)
        )


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
    """

    weighted_sum: np.ndarray
    total_weight: float | np.ndarray
    contributors: list[int]
    failed: dict[int, str] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    client_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


class Aggregator(Protocol):
    """Anything that can collect one round's aggregate from the grid."""

    def collect(self, grid: Grid, plan: RoundPlan) -> Aggregate:
        """Run the round's messages; raise RoundFailed if no trustworthy aggregate results."""
        ...


def validate_probs(probs: np.ndarray, expected_shape: tuple[int, int]) -> str | None:
    """Reason a reported soft-label matrix is unacceptable, or None if it is fine."""
    if probs.shape != expected_shape:
        return f"shape {probs.shape}, expected {expected_shape}"
    if probs.dtype != np.float32:
        return f"dtype {probs.dtype}, expected float32"
    if not np.all(np.isfinite(probs)):
        return "NaN or Inf values"
    if probs.min() < 0.0 or probs.max() > 1.0:
        return f"values outside [0, 1] (min {probs.min():.3g}, max {probs.max():.3g})"
    worst = float(np.abs(probs.sum(axis=1) - 1.0).max())
    if worst > ROW_SUM_TOLERANCE:
        return f"rows do not sum to 1 (worst deviation {worst:.3g} > {ROW_SUM_TOLERANCE})"
    return None


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
        weighted_sum = np.zeros(expected_shape, dtype=np.float64)
        total_weight: float | np.ndarray = (
            np.zeros(len(plan.query_indices)) if plan.per_row_weights else 0.0
        )
        contributors, failed, metrics, bytes_up = [], {}, {}, 0
        for node in plan.cohort:  # stable order: the float sum does not depend on arrival
            reply = replies.get(node.node_id)
            reason, probs, weight = _unpack(
                reply, expected_shape, plan.public_hash, plan.per_row_weights
            )
            if reply is not None and not reply.has_error():
                bytes_up += payload_bytes(reply.content)
            if reason is not None:
                failed[node.node_id] = reason
                log.warning(
                    "round %d: left out %s (node %d): %s",
                    plan.round,
                    node.label,
                    node.node_id,
                    reason,
                )
                continue
            if plan.per_row_weights:  # weight: (Q,) w_i · r_ij
                weighted_sum += weight[:, None] * probs.astype(np.float64)
            else:
                weighted_sum += weight * probs.astype(np.float64)
            total_weight = total_weight + weight
            contributors.append(node.node_id)
            if "client_metrics" in reply.content:
                metrics[node.node_id] = dict(reply.content["client_metrics"])
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


def validate_row_weights(row_weights: np.ndarray, n_query: int) -> str | None:
    """Reason a reported per-row weight vector is unacceptable, or None if it is fine."""
    if row_weights.shape != (n_query,):
        return f"row_weights shape {row_weights.shape}, expected ({n_query},)"
    if not np.all(np.isfinite(row_weights)):
        return "row_weights hold NaN or Inf values"
    if row_weights.min(initial=0.0) < 0.0 or row_weights.max(initial=0.0) > 1.0:
        return (
            f"row_weights outside [0, 1] (min {row_weights.min():.3g}, max {row_weights.max():.3g})"
        )
    return None


def _unpack(
    reply: Message | None,
    expected_shape: tuple[int, int],
    public_digest: str,
    per_row_weights: bool,
) -> tuple[str | None, np.ndarray, float | np.ndarray]:
    """(reason or None, probs (Q, K), weight w_i, or (Q,) w_i·r_ij with per-row weights)."""
    empty = np.empty(0)
    if reply is None:
        return "no reply before the timeout", empty, 0.0
    if reply.has_error():
        return f"client error: {reply.error.reason}", empty, 0.0
    try:
        arrays = record_to_arrays(reply.content[CONTRIBUTION_RECORD])
        probs = arrays["probs"]
        row_weights = arrays["row_weights"].astype(np.float64) if per_row_weights else None
        weight = float(reply.content[ROUND_RECORD]["weight"])
        reported_hash = str(reply.content[ROUND_RECORD]["public_hash"])
    except (KeyError, TypeError, ValueError) as error:
        return f"malformed reply ({error!r})", empty, 0.0
    if reported_hash != public_digest:
        return f"public-set hash {reported_hash[:16]}… differs from the server's", empty, 0.0
    if not np.isfinite(weight) or weight <= 0:
        return f"weight must be finite and > 0, got {weight}", empty, 0.0
    reason = validate_probs(probs, expected_shape)
    if reason is None and row_weights is not None:
        reason = validate_row_weights(row_weights, expected_shape[0])
        return reason, probs, weight * row_weights
    return reason, probs, weight
