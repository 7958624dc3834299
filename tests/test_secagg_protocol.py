"""Protocol tests: server and clients run in process, client state persisted between messages."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Mapping

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common import serde

from client.secagg import SecAggClient
from client.secagg_handlers import respond_logged
from common.protocol import SECAGG_ARRAYS, SECAGG_CONFIG, payload_bytes
from common.secagg import STAGES, SecAggAbort, SecAggParams, SecAggRefusal
from common.secagg.crypto import generate_keypair, mask_keys, public_key
from common.secagg.encoding import decode_sum, encode
from common.secagg.graph import neighbour_graph, share_points
from common.secagg.identity import NodeIdentity, keys_statement, survivors_statement
from common.secagg.packing import packed_size, unpack_words
from common.secagg.prg import expand
from common.secagg.shamir import combine, share_from_bytes
from common.secure_codec import payload_to_records
from server.secagg import SecAggResult, SecAggServer

RUN = 9001
ROUND = 11
BOUND = 1.0
LENGTH = 64
GRAPH_SEED = 2024
DEFAULTS = SecAggParams()


def make_cohort(n_clients: int, seed: int = 0) -> list[int]:
    """Distinct node ids over the whole uint64 range, as Flower assigns them."""
    rng = random.Random(seed)
    cohort: set[int] = set()
    while len(cohort) < n_clients:
        cohort.add(rng.getrandbits(64))
    return sorted(cohort)


def random_vectors(
    cohort: list[int], modulus_bits: int, length: int = LENGTH, round_: int = ROUND
) -> dict:
    """Uniform inputs mod 2^m, one per node, shape (L,) uint64 (new ones every round)."""
    rng = np.random.default_rng([len(cohort), round_])
    return {node: rng.integers(0, 2**modulus_bits, size=length, dtype=np.uint64) for node in cohort}


def plain_sum(vectors: Mapping[int, np.ndarray], nodes: Collection[int], modulus_bits: int):
    """Sum of the given nodes' inputs mod 2^m."""
    total = np.zeros_like(next(iter(vectors.values())))
    for node in nodes:
        total += vectors[node]
    return total & np.uint64(2**modulus_bits - 1)


class Deployment:
    """A server and its cohort; every client message starts from the persisted state dict."""

    def __init__(
        self,
        n_clients: int,
        policy: SecAggParams = DEFAULTS,
        params: SecAggParams | None = None,
        length: int = LENGTH,
        transport: Callable[[dict], dict] = dict,
        min_contributors: int = 0,
        slots: int = 1,
    ) -> None:
        self.transport = transport  # what every payload and state passes through on the wire
        self.cohort = make_cohort(n_clients)
        self.length = length
        self.params = params or policy.validate(n_clients, BOUND)
        self.server = SecAggServer(
            ROUND, self.cohort, self.params, length, slots=slots, graph_seed=GRAPH_SEED
        )
        self.replies: dict[tuple[int, str], dict[int, dict]] = {}  # (round, stage) -> replies
        self.identities = {node: NodeIdentity.generate() for node in self.cohort}
        self.roster = [identity.public_key for identity in self.identities.values()]
        self.states = {
            node: SecAggClient(
                node,
                policy,
                run=RUN,
                identity=self.identities[node],
                roster=self.roster,
                min_contributors=min_contributors,
            ).to_state()
            for node in self.cohort
        }
        self.vectors = random_vectors(self.cohort, self.params.modulus_bits, length)
        self.graph = neighbour_graph(self.cohort, self.params.neighbours, GRAPH_SEED)

    def client(self, node: int) -> SecAggClient:
        return SecAggClient.from_state(self.transport(self.states[node]))

    def ask(self, node: int, request: dict, stage: str = "") -> dict:
        """Deliver one request of ``stage`` (default: the server's) to a node as a fresh process
        would, and persist its state."""
        client = self.client(node)
        stage = stage or self.server.stage
        reply = client.respond(stage, self.transport(request), self.vectors[node])
        self.states[node] = client.to_state()
        return self.transport(reply)

    def step(self, silent: Collection[int] = ()) -> dict[int, dict]:
        """Run the current stage; ``silent`` nodes do not reply. Returns the replies."""
        stage, round_ = self.server.stage, self.round
        replies = {
            node: self.ask(node, request)
            for node, request in self.server.requests().items()
            if node not in silent
        }
        self.server.receive(replies)
        self.replies[round_, stage] = replies
        return replies

    @property
    def round(self) -> int:
        return self.server.round

    def next_round(self, round_: int) -> None:
        """Start the epoch's next round; every node gets a new input."""
        self.server.next_round(round_)
        self.vectors = random_vectors(self.cohort, self.params.modulus_bits, self.length, round_)

    def run_to(self, stage: str) -> None:
        """Run all stages before ``stage`` with every node replying."""
        while self.server.stage != stage:
            self.step()

    def finish(self, silent: Mapping[str, Collection[int]] | None = None) -> SecAggResult:
        silent = silent or {}
        while self.server.stage != "done":
            self.step(silent.get(self.server.stage, ()))
        return self.server.result()


# --- correctness ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_clients", [3, 10, 50])
def test_secure_sum_equals_plain_sum_mod_2_to_the_m(n_clients: int) -> None:
    deployment = Deployment(n_clients)

    result = deployment.finish()

    assert result.survivors == deployment.cohort and result.dropped == []
    assert result.total.dtype == np.uint64 and result.total.shape == (LENGTH,)
    expected = plain_sum(deployment.vectors, deployment.cohort, deployment.params.modulus_bits)
    np.testing.assert_array_equal(result.total, expected)


