"""The real Flower handlers of SecAgg+ against a scripted server: identities, replay, restarts.

Each node is the real `client.secagg_handlers` code with a Flower `Context` (its state dict and
node config) and real `Message` objects; a node "restarts" by getting a fresh Context with the
same node config, as a SuperNode process would after a crash. The server is `SecAggServer`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from client import app as client_app
from client.secagg_handlers import (
    STATE_PROTOCOL,
    continue_secure_round,
    node_identity,
    start_secure_round,
)
from common.config import RunConfig
from common.data import load_splits, public_hash
from common.protocol import (
    ARRAYS_RECORD,
    ROUND_RECORD,
    SECAGG_ARRAYS,
    SECAGG_CONFIG,
    Contribution,
    summed_length,
)
from common.secagg import SecAggRefusal
from common.secagg.identity import (
    NodeIdentity,
    Roster,
    create_node_identity,
    ensure_identities,
    load_public_identity,
)
from common.secure_codec import (
    client_policy,
    decode_aggregate,
    dp_noise_share_std,
    payload_to_records,
    records_to_payload,
    value_bound,
)
from server.aggregation import RoundPlan
from server.cohort import NodeInfo
from server.secagg import SecAggServer

RUN_ID = 77
ROWS, CLASSES = 6, 3
N_NODES = 5
NODE_IDS = [1000 + 17 * i for i in range(N_NODES)]  # partition i runs as node NODE_IDS[i]


def contribution(partition: int, round_: int = 1) -> Contribution:
    """A fixed report per partition and round: (ROWS, CLASSES) rows on the simplex, weight 1."""
    probs = np.random.default_rng([5, partition, round_]).dirichlet(np.ones(CLASSES), size=ROWS)
    return Contribution(probs=probs.astype(np.float32), weight=1.0)


class Nodes:
    """Five nodes with identities from one roster, their contexts, and a scripted server."""

    def __init__(self, tmp_path: Path, **config: object) -> None:
        names = [f"partition-{i}" for i in range(N_NODES)]
        roster = ensure_identities(tmp_path / "identities", names)
        self.config = RunConfig(secagg_roster=str(roster), out_dir=str(tmp_path / "run"), **config)
        self.contexts = {node: self.fresh_context(node) for node in NODE_IDS}

    def fresh_context(self, node: int) -> Context:
        """The node's context after a (re)start: empty state, the same node config."""
        partition = NODE_IDS.index(node)
        node_config = {"partition-id": partition, "num-partitions": N_NODES}
        return Context(RUN_ID, node, node_config, RecordDict(), self.config.to_dict())

    def message(self, node: int, round_: int, stage: str, payload: dict) -> Message:
        config, arrays = payload_to_records(payload)
        metadata = Metadata(
            run_id=RUN_ID,
            message_id=f"{round_}-{stage}-{node}",
            src_node_id=0,
            dst_node_id=node,
            reply_to_message_id="",
            group_id=str(round_),
            created_at=0.0,
            ttl=600.0,
            message_type="train",
        )
        content = RecordDict({SECAGG_CONFIG: config, SECAGG_ARRAYS: arrays})
        return Message(content, metadata=metadata)

    def answer(
        self, node: int, round_: int, stage: str, payload: dict, train: bool = False
    ) -> dict:
        """One node answers one stage through the real handler (the `train` one for advertise,
        or when ``train``); returns the reply payload."""
        msg = self.message(node, round_, stage, payload)
        context = self.contexts[node]
        if stage == "advertise" or train:
            report = contribution(NODE_IDS.index(node), round_)
            reply = start_secure_round(msg, context, self.config, report, stage, round_)
        else:
            reply = continue_secure_round(msg, context, self.config, stage)
        return records_to_payload(reply.content[SECAGG_CONFIG], reply.content[SECAGG_ARRAYS])

    def server(self, round_: int, cohort: list[int], slots: int = 1) -> SecAggServer:
        noise_std = dp_noise_share_std(self.config, ROWS, len(cohort))
        bound = value_bound(self.config, noise_std)
        params = client_policy(self.config).validate(len(cohort), bound)
        length = summed_length(ROWS, CLASSES, per_row_weights=False)
        return SecAggServer(round_, cohort, params, length, slots=slots, graph_seed=round_)

    def run(
        self,
        round_: int,
        cohort: list[int],
        until: str = "done",
        *,
        epoch: SecAggServer | None = None,
        slots: int = 1,
    ) -> SecAggServer:
        """Run a round's stages up to (not including) ``until``: a new key epoch of ``slots``
        rounds, or the next round of ``epoch``; a refusal counts as a dropout."""
        if epoch is None:
            server = self.server(round_, cohort, slots)
        else:
            server = epoch
            server.next_round(round_)
        first = server.stage
        while server.stage != until:
            stage = server.stage
            replies = {}
            for node, request in server.requests().items():
                try:
                    replies[node] = self.answer(node, round_, stage, request, stage == first)
                except SecAggRefusal:
                    continue  # an error reply: the server counts the node as dropped
            server.receive(replies)
        return server


