"""Client side of SecAgg+ over Flower messages: state in `context.state`, refusals logged.

The `train` handler answers the SecAgg+ request its message carries once the contribution
exists: advertise when the server starts a key epoch, masked-input in the epoch's later rounds;
the other stages have their own message types. Between messages, and between the rounds of a
key epoch, the protocol state (which holds private keys) lives only in `context.state`, because
in deployment every message may run in a fresh process.

Trust comes from the node, not the server: the node's identity key and the roster of identities
it accepts are read from its node config (`secagg-identity`, made on the node's own host by
`feddistill deploy node-identity`; `secagg-roster`, assembled by the operator from the nodes'
public files; `secagg-roster-sha256`, the roster fingerprint its members compared out of band,
which the node checks) or, when the node config names none (simulation), from the roster the
launcher made (`secagg_roster`, with `partition-N.key` beside it). Its DP noise share is sized
from the announced cohort and the node later refuses to unmask unless that many verified roster
members signed the survivor set; the ledger (`client.secagg_ledger`) refuses a second masked
input for a round or a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.privacy import add_dp_noise_share
from client.secagg import SecAggClient
from client.secagg_ledger import ContributionLedger, report_digest, run_scope
from common.config import RunConfig
from common.logs import get_logger
from common.protocol import (
    SECAGG_ARRAYS,
    SECAGG_CONFIG,
    Contribution,
    arrays_to_record,
    record_to_arrays,
)
from common.secagg import NO_KEY_EPOCH, SecAggRefusal
from common.secagg.identity import NodeIdentity, Roster, identity_file
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
STATE_LEDGER = "secagg_ledger"
LEDGER_FILE = "secagg-ledger.json"


def node_identity(
    config: RunConfig, node_config: Mapping[str, object]
) -> tuple[NodeIdentity, Roster, str]:
    """This node's identity, its roster and a name for its ledger file.

    Raises
    ------
    SecAggRefusal
        If no roster is configured or a file is missing or invalid (the message names the
        files, never their contents).
    """
    try:
        if "secagg-identity" in node_config or "secagg-roster" in node_config:
            if not ("secagg-identity" in node_config and "secagg-roster" in node_config):
                raise ValueError("node config needs both secagg-identity and secagg-roster")
            roster = Roster.load(Path(str(node_config["secagg-roster"])))
            identity = NodeIdentity.load(Path(str(node_config["secagg-identity"])))
            name = "node"
        elif config.secagg_roster:
            if "partition-id" not in node_config:
                raise ValueError("run-config secagg_roster needs node-config partition-id")
            name = f"partition-{int(node_config['partition-id'])}"
            roster_path = Path(config.secagg_roster)
            roster = Roster.load(roster_path)
            identity = NodeIdentity.load(identity_file(roster_path.parent, name))
        else:
            raise ValueError(
                "secure aggregation needs node identities: node-config secagg-identity and "
                "secagg-roster (deployment) or run-config secagg_roster (simulation)"
            )
        pinned = str(node_config.get("secagg-roster-sha256", "")).strip().lower()
        if pinned and roster.fingerprint() != pinned:
            raise ValueError(
                f"the roster {str(node_config.get('secagg-roster', config.secagg_roster))!r} "
                f"has fingerprint {roster.fingerprint()[:16]}…, but this node's operator pinned "
                f"{pinned[:16]}… (node config secagg-roster-sha256); refusing a roster its "
                "members did not agree on"
            )
    except ValueError as error:
        raise SecAggRefusal(str(error)) from error
    if identity.public_key not in roster:
        raise SecAggRefusal("this node's identity key is not on its roster")
    return identity, roster, name


def contribution_ledger(context: Context, config: RunConfig, name: str) -> ContributionLedger:
    """The node's ledger: under its `state-dir`, else the run's out_dir, else in memory."""
    if "state-dir" in context.node_config:
        return ContributionLedger(Path(str(context.node_config["state-dir"])) / LEDGER_FILE)
    if config.out_dir:
        return ContributionLedger(Path(config.out_dir) / "clients" / f"{name}-{LEDGER_FILE}")
    if STATE_LEDGER not in context.state:
        context.state[STATE_LEDGER] = ConfigRecord({})
    return ContributionLedger(None, context.state[STATE_LEDGER])


def start_secure_round(
    msg: Message,
    context: Context,
    config: RunConfig,
    contribution: Contribution,
    stage: str,
    training_round: int,
) -> Message:
    """Answer the SecAgg+ request a `train` message carries, once the contribution exists.

    ``stage`` is 'advertise' (a new key epoch: the contribution, with this client's DP noise
    share, waits in the node state for the masked-input stage) or 'masked-input' (a later round
    of the epoch: the masked contribution is the reply). The request must be for
    ``training_round``, the round this message trained: the ledger, the report digest and the
    teacher store then all key on one round number, so a server cannot have an earlier round's
    report re-made and summed again under a fresh SecAgg+ round. The ledger is checked first.
    """
    request = _request(msg)
    try:
        if stage not in ("advertise", "masked-input"):
            raise SecAggRefusal(
                f"a train message carries SecAgg+ stage {stage!r}; expected 'advertise' or "
                "'masked-input'"
            )
        identity, roster, name = node_identity(config, context.node_config)
        round_ = request.get("round")
        if not isinstance(round_, int):
            raise SecAggRefusal("malformed request: 'round' is needed")
        if round_ != training_round:
            raise SecAggRefusal(
                f"the SecAgg+ request is for round {round_} but this train message trains "
                f"round {training_round}; refusing a sum not bound to the round it aggregates"
            )
        scope = run_scope(config.to_dict())
        report = contribution.weighted_vector()  # (L,) float64, before noise
        digest = report_digest(identity.ledger_key(), round_, report.tobytes())
        contribution_ledger(context, config, name).check(scope, round_, digest)
        if stage == "masked-input" and STATE_PROTOCOL not in context.state:
            raise SecAggRefusal(
                f"masked-input request but this node {NO_KEY_EPOCH} (a restart loses it): "
                "the server must set up a new one"
            )
    except SecAggRefusal as refusal:
        log.warning("secure aggregation: refusing %s request: %s", stage, refusal)
        raise
    n_query = len(contribution.probs)
    if stage == "advertise":
        cohort = request.get("cohort")
        if not isinstance(cohort, list):
            raise SecAggRefusal("malformed request: 'cohort' is needed")
        # The noise share is sized for the announced cohort; the client then refuses to unmask
        # unless that many verified roster members signed the survivor set.
        noise_std = dp_noise_share_std(config, n_query, len(cohort))
        min_contributors = (config.dp_min_clients or len(cohort)) if noise_std > 0 else 0
        protocol = SecAggClient(
            context.node_id,
            client_policy(config),
            run=msg.metadata.run_id,
            identity=identity,
            roster=sorted(roster.keys),
            expected_length=len(report),
            value_bound=value_bound(config, noise_std),
            min_contributors=min_contributors,
        )
    else:
        protocol = SecAggClient.from_state(dict(context.state[STATE_PROTOCOL]))
        noise_std = dp_noise_share_std(config, n_query, len(protocol.cohort))
    noised = add_dp_noise_share(contribution, noise_std)
    context.state[STATE_CONTRIBUTION] = arrays_to_record(
        {
            "probs": noised.probs,
            "weight": np.array([noised.weight]),
            "noise_std": np.array([noise_std]),
            "report_digest": np.frombuffer(bytes.fromhex(digest), dtype=np.uint8),
            **(
                {}
                if noised.row_weights is None
                else {"row_weights": np.asarray(noised.row_weights, dtype=np.float64)}
            ),
        }
    )
    if stage == "advertise":
        reply = respond_logged(protocol, "advertise", request)
    else:
        reply = _masked_reply(protocol, context, config, request)
    _keep(context, protocol)
    return _reply(msg, reply)


def continue_secure_round(msg: Message, context: Context, config: RunConfig, stage: str) -> Message:
    """Answer one later stage ('share-keys', 'masked-input', 'consistency' or 'unmask')."""
    if STATE_PROTOCOL not in context.state:
        raise SecAggRefusal(f"{stage} request without an advertise stage in this run")
    protocol = SecAggClient.from_state(dict(context.state[STATE_PROTOCOL]))
    request = _request(msg)
    if stage == "masked-input":
        reply = _masked_reply(protocol, context, config, request)
    else:
        reply = respond_logged(protocol, stage, request)
    _keep(context, protocol)
    return _reply(msg, reply)


def _masked_reply(
    protocol: SecAggClient, context: Context, config: RunConfig, request: Mapping[str, object]
) -> dict:
    """Encode the kept contribution, mask it, and record the round in the ledger before the
    masked input leaves; the contribution is then dropped from the node state."""
    if STATE_CONTRIBUTION not in context.state:
        raise SecAggRefusal("masked-input request before this round's train message")
    kept = record_to_arrays(context.state[STATE_CONTRIBUTION])
    contribution = Contribution(
        probs=kept["probs"],
        weight=float(kept["weight"][0]),
        row_weights=kept.get("row_weights"),
    )
    bound = value_bound(config, float(kept["noise_std"][0]))
    vector = encode_contribution(contribution, protocol.round_params, bound)
    reply = respond_logged(protocol, "masked-input", request, vector)
    # Remembered before the masked input leaves: a crash after this line refuses a re-run.
    _, _, name = node_identity(config, context.node_config)
    ledger = contribution_ledger(context, config, name)
    digest = kept["report_digest"].tobytes().hex()
    try:
        ledger.record(run_scope(config.to_dict()), protocol.round_number, digest)
    except SecAggRefusal as refusal:
        log.warning("secure aggregation: refusing masked-input request: %s", refusal)
        raise
    del context.state[STATE_CONTRIBUTION]
    return reply


def _keep(context: Context, protocol: SecAggClient) -> None:
    """Persist the protocol state for the next message, or drop it once the epoch is used up."""
    if protocol.stage == "done":  # nothing secret is needed any more
        del context.state[STATE_PROTOCOL]
    else:
        context.state[STATE_PROTOCOL] = ConfigRecord(protocol.to_state())


def respond_logged(
    protocol: SecAggClient,
    stage: str,
    request: Mapping[str, object],
    vector: np.ndarray | None = None,
) -> dict:
    """Answer one stage; a refusal is logged with its reason (never a secret) and re-raised."""
    try:
        return protocol.respond(stage, request, vector)
    except SecAggRefusal as refusal:
        log.warning("secure aggregation: refusing %s request: %s", stage, refusal)
        raise


def _request(msg: Message) -> dict:
    return records_to_payload(msg.content[SECAGG_CONFIG], msg.content[SECAGG_ARRAYS])


def _reply(msg: Message, payload: dict) -> Message:
    config, arrays = payload_to_records(payload)
    return Message(RecordDict({SECAGG_CONFIG: config, SECAGG_ARRAYS: arrays}), reply_to=msg)