def test_decoded_mean_matches_float_mean_within_the_quantisation_bound() -> None:
    n_clients, rows, classes = 10, 50, 4
    deployment = Deployment(n_clients, length=rows * classes + 1)
    params = deployment.params
    rng = np.random.default_rng(3)
    floats = {}
    for node in deployment.cohort:
        probs = rng.dirichlet(np.ones(classes), size=rows)  # (Q, K)
        noise = rng.normal(0, 0.01, size=probs.shape)  # DP-like noise
        floats[node] = np.append((0.9 * probs + noise).ravel(), 1.0)  # (Q·K + 1,)
        floats[node][0] = -rng.uniform(0, 1)  # a negative element
        deployment.vectors[node] = encode(
            floats[node], params.frac_bits, params.modulus_bits, BOUND
        )

    result = deployment.finish()

    decoded = decode_sum(result.total, params.frac_bits, params.modulus_bits)
    mean = decoded[:-1] / decoded[-1]
    float_mean = np.mean([floats[node][:-1] for node in deployment.cohort], axis=0)
    assert decoded[-1] == n_clients
    assert np.max(np.abs(mean - float_mean)) <= 2.0 ** -(params.frac_bits + 1)
    assert mean[0] < 0  # negative values survive the modular sum


@pytest.mark.parametrize("stage", STAGES[:-1])
def test_dropouts_in_any_stage_keep_the_exact_survivor_sum(stage: str) -> None:
    deployment = Deployment(20)
    silent = deployment.cohort[2:5]

    result = deployment.finish({stage: silent})

    # A node that drops after delivering its masked input is in the sum.
    lost_inputs = [] if stage in ("consistency", "unmask") else silent
    survivors = [node for node in deployment.cohort if node not in lost_inputs]
    assert result.survivors == survivors
    assert result.dropped == sorted(lost_inputs)
    expected = plain_sum(deployment.vectors, survivors, deployment.params.modulus_bits)
    np.testing.assert_array_equal(result.total, expected)


def test_dropouts_in_every_stage_at_once_keep_the_exact_survivor_sum() -> None:
    deployment = Deployment(50)
    cohort = deployment.cohort
    silent = {stage: cohort[3 * i : 3 * i + 2] for i, stage in enumerate(STAGES[:-1])}

    result = deployment.finish(silent)

    lost = {node for stage in STAGES[:3] for node in silent[stage]}  # before the masked input
    assert result.survivors == [node for node in cohort if node not in lost]
    expected = plain_sum(deployment.vectors, result.survivors, deployment.params.modulus_bits)
    np.testing.assert_array_equal(result.total, expected)


def test_too_few_survivors_aborts() -> None:
    deployment = Deployment(5, policy=SecAggParams(min_cohort=3))

    with pytest.raises(SecAggAbort, match="fewer than min_cohort=3"):
        deployment.finish({"masked-input": deployment.cohort[:3]})


def test_too_few_shares_at_unmask_aborts() -> None:
    deployment = Deployment(10)  # all-to-all: k = 9, t = 6
    deployment.run_to("unmask")

    with pytest.raises(SecAggAbort, match=r"only 5 shares .* threshold is 6"):
        deployment.step(silent=deployment.cohort[:5])


@pytest.mark.parametrize("seed", [4, 12])
def test_nodes_that_lose_their_share_holders_are_dropped_early(seed: int, caplog) -> None:
    # Heavy random dropouts (30 % at share-keys) that leave some nodes with fewer than t - 1
    # alive neighbours; the seeds were picked so that the round can still finish.
    deployment = Deployment(100)
    silent = random.Random(seed).sample(deployment.cohort, 30)

    with caplog.at_level(logging.INFO, logger="server.secagg"):
        result = deployment.finish({"share-keys": silent})

    assert "fewer than t-1=10 alive neighbours" in caplog.text
    assert len(result.survivors) < 70
    expected = plain_sum(deployment.vectors, result.survivors, deployment.params.modulus_bits)
    np.testing.assert_array_equal(result.total, expected)


def through_flower_records(payload: dict) -> dict:
    """Serialise a payload as Flower ConfigRecord + ArrayRecord protobufs and read it back."""
    arrays = {key: Array(v) for key, v in payload.items() if isinstance(v, np.ndarray)}
    config = {key: v for key, v in payload.items() if not isinstance(v, np.ndarray)}
    records = RecordDict({"config": ConfigRecord(config), "arrays": ArrayRecord(arrays)})
    back = serde.recorddict_from_proto(serde.recorddict_to_proto(records))
    return {**back["config"], **{key: array.numpy() for key, array in back["arrays"].items()}}


def test_payloads_and_client_state_survive_flower_records() -> None:
    deployment = Deployment(12, transport=through_flower_records)

    result = deployment.finish({"masked-input": deployment.cohort[:2]})

    expected = plain_sum(deployment.vectors, result.survivors, deployment.params.modulus_bits)
    np.testing.assert_array_equal(result.total, expected)


# --- server robustness ----------------------------------------------------------------------


def test_malformed_reply_counts_as_a_dropout_with_a_logged_reason(caplog) -> None:
    deployment = Deployment(10)
    deployment.run_to("masked-input")
    bad = deployment.cohort[4]
    replies = {
        node: deployment.ask(node, req) for node, req in deployment.server.requests().items()
    }
    replies[bad] = {"masked": replies[bad]["masked"].astype(np.int64)}

    with caplog.at_level(logging.WARNING, logger="server.secagg"):
        deployment.server.receive(replies)
        result = deployment.finish()

    assert result.dropped == [bad]
    assert f"node {bad} dropped (malformed reply" in caplog.text
    expected = plain_sum(deployment.vectors, result.survivors, deployment.params.modulus_bits)
    np.testing.assert_array_equal(result.total, expected)