def decoded_mean(nodes: Nodes, server: SecAggServer) -> np.ndarray:
    """(ROWS, CLASSES) mean of the secure sum."""
    params = client_policy(nodes.config).validate(N_NODES, value_bound(nodes.config))
    weighted_sum, total_weight = decode_aggregate(server.result().total, params, CLASSES)
    return weighted_sum / total_weight


def test_a_round_through_the_handlers_sums_exactly(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path)

    server = nodes.run(1, NODE_IDS)

    expected = np.mean([contribution(i).probs.astype(np.float64) for i in range(N_NODES)], 0)
    half_step = 2.0 ** -(client_policy(nodes.config).frac_bits + 1)  # fixed-point rounding
    np.testing.assert_allclose(decoded_mean(nodes, server), expected, rtol=0, atol=half_step)
    assert all(not context.state for context in nodes.contexts.values())  # nothing secret kept


def test_a_replayed_round_minus_one_client_is_refused_even_after_a_restart(
    tmp_path: Path, caplog
) -> None:
    # sum(C) - sum(C without u) = x_u when training is reproducible: the second run of round 3
    # must not happen, and a restarted node (fresh context) still remembers it on disk.
    nodes = Nodes(tmp_path)
    nodes.run(3, NODE_IDS)
    nodes.contexts = {node: nodes.fresh_context(node) for node in NODE_IDS}
    server = nodes.server(3, NODE_IDS[1:])
    node = NODE_IDS[1]

    with (
        caplog.at_level(logging.WARNING, logger="client.secagg_handlers"),
        pytest.raises(SecAggRefusal, match="already sent a masked input for round 3"),
    ):
        nodes.answer(node, 3, "advertise", server.requests()[node])

    assert "refusing advertise request: this node already sent" in caplog.text
    nodes.run(4, NODE_IDS[1:])  # the next round is answered


def test_a_new_run_of_the_identical_report_is_refused_by_a_node_with_a_state_dir(
    tmp_path: Path,
) -> None:
    # A server that starts another run whose config differs where training does not look
    # (here the timeout) meets the node's record of the identical report.
    nodes = Nodes(tmp_path)
    state_dir = tmp_path / "node-state"
    node = NODE_IDS[0]
    contexts = {
        v: Context(RUN_ID, v, {**c.node_config, "state-dir": str(state_dir / str(v))}, c.state, {})
        for v, c in nodes.contexts.items()
    }
    nodes.contexts = contexts
    nodes.run(2, NODE_IDS)
    nodes.config = nodes.config.replace(round_timeout=123.0)
    server = nodes.server(2, NODE_IDS)

    with pytest.raises(SecAggRefusal, match=r"identical report for round 2 \(in another run"):
        nodes.answer(node, 2, "advertise", server.requests()[node])


def test_a_round_interrupted_before_any_masked_input_reruns_after_a_restart(
    tmp_path: Path,
) -> None:
    # Resume: the server crashed after share-keys; the nodes restarted; round 5 runs again.
    nodes = Nodes(tmp_path)
    nodes.run(5, NODE_IDS, until="masked-input")
    nodes.contexts = {node: nodes.fresh_context(node) for node in NODE_IDS}

    server = nodes.run(5, NODE_IDS)

    assert server.result().survivors == NODE_IDS


