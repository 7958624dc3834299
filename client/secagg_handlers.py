"""Client side of secure aggregation over Flower messages: state in `context.state`, never logs.

Stage 1 (advertise) is answered from the `train` handler once the contribution exists; the
later stages have their own message types. Between messages the protocol state (which holds
private keys) lives only in `context.state`, because in deployment every message may run in a
fresh process.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.privacy import add_dp_noise_share
from client.secagg import SecAggClient
from common.config import RunConfig
from common.logs import get_logger
from common.protocol import (
    ROUND_RECORD,
    SECAGG_ARRAYS,
    SECAGG_CONFIG,
    Contribution,
    arrays_to_record,
    record_to_arrays,
)
from common.secagg import SecAggRefusal
from common.secure_codec import (
    client_policy,
    dp_noise_share_std,
    encode_contribution,
    payload_to_records,
    records_to_payload,
    value_bound,
)

log = get_logger(__name__)

STATE_PROTOCOL = "secagg_state"
STATE_CONTRIBUTION = "secagg_contribution"


def start_secure_round(
    msg: Message, context: Context, config: RunConfig, contribution: Contribution
) -> Message:
    """Add this client's DP noise share (if any), keep the contribution for stage 3 and answer
    the advertise stage."""
    protocol = SecAggClient(context.node_id, client_policy(config))
    reply = _respond(protocol, "advertise", msg)
    cohort_size = int(msg.content[ROUND_RECORD]["cohort_size"])
    noise_std = dp_noise_share_std(config, len(contribution.probs), cohort_size)
    contribution = add_dp_noise_share(contribution, noise_std)
    context.state[STATE_CONTRIBUTION] = arrays_to_record(
        {
            "probs": contribution.probs,
            "weight": np.array([contribution.weight]),
            "noise_std": np.array([noise_std]),
            **(
                {}
                if contribution.row_weights is None
                else {"row_weights": np.asarray(contribution.row_weights, dtype=np.float64)}
            ),
        }
    )
    context.state[STATE_PROTOCOL] = ConfigRecord(protocol.to_state())
    return _reply(msg, reply)


def continue_secure_round(msg: Message, context: Context, config: RunConfig, stage: str) -> Message:
    """Answer one later stage ('share-keys', 'masked-input' or 'unmask')."""
    if STATE_PROTOCOL not in context.state:
        raise SecAggRefusal(f"{stage} request without an advertise stage in this run")
    protocol = SecAggClient.from_state(dict(context.state[STATE_PROTOCOL]))
    vector = None
    if stage == "masked-input":
        kept = record_to_arrays(context.state[STATE_CONTRIBUTION])
        contribution = Contribution(
            probs=kept["probs"],
            weight=float(kept["weight"][0]),
            row_weights=kept.get("row_weights"),
        )
        bound = value_bound(config, float(kept["noise_std"][0]))
        vector = encode_contribution(contribution, protocol.round_params, bound)
    reply = _respond(protocol, stage, msg, vector)
    if protocol.stage == "done":  # nothing secret is needed any more
        del context.state[STATE_PROTOCOL]
        del context.state[STATE_CONTRIBUTION]
    else:
        context.state[STATE_PROTOCOL] = ConfigRecord(protocol.to_state())
    return _reply(msg, reply)


def _respond(
    protocol: SecAggClient, stage: str, msg: Message, vector: np.ndarray | None = None
) -> dict:
    request = records_to_payload(msg.content[SECAGG_CONFIG], msg.content[SECAGG_ARRAYS])
    try:
        return protocol.respond(stage, request, vector)
    except SecAggRefusal as refusal:
        log.warning("secure aggregation: refusing %s request: %s", stage, refusal)
        raise


def _reply(msg: Message, payload: dict) -> Message:
    config, arrays = payload_to_records(payload)
    return Message(RecordDict({SECAGG_CONFIG: config, SECAGG_ARRAYS: arrays}), reply_to=msg)