def test_a_wrong_share_aborts_instead_of_returning_a_wrong_sum() -> None:
    deployment = Deployment(10)
    deployment.run_to("unmask")
    replies = {
        node: deployment.ask(node, req) for node, req in deployment.server.requests().items()
    }
    liar = deployment.cohort[0]
    replies[liar]["b_shares"] = [bytes(66)] * len(replies[liar]["b_shares"])

    with pytest.raises(SecAggAbort, match="a released share is wrong"):
        deployment.server.receive(replies)


def test_server_validates_its_inputs_and_stage_order() -> None:
    params = SecAggParams().validate(10, BOUND)

    with pytest.raises(ValueError, match="must be resolved"):
        SecAggServer(1, make_cohort(10), SecAggParams(), LENGTH)
    with pytest.raises(ValueError, match="below min_cohort=3"):
        SecAggServer(1, make_cohort(2), params, LENGTH)
    deployment = Deployment(3)
    with pytest.raises(RuntimeError, match="no result yet"):
        deployment.server.result()
    deployment.finish()
    with pytest.raises(RuntimeError, match="done"):
        deployment.server.requests()


# --- client refusals ------------------------------------------------------------------------


def refusal(deployment: Deployment, node: int, request: dict, match: str, stage: str = "") -> None:
    """Assert the node refuses ``request`` and keeps its state."""
    before = deployment.states[node]
    with pytest.raises(SecAggRefusal, match=match):
        deployment.ask(node, request, stage)
    assert deployment.states[node] == before


def test_client_refuses_cohorts_below_its_minimum_or_without_it() -> None:
    deployment = Deployment(6, policy=SecAggParams(min_cohort=5))
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]

    refusal(deployment, node, {**request, "cohort": deployment.cohort[:4]}, "below min_cohort=5")
    refusal(deployment, node, {**request, "cohort": deployment.cohort[1:]}, "not in the announced")
    refusal(deployment, node, {**request, "neighbours": 2, "threshold": 2}, "weaker than this")
    refusal(deployment, node, {**request, "cohort": deployment.cohort[::-1]}, "sorted")


def test_client_refuses_keys_of_non_neighbours_or_fewer_than_t() -> None:
    deployment = Deployment(20)  # k = 14 < n - 1, so non-neighbours exist
    deployment.run_to("share-keys")
    requests = deployment.server.requests()
    node = deployment.cohort[0]
    stranger = next(v for v in deployment.cohort if v != node and v not in deployment.graph[node])
    donor = next(v for v in requests if stranger in requests[v]["ids"])
    at = requests[donor]["ids"].index(stranger)
    request = requests[node]
    forged = {
        key: [*value, requests[donor][key][at]] if isinstance(value, list) else value
        for key, value in request.items()
    }
    few = deployment.params.threshold - 2
    short = {
        key: value[:few] if isinstance(value, list) else value for key, value in request.items()
    }

    refusal(deployment, node, forged, "not neighbours")
    refusal(deployment, node, short, f"fewer than the threshold t={deployment.params.threshold}")


def test_client_refuses_a_low_order_key_even_when_a_roster_member_signed_it() -> None:
    deployment = Deployment(10)
    deployment.run_to("share-keys")
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    corrupt = request["ids"][0]  # a corrupt client signs a small-order key for itself
    low_order = bytes(32)
    statement = keys_statement(RUN, ROUND, corrupt, request["c_pks"][0], low_order)
    forged = {
        **request,
        "s_pks": [low_order, *request["s_pks"][1:]],
        "key_signatures": [
            deployment.identities[corrupt].sign(statement),
            *request["key_signatures"][1:],
        ],
    }

    refusal(deployment, node, forged, "bad public key")


# --- a malicious server: authenticated keys ------------------------------------------------


def test_client_refuses_keys_the_server_substituted() -> None:
    # The server swaps in its own X25519 keys for a neighbour: with them it could decrypt the
    # node's shares of b and s_sk and rebuild both secrets. Unsigned, signed by an identity off
    # the roster, or with the neighbour's signature from another round: all refused.
    deployment = Deployment(10)
    deployment.run_to("share-keys")
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    victim = request["ids"][0]
    server_c_pk, server_s_pk = generate_keypair()[1], generate_keypair()[1]
    substituted = {
        **request,
        "c_pks": [server_c_pk, *request["c_pks"][1:]],
        "s_pks": [server_s_pk, *request["s_pks"][1:]],
    }
    outsider = NodeIdentity.generate()  # the server's own identity, not on the roster
    self_signed = {
        **substituted,
        "identities": [outsider.public_key, *request["identities"][1:]],
        "key_signatures": [
            outsider.sign(keys_statement(RUN, ROUND, victim, server_c_pk, server_s_pk)),
            *request["key_signatures"][1:],
        ],
    }
    unsigned = {**request, "key_signatures": [b"", *request["key_signatures"][1:]]}
    other_round = deployment.identities[victim].sign(
        keys_statement(RUN, ROUND - 1, victim, request["c_pks"][0], request["s_pks"][0])
    )
    replayed = {**request, "key_signatures": [other_round, *request["key_signatures"][1:]]}
    twice = {**request, "identities": [request["identities"][1], *request["identities"][1:]]}

    refusal(deployment, node, substituted, rf"nodes \[{victim}\] are not signed")
    refusal(deployment, node, self_signed, rf"nodes \[{victim}\] sign with identities that are")
    refusal(deployment, node, unsigned, rf"nodes \[{victim}\] are not signed")
    refusal(deployment, node, replayed, rf"nodes \[{victim}\] are not signed")
    refusal(deployment, node, twice, "one roster identity is named for two nodes")
    assert deployment.ask(node, request)["ids"] == request["ids"]  # honest: answered