def test_a_node_without_identities_refuses_with_a_logged_reason(tmp_path: Path, caplog) -> None:
    nodes = Nodes(tmp_path)
    nodes.config = nodes.config.replace(secagg_roster="")
    server = nodes.server(1, NODE_IDS)
    node = NODE_IDS[0]

    with (
        caplog.at_level(logging.WARNING, logger="client.secagg_handlers"),
        pytest.raises(SecAggRefusal, match="needs node identities"),
    ):
        nodes.answer(node, 1, "advertise", server.requests()[node])
    assert "refusing advertise request: secure aggregation needs node identities" in caplog.text


def test_dp_noise_share_is_sized_from_the_cohort_not_a_server_number(tmp_path: Path) -> None:
    # With DP on, each node's share assumes the announced cohort; U3 and its verified signers
    # must then reach that count, so a node that drops before the consistency stage makes
    # the others refuse to unmask rather than release an under-noised sum.
    nodes = Nodes(tmp_path, dp_noise_multiplier=1.0, dp_delta=1e-5)
    server = nodes.run(6, NODE_IDS, until="consistency")
    node = NODE_IDS[0]
    request = server.requests()[node]
    fewer = [v for v in request["survivors"] if v != NODE_IDS[-1]]

    with pytest.raises(SecAggRefusal, match=f"fewer than the {N_NODES} this node's DP"):
        nodes.answer(node, 6, "consistency", {**request, "survivors": fewer})


def test_an_epoch_through_the_handlers_sums_exactly_every_round(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path)
    half_step = 2.0 ** -(client_policy(nodes.config).frac_bits + 1)
    server = nodes.run(1, NODE_IDS, slots=3)
    for round_ in (1, 2, 3):
        if round_ > 1:
            assert all(set(c.state) == {STATE_PROTOCOL} for c in nodes.contexts.values())
            nodes.run(round_, NODE_IDS, epoch=server)
        expected = np.mean(
            [contribution(i, round_).probs.astype(np.float64) for i in range(N_NODES)], 0
        )
        np.testing.assert_allclose(decoded_mean(nodes, server), expected, rtol=0, atol=half_step)
    assert server.rounds_left == 0
    assert all(not context.state for context in nodes.contexts.values())  # epoch forgotten


def test_a_node_restarted_mid_epoch_refuses_the_replay_and_drops_without_its_keys(
    tmp_path: Path, caplog
) -> None:
    # A restart loses the node's key epoch but not its ledger: a replay of round 2 is refused,
    # and so is round 3's masked-input request, which the server counts as a dropout; the
    # others' sum stays exact and the next epoch takes the node back.
    nodes = Nodes(tmp_path)
    server = nodes.run(1, NODE_IDS, slots=3)
    nodes.run(2, NODE_IDS, epoch=server)
    restarted = NODE_IDS[2]
    nodes.contexts[restarted] = nodes.fresh_context(restarted)
    replay = nodes.server(2, [v for v in NODE_IDS if v != NODE_IDS[0]])

    with pytest.raises(SecAggRefusal, match="already sent a masked input for round 2"):
        nodes.answer(restarted, 2, "advertise", replay.requests()[restarted])
    with caplog.at_level(logging.WARNING, logger="client.secagg_handlers"):
        nodes.run(3, NODE_IDS, epoch=server)

    assert "refusing masked-input request" in caplog.text and "no key epoch" in caplog.text
    others = [v for v in NODE_IDS if v != restarted]
    assert server.result().survivors == others
    expected = np.mean([contribution(i, 3).probs.astype(np.float64) for i in (0, 1, 3, 4)], 0)
    half_step = 2.0 ** -(client_policy(nodes.config).frac_bits + 1)
    np.testing.assert_allclose(decoded_mean(nodes, server), expected, rtol=0, atol=half_step)
    assert nodes.run(4, NODE_IDS, slots=3).result().survivors == NODE_IDS


