"""Secure aggregation over the Flower Message API: one message type per SecAgg+ stage.

Keys are set up once per key epoch of `secagg_epoch_rounds` rounds. A round that starts an epoch
has five round trips: the `train` message carries the advertise request (the client trains,
then advertises its signed keys), then `train.secagg_share_keys`, `train.secagg_masked_input`,
`train.secagg_consistency` and `train.secagg_unmask`. A later round of the epoch has three: the
`train` message carries the masked-input request (the client trains and replies with its masked
contribution), then consistency and unmask. A new epoch starts when the last one is used up or
aborted, when a node refused a round because it lost its keys (a restart), or when the round's
cohort is not exactly the nodes that completed the epoch's set-up (a new node, or one that
missed the set-up), or its vector length or settings differ. The
protocol logic lives in `server.secagg.SecAggServer`; this module only moves payloads and turns
the exact integer sum back into soft labels.
"""

from __future__ import annotations

import secrets
import time

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.logs import error_summary, get_logger
from common.protocol import SECAGG_ARRAYS, SECAGG_CONFIG, payload_bytes, summed_length
from common.secagg import NO_KEY_EPOCH, SecAggAbort, SecAggParams
from common.secure_codec import (
    client_policy,
    decode_aggregate,
    dp_noise_share_std,
    payload_to_records,
    records_to_payload,
    value_bound,
)
from server.aggregation import Aggregate, RoundFailed, RoundPlan
from server.secagg import SecAggServer

log = get_logger(__name__)


def stage_message_type(stage: str) -> str:
    """Flower message type of a SecAgg+ stage after the first ('share-keys' → 'train.secagg_…')."""
    return f"train.secagg_{stage.replace('-', '_')}"


class SecureAggregator:
    """Collects Σ w_i·P_i with SecAgg+; the server never sees one client's soft labels."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.policy = client_policy(config)
        self.stage_timeout = config.secagg_stage_timeout
        self._epoch: SecAggServer | None = None  # the key epoch later rounds may reuse

    def collect(self, grid: Grid, plan: RoundPlan) -> Aggregate:
        start = time.perf_counter()
        cohort = [node.node_id for node in plan.cohort]
        labels = {node.node_id: node.label for node in plan.cohort}
        length = summed_length(len(plan.query_indices), plan.num_classes, plan.per_row_weights)
        noise_std = dp_noise_share_std(self.config, len(plan.query_indices), len(cohort))
        try:
            params = self.policy.validate(len(cohort), value_bound(self.config, noise_std))
        except ValueError as error:
            raise RoundFailed(
                f"round {plan.round}: secure aggregation impossible: {error}"
            ) from None
        server = self._server_for(plan.round, cohort, params, length)
        first = server.stage  # the stage the train message carries
        failed: dict[int, str] = {}
        stage_seconds: dict[str, float] = {}
        bytes_up = bytes_down = 0
        self._epoch = None  # reused only if this round finishes
        rekey = False  # a node lost its keys: the next round sets up a new epoch
        try:
            while (stage := server.stage) != "done":
                stage_start = time.perf_counter()
                messages = [
                    self._message(plan, stage, node_id, payload, first)
                    for node_id, payload in server.requests().items()
                ]
                bytes_down += sum(payload_bytes(message.content) for message in messages)
                timeout = plan.timeout if stage == first else self.stage_timeout
                payloads = {}
                for reply in grid.send_and_receive(messages, timeout=timeout):
                    node_id = reply.metadata.src_node_id
                    if reply.has_error():
                        reason = reply.error.reason
                        failed[node_id] = f"{stage}: client error: {error_summary(reason)}"
                        if NO_KEY_EPOCH in reason:
                            rekey = True
                        log.warning(
                            "round %d: %s (node %d) %s: client error: %s",
                            plan.round,
                            labels.get(node_id),
                            node_id,
                            stage,
                            reason,
                        )
                        continue
                    bytes_up += payload_bytes(reply.content)
                    try:
                        payloads[node_id] = records_to_payload(
                            reply.content[SECAGG_CONFIG], reply.content[SECAGG_ARRAYS]
                        )
                    except KeyError as error:
                        failed[node_id] = f"{stage}: malformed reply (missing {error})"
                server.receive(payloads)
                stage_seconds[stage] = time.perf_counter() - stage_start
        except SecAggAbort as error:
            raise RoundFailed(f"round {plan.round}: secure aggregation aborted: {error}") from None
        result = server.result()
        self._epoch = None if rekey else server
        for node_id in result.dropped:
            failed.setdefault(node_id, "dropped out (no reply before the timeout)")
        weighted_sum, total_weight = decode_aggregate(
            result.total, params, plan.num_classes, plan.per_row_weights
        )
        if np.max(total_weight) <= 0:
            raise RoundFailed(f"round {plan.round}: every decoded total weight is <= 0")
        return Aggregate(
            weighted_sum=weighted_sum,
            total_weight=total_weight,
            contributors=list(result.survivors),
            failed={node: reason for node, reason in failed.items() if node in result.dropped},
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            seconds=time.perf_counter() - start,
            stage_seconds=stage_seconds,
        )

    def _server_for(
        self, round_: int, cohort: list[int], params: SecAggParams, length: int
    ) -> SecAggServer:
        """The current key epoch moved to this round, or a new epoch if it cannot serve it."""
        epoch = self._epoch
        if epoch is not None and epoch.can_serve(round_, cohort, params, length):
            epoch.next_round(round_)
            return epoch
        log.info(
            "round %d: SecAgg+ key set-up for %d clients, covering up to %d rounds",
            round_,
            len(cohort),
            self.config.secagg_epoch_rounds,
        )
        return SecAggServer(
            round_,
            cohort,
            params,
            length,
            slots=self.config.secagg_epoch_rounds,
            graph_seed=secrets.randbits(63),
        )

    @staticmethod
    def _message(plan: RoundPlan, stage: str, node_id: int, payload: dict, first: str) -> Message:
        config, arrays = payload_to_records(payload)
        if stage == first:
            message = plan.train_message(node_id, {"secagg": True, "secagg_stage": stage})
            message.content[SECAGG_CONFIG] = config
            message.content[SECAGG_ARRAYS] = arrays
            return message
        return Message(
            RecordDict({SECAGG_CONFIG: config, SECAGG_ARRAYS: arrays}),
            dst_node_id=node_id,
            message_type=stage_message_type(stage),
            group_id=str(plan.round),
        )