def test_a_refusal_is_logged_with_its_reason_and_no_secret(caplog) -> None:
    deployment = Deployment(5)
    deployment.run_to("share-keys")
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    unsigned = {**request, "key_signatures": [b""] * len(request["ids"])}

    with (
        caplog.at_level(logging.WARNING, logger="client.secagg_handlers"),
        pytest.raises(SecAggRefusal),
    ):
        respond_logged(deployment.client(node), "share-keys", unsigned)

    assert "refusing share-keys request" in caplog.text and "not signed" in caplog.text
    state = deployment.states[node]
    for secret in (state["c_sk"], *state["s_sks"], *state["self_mask_seeds"], state["identity_sk"]):
        assert secret.hex() not in caplog.text and repr(secret) not in caplog.text


def test_client_refuses_ciphertexts_with_wrong_associated_data() -> None:
    deployment = Deployment(10)
    deployment.run_to("masked-input")
    requests = deployment.server.requests()
    node, other = deployment.cohort[0], deployment.cohort[1]
    # Give the node a ciphertext that the same sender addressed to another receiver.
    sender = next(v for v in requests[node]["ids"] if v in requests[other]["ids"])
    forged = dict(requests[node])
    forged["blobs"] = list(forged["blobs"])
    forged["blobs"][forged["ids"].index(sender)] = requests[other]["blobs"][
        requests[other]["ids"].index(sender)
    ]

    refusal(deployment, node, forged, f"from node {sender} failed authentication")
    refusal(deployment, node, {**requests[node], "round": ROUND - 1}, "rounds must increase")
    refusal(deployment, node, {**requests[node], "slot": 1}, r"unused slots are \[0, 1\)")


def test_client_refuses_masked_input_with_fewer_than_t_share_holders() -> None:
    # A server that lists no (or too few) live neighbours would get an input with no pairwise
    # masks, whose self mask the neighbours' ordinary unmask replies then give away.
    deployment = Deployment(10)
    deployment.run_to("masked-input")
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    t = deployment.params.threshold
    few = t - 2  # with the node itself: t - 1 holders

    refusal(deployment, node, {**request, "ids": [], "blobs": []}, f"threshold t={t}")
    short = {**request, "ids": request["ids"][:few], "blobs": request["blobs"][:few]}
    refusal(deployment, node, short, "only 4 neighbours alive after share-keys")


def test_client_refuses_survivor_sets_that_leave_fewer_than_t_or_omit_it() -> None:
    deployment = Deployment(10)
    deployment.run_to("consistency")
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    t = deployment.params.threshold
    # "u survived, every other neighbour dropped": b_u from this node, s_u from others.
    lone = sorted([node, deployment.graph[node][0]])
    without = [v for v in request["survivors"] if v != node]

    refusal(deployment, node, {**request, "survivors": lone}, f"threshold t={t}")
    refusal(deployment, node, {**request, "survivors": without}, "not in U3")
    outsider = sorted([*request["survivors"], 12345])
    refusal(deployment, node, {**request, "survivors": outsider}, r"\[12345\] are not in the")
    assert len(deployment.ask(node, request)["signature"]) == 64  # honest: answered


def test_unmask_is_answered_once_and_never_without_consistency_signatures() -> None:
    deployment = Deployment(10)
    deployment.run_to("unmask")
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    t = deployment.params.threshold
    bare = {**request, "signers": [], "identities": [], "signatures": []}

    refusal(deployment, node, bare, rf"fewer than t={t} share holders")
    reply = deployment.ask(node, request)  # the honest request is answered once
    assert reply["b_ids"] == [*deployment.graph[node], node] and reply["sk_ids"] == []
    refusal(deployment, node, request, r"unexpected unmask request: .* stage 'done'")


# --- a malicious server: the consistency round ---------------------------------------------