def test_a_train_message_for_an_earlier_round_cannot_open_a_later_secure_sum(
    tmp_path: Path, caplog
) -> None:
    # Prepare: the real `train` handler of partition 0 on a tiny federation. The server asks it
    # to re-train round 1 (the teacher store would reproduce round 1's report exactly) while its
    # SecAgg+ request opens round 2, whose ledger slot is still free.
    nodes = Nodes(
        tmp_path,
        num_samples=1200,
        num_clients=N_NODES,
        local_epochs=1,
        teacher_models="mlp-s",
        student_model="mlp-s",
        data_dir=str(tmp_path / "data"),
        device="cpu",
    )
    splits = load_splits(nodes.config)
    cohort = [
        NodeInfo(node, NODE_IDS.index(node), f"partition-{i}") for i, node in enumerate(NODE_IDS)
    ]
    plan = RoundPlan(
        round=1,
        cohort=cohort,
        query_indices=np.arange(len(splits.public_x)),
        n_public=len(splits.public_x),
        num_classes=splits.num_classes,
        label_bits=nodes.config.label_bits,
        public_hash=public_hash(splits.public_x),
        min_clients=2,
        timeout=60.0,
    )
    server = nodes.server(2, NODE_IDS)
    node = NODE_IDS[0]
    message = nodes.message(node, 1, "advertise", server.requests()[node])
    train_content = plan.train_content({"secagg": True, "secagg_stage": "advertise"})
    for name in (ROUND_RECORD, ARRAYS_RECORD):
        message.content[name] = train_content[name]

    # Execute / Assert
    with caplog.at_level(logging.WARNING), pytest.raises(SecAggRefusal) as refusal:
        client_app.train(message, nodes.contexts[node])
    assert str(refusal.value) == (
        "the SecAgg+ request is for round 2 but this train message trains round 1; refusing a "
        "sum not bound to the round it aggregates"
    )
    assert "refusing advertise request" in caplog.text
    assert STATE_PROTOCOL not in nodes.contexts[node].state


def test_a_node_made_identity_and_a_pinned_roster_fingerprint_gate_secure_rounds(
    tmp_path: Path, caplog
) -> None:
    # Prepare: three nodes each make their identity "on their host"; the operator builds the
    # roster from the public files only; a server then hands node 0 a roster with a sybil added.
    made = {
        f"site-{i}": create_node_identity(tmp_path / f"site-{i}", f"site-{i}") for i in range(3)
    }
    roster = Roster.from_public_files([public for _, public in made.values()])
    roster.save(tmp_path / "roster.json")
    sybil = dict(roster.members) | {"sybil": NodeIdentity.generate().public_key}
    Roster(sybil).save(tmp_path / "edited-roster.json")
    private, public = made["site-0"]
    node_config = {
        "secagg-identity": str(private),
        "secagg-roster": str(tmp_path / "roster.json"),
        "secagg-roster-sha256": roster.fingerprint(),
    }

    # Execute
    identity, accepted, _ = node_identity(RunConfig(), node_config)
    edited = {**node_config, "secagg-roster": str(tmp_path / "edited-roster.json")}
    with pytest.raises(SecAggRefusal) as refusal:
        node_identity(RunConfig(), edited)

    # Assert
    assert identity.public_key == load_public_identity(public)[1]
    assert accepted.fingerprint() == roster.fingerprint()
    assert "pinned" in str(refusal.value) and roster.fingerprint()[:16] in str(refusal.value)
    assert "edited-roster.json" in str(refusal.value)
    assert private.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in public.read_text()
    with pytest.raises(ValueError, match="refusing to overwrite"):
        create_node_identity(tmp_path / "site-0", "site-0")


def test_a_node_refuses_a_describe_message_without_the_class_count(tmp_path: Path) -> None:
    nodes = Nodes(tmp_path, data_dir=str(tmp_path / "data"), num_samples=1200)
    node = NODE_IDS[0]
    message = nodes.message(node, 1, "describe", {})
    message.content[ROUND_RECORD] = ConfigRecord({"public_hash": "0" * 64})

    with pytest.raises(ValueError, match="names no num_classes: the ServerApp runs another"):
        client_app.describe(message, nodes.contexts[node])