def split_view(deployment: Deployment, victim: int) -> tuple[list[int], dict[int, bytes]]:
    """Show half of the cohort U3 and the other half U3 without ``victim``; collect signatures.

    Returns the half shown the full U3 (the victim among them) and every node's signature.
    """
    requests = deployment.server.requests()
    u3 = requests[victim]["survivors"]
    half = sorted({victim, *deployment.cohort[: len(deployment.cohort) // 2 - 1]})
    signatures = {}
    for node, request in requests.items():
        shown = u3 if node in half else [v for v in u3 if v != victim]
        signatures[node] = deployment.ask(node, {**request, "survivors": shown})["signature"]
    deployment.server.receive({node: {"signature": sig} for node, sig in signatures.items()})
    return half, signatures


def test_a_split_survivor_set_gets_at_most_one_secret_of_the_victim() -> None:
    # The server tells some holders "v survived" (they would give up b_v) and the others "v
    # dropped" (they would give up s_v). Each group signed a different set, so each can show
    # only its own group's signatures, and 2t > k + 1 holders means one group falls short of
    # t: the server gets at most one of v's secrets. Mixing the groups fails verification.
    deployment = Deployment(10)  # all-to-all: k = 9, t = 6, 10 holders per node
    deployment.run_to("consistency")
    victim = deployment.cohort[3]
    half, signatures = split_view(deployment, victim)
    others = [v for v in deployment.cohort if v not in half]
    requests = deployment.server.requests()
    t = deployment.params.threshold

    def signed_by(node: int, signers: list[int]) -> dict:
        return {
            **requests[node],
            "signers": signers,
            "identities": [deployment.identities[v].public_key for v in signers],
            "signatures": [signatures[v] for v in signers],
        }

    mixed = next(v for v in half if v != victim)
    refusal(deployment, mixed, requests[mixed], "do not verify over the U3")
    refusal(deployment, others[0], requests[others[0]], rf"nodes \[{victim}\] outside U3")
    b_shares = s_shares = 0
    for node in half:
        refusal(deployment, node, signed_by(node, half), rf"fewer than t={t} share holders")
    for node in others:
        reply = deployment.ask(node, signed_by(node, others))
        b_shares += victim in reply["b_ids"]
        s_shares += victim in reply["sk_ids"]

    assert len(half) < t <= len(others)
    assert (b_shares, s_shares) == (0, len(others))  # s_v only: b_v still masks v's input


@pytest.mark.parametrize(
    ("epoch", "slot"), [(ROUND - 1, 0), (ROUND, 1)], ids=["other-epoch", "other-slot"]
)
def test_a_consistency_signature_of_another_epoch_or_slot_is_refused(epoch: int, slot: int) -> None:
    # Prepare: the real unmask request, with one signer's signature replaced by that signer's
    # own valid signature over the same run, round, node and U3, but another epoch or slot.
    deployment = Deployment(10)
    deployment.run_to("unmask")
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    signer = next(v for v in request["signers"] if v != node)
    i = request["signers"].index(signer)
    u3 = deployment.states[node]["survivors"]
    statement = survivors_statement(RUN, epoch, slot, ROUND, signer, u3)
    replayed = {**request, "signatures": list(request["signatures"])}
    replayed["signatures"][i] = deployment.identities[signer].sign(statement)

    # Execute / Assert
    refusal(deployment, node, replayed, f"consistency signatures of nodes \\[{signer}\\]")


def test_consistency_signatures_must_come_from_the_roster_and_the_same_identities() -> None:
    deployment = Deployment(10)
    deployment.run_to("unmask")
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    signer, other = [v for v in request["signers"] if v != node][:2]
    i, j = request["signers"].index(signer), request["signers"].index(other)
    forger = NodeIdentity.generate()
    u3 = deployment.states[node]["survivors"]
    forged = {**request, "identities": list(request["identities"])}
    forged["signatures"] = list(request["signatures"])
    forged["identities"][i] = forger.public_key
    forged["signatures"][i] = forger.sign(survivors_statement(RUN, ROUND, 0, ROUND, signer, u3))
    swapped = {**request, "identities": list(request["identities"])}
    swapped["identities"][i], swapped["identities"][j] = (
        request["identities"][j],
        request["identities"][i],
    )

    refusal(deployment, node, forged, "not on the roster")
    refusal(deployment, node, swapped, "other identities than their keys were signed with")


def test_dp_sized_client_refuses_fewer_verified_contributors_than_its_noise_assumed() -> None:
    # A server that announces a large cohort shrinks each noise share; the client checks the
    # signed U3 and its verified signers against the count its share was sized for.
    deployment = Deployment(10, min_contributors=10)
    deployment.run_to("consistency")
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    fewer = [v for v in request["survivors"] if v != deployment.cohort[-1]]

    refusal(deployment, node, {**request, "survivors": fewer}, "fewer than the 10 this node's")
    deployment.step(silent=[deployment.cohort[-1]])  # 9 signers
    refusal(deployment, node, deployment.server.requests()[node], "only 9 verified signers")


# --- settings bound to the client's own config ----------------------------------------------


def test_client_refuses_settings_that_differ_from_its_own_config() -> None:
    policy = SecAggParams()
    deployment = Deployment(5)
    node = deployment.cohort[0]
    own_bits = policy.validate(5, BOUND).modulus_bits
    deployment.states[node] = SecAggClient(
        node,
        policy,
        run=RUN,
        identity=deployment.identities[node],
        roster=deployment.roster,
        expected_length=LENGTH,
        value_bound=BOUND,
    ).to_state()
    request = deployment.server.requests()[node]
    big = sorted({*make_cohort(6, seed=1), node})

    refusal(deployment, node, {**request, "frac_bits": 8}, "frac_bits=8, this client encodes")
    refusal(deployment, node, {**request, "modulus_bits": 64}, f"=64, .* give {own_bits}")
    refusal(deployment, node, {**request, "vector_length": LENGTH + 1}, f"has {LENGTH} elements")
    refusal(deployment, node, {**request, "cohort": big}, "larger than the roster")
    assert set(deployment.ask(node, request)) >= {"identity", "key_signature"}


def test_client_refuses_out_of_order_requests() -> None:
    client = SecAggClient(7, SecAggParams())

    with pytest.raises(SecAggRefusal, match=r"unexpected unmask request: .* stage 'advertise'"):
        client.unmask({"round": ROUND, "survivors": [], "dropped": []})
    with pytest.raises(SecAggRefusal, match="unexpected masked-input request"):
        client.masked_input({"round": ROUND, "ids": [], "blobs": []}, np.zeros(1, np.uint64))
    with pytest.raises(RuntimeError, match="after the advertise stage"):
        _ = client.round_params
    with pytest.raises(SecAggRefusal, match="unknown stage 'fit'"):
        client.respond("fit", {})
    with pytest.raises(ValueError, match="needs the encoded input vector"):
        client.respond("masked-input", {})


# --- client state and secrecy ---------------------------------------------------------------


def test_client_state_is_flat_and_round_trips_and_secrets_are_wiped() -> None:
    deployment = Deployment(10)
    node = deployment.cohort[0]
    deployment.run_to("share-keys")
    state = deployment.states[node]

    assert all(
        isinstance(value, (int, float, bytes))
        or (isinstance(value, list) and all(isinstance(v, (int, bytes)) for v in value))
        for value in state.values()
    )
    assert SecAggClient.from_state(state).to_state() == state
    with pytest.raises(ValueError, match="must have keys"):
        SecAggClient.from_state({**state, "extra": 1})
    with pytest.raises(ValueError, match="'cohort' must be"):
        SecAggClient.from_state({**state, "cohort": ["a"]})
    secrets = [state["c_sk"], *state["s_sks"], *state["self_mask_seeds"], state["identity_sk"]]
    shown = repr(deployment.client(node)) + repr(vars(deployment.client(node)))
    assert all(
        len(secret) == 32 and secret.hex() not in shown and repr(secret) not in shown
        for secret in secrets
    )

    deployment.run_to("unmask")
    state = deployment.states[node]
    assert state["c_sk"] == b"" and state["s_sks"] == [] and state["self_mask_seeds"] == [b""]
    assert state["peer_enc_keys"] == [] and state["peer_mask_keys"] == [b""] * len(
        state["held_ids"]
    )
    deployment.finish()
    state = deployment.states[node]
    assert state["stage"] == STAGES.index("done")
    assert state["own_b_shares"] == state["held_b_shares"] == state["held_sk_shares"] == []


def test_client_rejects_a_vector_of_the_wrong_shape_or_range() -> None:
    deployment = Deployment(3, params=SecAggParams().validate(3, BOUND))
    deployment.run_to("masked-input")
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    client = deployment.client(node)
    too_big = np.full(LENGTH, 2**deployment.params.modulus_bits, dtype=np.uint64)

    with pytest.raises(ValueError, match="shape"):
        client.masked_input(request, np.zeros(LENGTH - 1, dtype=np.uint64))
    with pytest.raises(ValueError, match="values must be <"):
        client.masked_input(request, too_big)


def test_masked_inputs_look_uniform_whatever_the_input() -> None:
    length = 4096
    params = SecAggParams(modulus_bits=64).validate(5, BOUND)
    deployment = Deployment(5, params=params, length=length)
    zero_node, max_node = deployment.cohort[:2]
    deployment.vectors[zero_node] = np.zeros(length, dtype=np.uint64)
    deployment.vectors[max_node] = np.full(length, 2**64 - 1, dtype=np.uint64)
    deployment.run_to("masked-input")

    replies = deployment.step()

    def chi_square(vector: np.ndarray) -> float:
        counts = np.bincount(vector.view(np.uint8), minlength=256)  # (256,)
        expected = vector.nbytes / 256
        return float(np.sum((counts - expected) ** 2 / expected))

    limit = 377.1  # chi-square quantile 1 - 1e-6 at 255 degrees of freedom
    assert chi_square(replies[zero_node]["masked"]) < limit
    assert chi_square(replies[max_node]["masked"]) < limit
    assert chi_square(deployment.vectors[zero_node]) > limit  # the statistic sees structure


# --- packed words on the wire -----------------------------------------------------------------


@pytest.mark.parametrize("modulus_bits", [13, 29, 61])
def test_packed_sum_at_odd_widths_equals_the_integer_sum_with_dropouts(modulus_bits: int) -> None:
    # 8 clients sum values < 2^(f+1) with f = m − 5, so m is exactly wide enough; masked inputs
    # travel packed at m bits through real Flower records, two nodes drop before masking.
    policy = SecAggParams(frac_bits=modulus_bits - 5, modulus_bits=modulus_bits)
    deployment = Deployment(8, policy=policy, transport=through_flower_records)

    result = deployment.finish(
        {"masked-input": deployment.cohort[:2], "unmask": [deployment.cohort[5]]}
    )

    assert deployment.params.modulus_bits == modulus_bits
    assert result.survivors == deployment.cohort[2:]
    expected = plain_sum(deployment.vectors, result.survivors, modulus_bits)
    np.testing.assert_array_equal(result.total, expected)


@pytest.mark.parametrize("modulus_bits", [13, 21, 29])
def test_masked_reply_bytes_are_the_packed_words_plus_a_constant(modulus_bits: int) -> None:
    # What a masked-input reply costs on the wire (Flower's own byte count): ⌈L·m/8⌉ bytes of
    # packed words plus 215 bytes whatever L: the array's 128-byte .npy header and its key
    # (134), and the 64-byte signature of whom the node masked with and its key (81).
    overheads = []
    for length in (64, 1001, 32_001):
        policy = SecAggParams(frac_bits=modulus_bits - 5, modulus_bits=modulus_bits)
        deployment = Deployment(3, policy=policy, length=length)
        deployment.run_to("masked-input")
        reply = deployment.step()[deployment.cohort[0]]
        config, arrays = payload_to_records(reply)
        content = RecordDict({SECAGG_CONFIG: config, SECAGG_ARRAYS: arrays})
        overheads.append(payload_bytes(content) - packed_size(length, modulus_bits))

    assert overheads == [215, 215, 215]


# --- key epochs: set-up once, then R rounds --------------------------------------------------


def test_an_epoch_sums_exactly_each_round_with_dropouts_in_every_stage_and_returns() -> None:
    # Round 1 (with set-up) loses nodes in all five stages; rounds 2-4 reuse the keys: a node
    # that dropped before its masked input in one round is asked again and counted in the next.
    deployment = Deployment(30, slots=4)
    cohort = deployment.cohort
    silent = {stage: cohort[3 * i : 3 * i + 2] for i, stage in enumerate(STAGES[:-1])}
    set_up_losses = {*silent["advertise"], *silent["share-keys"]}
    later = [
        {"masked-input": cohort[15:17], "consistency": cohort[17:18], "unmask": cohort[18:20]},
        {"masked-input": cohort[20:23]},
        {},
    ]

    results = [deployment.finish(silent)]
    for offset, round_silent in enumerate(later, start=1):
        deployment.next_round(ROUND + 2 * offset)  # rounds need only increase
        results.append(deployment.finish(round_silent))

    assert deployment.server.rounds_left == 0
    modulus_bits = deployment.params.modulus_bits
    for result, round_silent in zip(results, [silent, *later], strict=True):
        lost = set_up_losses | set(round_silent.get("masked-input", ()))
        assert result.survivors == [node for node in cohort if node not in lost]
    assert set(cohort[6:8]) <= set(results[1].survivors)  # dropped in round 1, back in round 2
    np.testing.assert_array_equal(
        results[-1].total, plain_sum(deployment.vectors, results[-1].survivors, modulus_bits)
    )
    for offset, result in enumerate(results):
        vectors = random_vectors(cohort, modulus_bits, LENGTH, ROUND + 2 * offset)
        np.testing.assert_array_equal(
            result.total, plain_sum(vectors, result.survivors, modulus_bits)
        )


def test_steady_state_rounds_carry_no_set_up_and_the_shares_only_once() -> None:
    deployment = Deployment(10, slots=3)
    deployment.finish()
    first = deployment.replies[ROUND, "masked-input"]
    deployment.next_round(ROUND + 1)
    requests = deployment.server.requests()

    assert deployment.server.stage == "masked-input"
    assert all(request["ids"] == [] and request["blobs"] == [] for request in requests.values())
    assert all(request["slot"] == 1 for request in requests.values())
    deployment.finish()
    second = deployment.replies[ROUND + 1, "masked-input"]
    assert all(not np.array_equal(first[v]["masked"], second[v]["masked"]) for v in first)


def test_a_dropped_nodes_revealed_secret_opens_none_of_its_other_rounds() -> None:
    # v drops in round 1: the server rebuilds s_sk_{v,0}. In round 2 v survives and the server
    # rebuilds b_{v,1}. Had both rounds used one mask key pair, v's round-2 input would now be
    # open; with a key pair per slot, removing what the server knows leaves it masked.
    deployment = Deployment(10, slots=2)
    victim = deployment.cohort[4]
    deployment.finish({"masked-input": [victim]})
    deployment.next_round(ROUND + 1)
    deployment.finish()
    modulus_bits = deployment.params.modulus_bits
    s_sk_0 = rebuild(deployment, ROUND, victim, "sk")  # as the server did in round 1
    b_1 = rebuild(deployment, ROUND + 1, victim, "b")  # and in round 2
    y = unpack_words(
        deployment.replies[ROUND + 1, "masked-input"][victim]["masked"], LENGTH, modulus_bits
    )
    adverts = deployment.replies[ROUND, "advertise"]
    peers = list(deployment.graph[victim])
    s_pks_0 = [adverts[v]["s_pks"][:32] for v in peers]
    guess = y - expand(b_1, LENGTH, modulus_bits)
    for peer, key in zip(peers, mask_keys(s_sk_0, s_pks_0, ROUND, victim, peers), strict=True):
        pad = expand(key, LENGTH, modulus_bits)
        guess = guess - pad if victim < peer else guess + pad
    guess &= np.uint64(2**modulus_bits - 1)

    assert not np.array_equal(guess, deployment.vectors[victim])
    assert public_key(s_sk_0) != adverts[victim]["s_pks"][32:]


def test_no_node_releases_both_shares_of_one_secret_slot_across_rounds() -> None:
    deployment = Deployment(12, slots=3)
    cohort = deployment.cohort
    drops = [[cohort[1]], [cohort[2], cohort[1]], [cohort[5]]]
    for offset, dropped in enumerate(drops):
        if offset:
            deployment.next_round(ROUND + offset)
        deployment.finish({"masked-input": dropped})

    for holder in cohort:
        released: dict[tuple[int, int], set[str]] = {}
        for offset in range(len(drops)):
            reply = deployment.replies[ROUND + offset, "unmask"].get(holder)
            for owner in (reply or {}).get("b_ids", []):
                released.setdefault((owner, offset), set()).add("b")
            for owner in (reply or {}).get("sk_ids", []):
                released.setdefault((owner, offset), set()).add("s_sk")
        assert all(len(kinds) == 1 for kinds in released.values())


def test_client_refuses_a_used_slot_a_stale_round_and_an_epoch_too_long() -> None:
    deployment = Deployment(6, slots=3)
    deployment.finish()
    node = deployment.cohort[0]
    deployment.next_round(ROUND + 1)
    request = deployment.server.requests()[node]

    refusal(deployment, node, {**request, "slot": 0}, r"unused slots are \[1, 3\)")
    refusal(deployment, node, {**request, "round": ROUND}, "rounds must increase")
    deployment.step()  # slot 1 masked
    replay = {**request, "round": ROUND + 2}
    refusal(deployment, node, replay, r"unused slots are \[2, 3\)", "masked-input")
    too_long = {**deployment_advertise(deployment, node), "round": ROUND + 3, "slots": 65}
    refusal(deployment, node, too_long, r"slots must be in \[1, 64\]", "advertise")
    stale = {**deployment_advertise(deployment, node), "round": ROUND + 1}
    refusal(deployment, node, stale, "already sent a masked input in round 12", "advertise")


def test_a_steady_round_cannot_shrink_the_masking_neighbours() -> None:
    # The |U2| >= t attack in steady state: the shares (and with them the set of neighbours a
    # node masks with) are fixed at set-up, so a later request listing no neighbours changes
    # nothing; the sum over the survivors is still exact and the input still masked.
    deployment = Deployment(10, slots=2)
    deployment.finish()
    deployment.next_round(ROUND + 1)
    node = deployment.cohort[0]
    request = deployment.server.requests()[node]
    assert request["ids"] == []
    reply = deployment.ask(node, request)
    masked = unpack_words(reply["masked"], LENGTH, deployment.params.modulus_bits)
    assert not np.array_equal(masked, deployment.vectors[node])


def test_an_advertise_starts_a_new_epoch_and_forgets_the_old_secrets() -> None:
    deployment = Deployment(6, slots=3)
    deployment.finish()
    node = deployment.cohort[0]
    old = deployment.states[node]
    request = {**deployment_advertise(deployment, node), "round": ROUND + 5}
    reply = deployment.ask(node, request, "advertise")
    state = deployment.states[node]

    assert state["stage"] == STAGES.index("share-keys") and state["epoch"] == ROUND + 5
    assert state["held_ids"] == [] and state["held_b_shares"] == []
    assert reply["s_pks"] != old  # fresh keys
    assert not set(state["self_mask_seeds"]) & set(old["self_mask_seeds"])


def deployment_advertise(deployment: Deployment, node: int) -> dict:
    """An advertise request for ``node`` as the deployment's server would build it."""
    return {
        "round": ROUND,
        "cohort": deployment.cohort,
        "graph_seed": GRAPH_SEED,
        "vector_length": deployment.length,
        "slots": 3,
        **deployment.params.to_config(),
    }


def rebuild(deployment: Deployment, round_: int, owner: int, kind: str) -> bytes:
    """``owner``'s secret of ``kind`` ("b" or "sk") from t of the shares released at the unmask
    of ``round_``, as the server rebuilds it."""
    points = share_points(deployment.cohort)
    xs, ys = [], []
    for holder, reply in deployment.replies[round_, "unmask"].items():
        shares = dict(zip(reply[f"{kind}_ids"], reply[f"{kind}_shares"], strict=True))
        if owner in shares:
            xs.append(points[holder])
            ys.append(share_from_bytes(shares[owner]))
    t = deployment.params.threshold
    return combine(xs[:t], ys[:t]).to_bytes(32, "big")


# --- split neighbourhoods: the server hands each node part of its neighbours' shares ----------


def _split_keeping_threshold(graph: dict[int, list[int]], threshold: int) -> set[int]:
    """A side A of a cut of ``graph`` in which every node keeps >= t - 1 graph neighbours on its
    own side, so every per-node count check passes when each node gets only its side's shares
    (found by seeded local search; the test's graph has one)."""
    nodes = sorted(graph)
    rng = random.Random(0)
    for _ in range(20_000):
        side = {v: rng.random() < 0.5 for v in nodes}
        for _ in range(50):
            short = [v for v in nodes if sum(side[w] == side[v] for w in graph[v]) < threshold - 1]
            if not short:
                break
            flipped = rng.choice(short)
            side[flipped] = not side[flipped]
        short = [v for v in nodes if sum(side[w] == side[v] for w in graph[v]) < threshold - 1]
        chosen = {v for v in nodes if side[v]}
        if not short and 3 <= len(chosen) <= len(nodes) - 3:
            return chosen
    raise AssertionError("no threshold-keeping cut found")


@pytest.mark.parametrize("min_contributors", [0, 20], ids=["no-dp", "dp"])
@pytest.mark.parametrize("relayed", ["true-sets", "claimed-sets"])
def test_a_split_neighbourhood_at_masked_input_opens_no_sub_group_sum(
    min_contributors: int, relayed: str
) -> None:
    # Prepare: 20 nodes, k = 6, t = 4. At the first masked input the server hands each node only
    # the ciphertexts of the neighbours on its side of a cut; every count check still passes.
    policy = SecAggParams(neighbours=6, threshold=4)
    deployment = Deployment(20, policy=policy, min_contributors=min_contributors)
    deployment.run_to("masked-input")
    side_a = _split_keeping_threshold(deployment.graph, deployment.params.threshold)
    side_b = set(deployment.cohort) - side_a
    same_side = {v: side_a if v in side_a else side_b for v in deployment.cohort}
    kept: dict[int, list[int]] = {}
    replies = {}
    for node, request in deployment.server.requests().items():
        keep = [i for i, v in enumerate(request["ids"]) if v in same_side[node]]
        kept[node] = [request["ids"][i] for i in keep]
        split = {**request, "ids": kept[node], "blobs": [request["blobs"][i] for i in keep]}
        replies[node] = deployment.ask(node, split)
    deployment.server.receive(replies)
    deployment.step()  # consistency: every node signs U3 = the whole cohort

    # Execute: unmask, with the masking sets the nodes really signed ("true-sets") or with the
    # full neighbourhoods the server claims ("claimed-sets").
    released, refused = {}, {}
    for node, request in deployment.server.requests().items():
        if relayed == "true-sets":
            owners = request["mask_owners"]
            request = {
                **request,
                "mask_sizes": [len(kept[v]) for v in owners],
                "mask_peers": [peer for v in owners for peer in kept[v]],
            }
        try:
            released[node] = deployment.ask(node, request)
        except SecAggRefusal as refusal:
            refused[node] = str(refusal)

    # Assert: no node on the cut gets its self mask released by anyone, and both sides hold
    # such a node, so neither side's sum (nor the whole one) can be unmasked.
    boundary = {v for v in deployment.cohort if set(deployment.graph[v]) - same_side[v]}
    opened = {owner for reply in released.values() for owner in reply["b_ids"]}
    assert boundary and not boundary & opened
    assert boundary & side_a and boundary - side_a
    assert boundary <= set(refused)
    expected = "does not verify" if relayed == "claimed-sets" else "did not mask with"
    assert any(expected in reason for reason in refused.values())
    assert any("never received" in reason for reason in refused.values())


def test_a_survivor_graph_in_two_parts_is_refused_at_unmask() -> None:
    # Prepare: the server claims U3 = two groups with no graph edge between them (it may drop
    # whom it likes, so it could drop a vertex cut and keep the parts apart).
    deployment = Deployment(20, policy=SecAggParams(neighbours=4, threshold=3))
    deployment.run_to("consistency")
    graph = deployment.graph
    node = deployment.cohort[0]
    near = {node, *graph[node]}
    far = next(v for v in deployment.cohort if v not in near and not set(graph[v]) & near)
    survivors = sorted(near | {far})
    deployment.ask(node, {"round": ROUND, "survivors": survivors}, "consistency")
    request = {"round": ROUND, "mask_owners": [], "mask_sizes": [], "mask_peers": []}

    # Execute / Assert: the rule the unmask stage applies before any share leaves.
    with pytest.raises(SecAggRefusal, match="restricted to U3 is disconnected"):
        deployment.client(node)._check_masking({**request, "mask_signatures": []})
