"""Server side of SecAgg+ (Bell et al. 2020): drives one key epoch (set-up, then R rounds) and
recovers each round's survivors' sum.

The payloads of each stage are described in ``client/secagg.py``. Alive sets shrink stage by
stage: U1 (answered advertise) ⊇ U2 (answered share-keys) ⊇ U3 (delivered a masked input) ⊇
U4 (signed U3 in the consistency stage). U2 is fixed for the epoch: every later round asks all
of U2 for a masked input again, so a node that dropped in one round is back in the next. A node
that does not answer, or answers with a malformed reply, has dropped. After stages 1 and 2 the
server also drops any node with fewer than t - 1 alive neighbours: t holders of its secrets would
not exist, so its input could never be unmasked and the round would fail later. After the
consistency stage it aborts if some node has fewer than t signers among its share holders,
because honest holders then refuse to unmask.

The server relays identities and signatures but does not need to verify them: the clients do.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from common.secagg import MAX_SLOTS, STAGES, SecAggAbort, SecAggParams
from common.secagg.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    UINT64_MAX,
    commit,
    mask_keys,
    public_key,
)
from common.secagg.graph import neighbour_graph, share_points
from common.secagg.identity import IDENTITY_BYTES, SIGNATURE_BYTES
from common.secagg.packing import unpack_words
from common.secagg.prg import expand
from common.secagg.shamir import SHARE_BYTES, combine, share_from_bytes

logger = logging.getLogger(__name__)

Payload = dict[str, object]


@dataclass(frozen=True)
class SecAggResult:
    """Outcome of a finished round.

    Attributes
    ----------
    total : np.ndarray
        Sum of the survivors' encoded inputs mod 2^m, shape (L,), dtype uint64.
    survivors : list[int]
        Nodes whose inputs are in ``total`` (sorted).
    dropped : list[int]
        The rest of the cohort (sorted).
    """

    total: np.ndarray
    survivors: list[int]
    dropped: list[int]


@dataclass(frozen=True)
class _Advert:
    """What a node published in stage 1."""

    c_pk: bytes
    s_pks: bytes  # one 32-byte mask key per slot
    commitments: bytes  # one 32-byte commitment per slot
    identity: bytes
    key_signature: bytes


@dataclass(frozen=True)
class _Unmasked:
    """Shares one node released in stage 4, as field elements keyed by the secret's owner."""

    b_shares: dict[int, int]
    sk_shares: dict[int, int]


def _blob(reply: Mapping[str, object], key: str, size: int) -> bytes:
    """Read a byte string of exactly ``size`` bytes."""
    value = reply.get(key)
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{key!r} must be {size} bytes")
    return value


def _blob_list(reply: Mapping[str, object], key: str, count: int, size: int) -> list[bytes]:
    """Read a list of ``count`` byte strings of ``size`` bytes each."""
    value = reply.get(key)
    if not isinstance(value, list) or len(value) != count:
        raise ValueError(f"{key!r} must be a list of {count} byte strings")
    if not all(isinstance(v, bytes) and len(v) == size for v in value):
        raise ValueError(f"{key!r} must hold {size}-byte strings")
    return value


def _optional_blob(reply: Mapping[str, object], key: str, size: int) -> bytes:
    """Read a byte string of ``size`` bytes, or an empty one (an unauthenticated client)."""
    value = reply.get(key)
    if not isinstance(value, bytes) or len(value) not in (0, size):
        raise ValueError(f"{key!r} must be empty or {size} bytes")
    return value


def _id_list(reply: Mapping[str, object], key: str, expected: list[int]) -> list[int]:
    """Read a list of node ids that must be exactly ``expected``, in any order."""
    value = reply.get(key)
    if not isinstance(value, list) or len(value) != len(expected) or set(value) != set(expected):
        raise ValueError(f"{key!r} must list exactly the nodes {sorted(expected)}")
    return value


class SecAggServer:
    """Server side of one key epoch of secure aggregation: set-up, then up to ``slots`` rounds.

    Call :meth:`requests` and :meth:`receive` once per stage (see :attr:`stage`) until the
    stage is ``'done'``, then :meth:`result`; while :attr:`rounds_left` is positive,
    :meth:`next_round` starts the next round at its masked-input stage. :meth:`receive` raises
    :class:`SecAggAbort` as soon as a round cannot produce a correct sum over at least
    ``min_cohort`` clients; the epoch is then finished.

    Parameters
    ----------
    round : int
        Round id of the set-up, unsigned 64-bit; bound into every key and ciphertext.
    cohort : list[int]
        Distinct node ids taking part.
    params : SecAggParams
        Resolved settings (``SecAggParams.validate(len(cohort), value_bound)``).
    vector_length : int
        L, the number of uint64 elements of every input.
    slots : int
        R, the rounds the epoch's keys cover (1: set-up every round).
    graph_seed : int or None
        Unsigned 64-bit seed of the neighbour graph; random when None.
    """

    def __init__(
        self,
        round: int,
        cohort: list[int],
        params: SecAggParams,
        vector_length: int,
        *,
        slots: int = 1,
        graph_seed: int | None = None,
    ) -> None:
        graph_seed = secrets.randbits(64) if graph_seed is None else graph_seed
        for name, value in (("round", round), ("graph_seed", graph_seed)):
            if not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
                raise ValueError(f"{name} must be an integer in [0, 2^64), got {value!r}")
        if len(set(cohort)) != len(cohort):
            raise ValueError("cohort lists a node twice")
        if vector_length < 1:
            raise ValueError(f"vector_length must be >= 1, got {vector_length}")
        if not isinstance(slots, int) or not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be an integer in [1, {MAX_SLOTS}], got {slots!r}")
        params.check_resolved(len(cohort))
        self._epoch = round
        self._round = round
        self._slots = slots
        self._slot = 0
        self._aborted = False
        self._members: list[int] = []  # U2 after pruning: who masks in every round
        self._delivered: set[int] = set()  # nodes that have their neighbours' shares
        self._masking_peers: dict[int, list[int]] = {}  # node -> the neighbours it masks with
        self._masking_signatures: dict[int, bytes] = {}  # node -> its signature, this round
        self._cohort = sorted(cohort)
        self._params = params
        self._length = vector_length
        self._graph_seed = graph_seed
        self._neighbours = neighbour_graph(self._cohort, params.neighbours, self._graph_seed)
        self._points = share_points(self._cohort)
        self._stage = 0
        self._contacted: dict[str, list[int]] = {STAGES[0]: self._cohort}
        self._adverts: dict[int, _Advert] = {}
        self._inbox: dict[int, dict[int, bytes]] = {}  # receiver -> sender -> ciphertext
        self._consistency: dict[int, bytes] = {}  # signer -> signature of U3
        self._masked_sum = np.zeros(vector_length, dtype=np.uint64)  # (L,)
        self._result: SecAggResult | None = None
        # Per stage: build one node's request, parse one node's reply (ValueError if malformed),
        # and take all parsed replies, returning the nodes still alive.
        self._handlers: dict[str, tuple[Callable, Callable, Callable]] = {
            "advertise": (self._advertise_request, self._parse_advertise, self._accept_advertise),
            "share-keys": (
                self._share_keys_request,
                self._parse_share_keys,
                self._accept_share_keys,
            ),
            "masked-input": (
                self._masked_input_request,
                self._parse_masked_input,
                self._accept_masked_input,
            ),
            "consistency": (
                self._consistency_request,
                self._parse_consistency,
                self._accept_consistency,
            ),
            "unmask": (self._unmask_request, self._parse_unmask, self._accept_unmask),
        }

    def __repr__(self) -> str:
        return (
            f"SecAggServer(round={self._round}, cohort={len(self._cohort)} nodes, "
            f"slot={self._slot}/{self._slots}, stage={self.stage!r})"
        )

    @property
    def stage(self) -> str:
        """Current stage: one of :data:`common.secagg.STAGES`."""
        return STAGES[self._stage]

    @property
    def round(self) -> int:
        """Id of the round in progress (the set-up's round until :meth:`next_round`)."""
        return self._round

    @property
    def rounds_left(self) -> int:
        """Rounds this epoch can still run with :meth:`next_round` (0 after an abort)."""
        if self._aborted or self._result is None:
            return 0
        return self._slots - self._slot - 1

    def can_serve(
        self, round: int, cohort: list[int], params: SecAggParams, vector_length: int
    ) -> bool:
        """Whether :meth:`next_round` may run ``round`` for this cohort, settings and length:
        a round is left, the cohort is exactly the set-up's survivors (U2), nothing else
        changed and the round number increases."""
        return (
            self.rounds_left > 0
            and self._members == sorted(cohort)
            and self._params == params
            and self._length == vector_length
            and round > self._round
        )

    def next_round(self, round: int) -> None:
        """Start the epoch's next round (slot) at its masked-input stage.

        Parameters
        ----------
        round : int
            The new round id; must exceed the previous one.

        Raises
        ------
        RuntimeError
            If the current round is not done, the epoch aborted, or every slot is used.
        ValueError
            If ``round`` does not increase.
        """
        if self.rounds_left < 1:
            raise RuntimeError("no round left in this key epoch: start a new epoch")
        if not isinstance(round, int) or not self._round < round <= UINT64_MAX:
            raise ValueError(f"round must be an integer in ({self._round}, 2^64), got {round!r}")
        self._round, self._slot = round, self._slot + 1
        self._stage = STAGES.index("masked-input")
        self._contacted = {"masked-input": list(self._members)}
        self._consistency = {}
        self._masked_sum = np.zeros(self._length, dtype=np.uint64)  # (L,)
        self._result = None

    def requests(self) -> dict[int, Payload]:
        """Requests of the current stage, one per node to contact.

        Returns
        -------
        dict[int, dict]
            Node id -> payload (flat dict of ints, bytes and lists of them).
        """
        build, _, _ = self._handlers[self._checked_stage()]
        return {node: build(node) for node in self._contacted[self.stage]}

    def receive(self, replies: Mapping[int, Mapping[str, object]]) -> None:
        """Take the replies of the current stage and move to the next one.

        Parameters
        ----------
        replies : Mapping[int, Mapping[str, object]]
            Node id -> reply; contacted nodes missing here have dropped.

        Raises
        ------
        SecAggAbort
            If fewer than ``min_cohort`` nodes remain or a needed secret cannot be recovered.
            The round is then over; use a new server object for a new round.
        """
        stage = self._checked_stage()
        _, parse, accept = self._handlers[stage]
        contacted = self._contacted[stage]
        strangers = sorted(set(replies) - set(contacted))
        if strangers:
            logger.warning(
                "round %d %s: ignoring uncontacted nodes %s", self._round, stage, strangers
            )
        parsed = {}
        for node in contacted:
            if node not in replies:
                logger.info("round %d %s: node %d dropped (no reply)", self._round, stage, node)
                continue
            try:
                parsed[node] = parse(node, replies[node])
            except ValueError as error:
                logger.warning(
                    "round %d %s: node %d dropped (malformed reply: %s)",
                    self._round,
                    stage,
                    node,
                    error,
                )
        try:
            alive = accept(parsed)
        except SecAggAbort:
            self._aborted = True
            raise
        if len(alive) < self._params.min_cohort:
            self._aborted = True
            raise SecAggAbort(
                f"round {self._round}: {len(alive)} nodes left after {stage}, "
                f"fewer than min_cohort={self._params.min_cohort}"
            )
        self._stage += 1
        self._contacted[self.stage] = alive

    def result(self) -> SecAggResult:
        """Sum of the survivors' inputs, once the unmask stage is received.

        Raises
        ------
        RuntimeError
            Before the round is done.
        """
        if self._result is None:
            raise RuntimeError(f"no result yet: the round is at stage {self.stage!r}")
        return self._result

    def _checked_stage(self) -> str:
        """Current stage name; RuntimeError once done."""
        if self.stage == "done":
            raise RuntimeError("the round is done; no more requests or replies")
        return self.stage

    def _alive_neighbours(self, node: int, stage: str) -> list[int]:
        """Neighbours of ``node`` that were contacted in ``stage`` (sorted)."""
        alive = set(self._contacted[stage])
        return [peer for peer in self._neighbours[node] if peer in alive]

    def _prune(self, alive: list[int]) -> list[int]:
        """Drop, until none is left, nodes whose alive neighbours plus themselves are < t."""
        alive_set = set(alive)
        needed = self._params.threshold - 1
        while short := [
            u for u in alive_set if len(alive_set.intersection(self._neighbours[u])) < needed
        ]:
            logger.info(
                "round %d: dropping nodes %s with fewer than t-1=%d alive neighbours",
                self._round,
                sorted(short),
                needed,
            )
            alive_set.difference_update(short)
        return sorted(alive_set)

    def _advertise_request(self, node: int) -> Payload:
        return {
            "round": self._round,
            "cohort": list(self._cohort),
            "graph_seed": self._graph_seed,
            "vector_length": self._length,
            "slots": self._slots,
            **self._params.to_config(),
        }

    def _parse_advertise(self, node: int, reply: Mapping[str, object]) -> _Advert:
        return _Advert(
            c_pk=_blob(reply, "c_pk", KEY_BYTES),
            s_pks=_blob(reply, "s_pks", KEY_BYTES * self._slots),
            commitments=_blob(reply, "commitments", KEY_BYTES * self._slots),
            identity=_optional_blob(reply, "identity", IDENTITY_BYTES),
            key_signature=_optional_blob(reply, "key_signature", SIGNATURE_BYTES),
        )

    def _accept_advertise(self, adverts: dict[int, _Advert]) -> list[int]:
        self._adverts = adverts
        return self._prune(sorted(adverts))

    def _share_keys_request(self, node: int) -> Payload:
        peers = self._alive_neighbours(node, "share-keys")
        return {
            "round": self._round,
            "ids": peers,
            "c_pks": [self._adverts[peer].c_pk for peer in peers],
            "s_pks": [self._adverts[peer].s_pks for peer in peers],
            "identities": [self._adverts[peer].identity for peer in peers],
            "key_signatures": [self._adverts[peer].key_signature for peer in peers],
        }

    def _parse_share_keys(self, node: int, reply: Mapping[str, object]) -> dict[int, bytes]:
        ids = _id_list(reply, "ids", self._alive_neighbours(node, "share-keys"))
        size = NONCE_BYTES + 2 * self._slots * SHARE_BYTES + TAG_BYTES
        blobs = _blob_list(reply, "blobs", len(ids), size)
        return dict(zip(ids, blobs, strict=True))

    def _accept_share_keys(self, outboxes: dict[int, dict[int, bytes]]) -> list[int]:
        for sender, blobs in outboxes.items():
            for receiver, blob in blobs.items():
                self._inbox.setdefault(receiver, {})[sender] = blob
        self._members = self._prune(sorted(outboxes))
        return self._members

    def _masked_input_request(self, node: int) -> Payload:
        """Round and slot, with the shares addressed to ``node`` until it has answered once."""
        senders = [] if node in self._delivered else self._alive_neighbours(node, "masked-input")
        if node not in self._delivered:
            self._masking_peers[node] = senders  # whom the node masks with, this epoch
        return {
            "round": self._round,
            "slot": self._slot,
            "ids": senders,
            "blobs": [self._inbox[node][sender] for sender in senders],
        }

    def _parse_masked_input(
        self, node: int, reply: Mapping[str, object]
    ) -> tuple[np.ndarray, bytes]:
        """The (L,) uint64 masked input, unpacked from its m-bit words, and the node's
        signature over whom it masked with (empty without identities)."""
        masked = reply.get("masked")
        if not isinstance(masked, np.ndarray):
            raise ValueError("'masked' must be an array of packed words")
        signature = _optional_blob(reply, "masking_signature", SIGNATURE_BYTES)
        return unpack_words(masked, self._length, self._params.modulus_bits), signature

    def _accept_masked_input(self, masked_inputs: dict[int, tuple[np.ndarray, bytes]]) -> list[int]:
        self._masking_signatures = {}
        for node, (masked, signature) in masked_inputs.items():
            self._masked_sum += masked  # (L,) uint64, wraps mod 2^64
            self._masking_signatures[node] = signature
        self._delivered.update(masked_inputs)
        return sorted(masked_inputs)

    def _consistency_request(self, node: int) -> Payload:
        return {"round": self._round, "survivors": list(self._contacted["consistency"])}

    def _parse_consistency(self, node: int, reply: Mapping[str, object]) -> bytes:
        return _optional_blob(reply, "signature", SIGNATURE_BYTES)

    def _accept_consistency(self, signatures: dict[int, bytes]) -> list[int]:
        """Keep the signatures; abort if a node's secrets lack t signing holders."""
        self._consistency = signatures
        signed = set(signatures)
        threshold = self._params.threshold
        for owner in self._contacted["masked-input"]:
            holders = [v for v in (*self._neighbours[owner], owner) if v in signed]
            if holders and len(holders) < threshold:
                raise SecAggAbort(
                    f"only {len(holders)} share holders of node {owner} signed U3, threshold is "
                    f"{threshold}: its holders would refuse to unmask"
                )
        return sorted(signatures)

    def _unmask_lists(self, node: int) -> tuple[list[int], list[int]]:
        """Neighbours of ``node`` holding shares: those in U3, and those that are not."""
        in_u3 = set(self._contacted["consistency"])
        held = self._alive_neighbours(node, "masked-input")
        return [v for v in held if v in in_u3], [v for v in held if v not in in_u3]

    def _unmask_request(self, node: int) -> Payload:
        signers = sorted(self._consistency)
        owners, _ = self._unmask_lists(node)  # whose self-mask shares the node releases
        return {
            "round": self._round,
            "signers": signers,
            "identities": [self._adverts[v].identity for v in signers],
            "signatures": [self._consistency[v] for v in signers],
            "mask_owners": owners,
            "mask_sizes": [len(self._masking_peers[v]) for v in owners],
            "mask_peers": [peer for v in owners for peer in self._masking_peers[v]],
            "mask_signatures": [self._masking_signatures[v] for v in owners],
        }

    def _parse_unmask(self, node: int, reply: Mapping[str, object]) -> _Unmasked:
        survivors, dropped = self._unmask_lists(node)
        b_ids = _id_list(reply, "b_ids", [*survivors, node])
        sk_ids = _id_list(reply, "sk_ids", dropped)
        b_shares = _blob_list(reply, "b_shares", len(b_ids), SHARE_BYTES)
        sk_shares = _blob_list(reply, "sk_shares", len(sk_ids), SHARE_BYTES)
        return _Unmasked(
            b_shares={owner: share_from_bytes(s) for owner, s in zip(b_ids, b_shares, strict=True)},
            sk_shares={
                owner: share_from_bytes(s) for owner, s in zip(sk_ids, sk_shares, strict=True)
            },
        )

    def _accept_unmask(self, released: dict[int, _Unmasked]) -> list[int]:
        """Remove the survivors' self masks and the dropped nodes' pairwise masks from the sum."""
        length, modulus_bits = self._length, self._params.modulus_bits
        survivors = self._contacted["consistency"]  # U3: every masked input in the sum
        total = self._masked_sum.copy()  # (L,) uint64; wrapping mod 2^64 is exact mod 2^m
        for owner in survivors:
            total -= expand(self._reconstruct(owner, released, "b"), length, modulus_bits)
        dropped = set(self._contacted["masked-input"]) - set(survivors)
        for owner in sorted(dropped):
            peers = self._alive_neighbours(owner, "consistency")
            if not peers:
                continue  # no survivor masked with it
            s_sk = self._reconstruct(owner, released, "s_sk")
            s_pks = [self._slot_key(self._adverts[peer].s_pks) for peer in peers]
            for peer, key in zip(
                peers, mask_keys(s_sk, s_pks, self._epoch, owner, peers), strict=True
            ):
                pad = expand(key, length, modulus_bits)
                if peer < owner:  # the survivor added this pad
                    total -= pad
                else:
                    total += pad
        total &= np.uint64(2**modulus_bits - 1)
        dropped_any = sorted(set(self._cohort) - set(survivors))
        self._result = SecAggResult(total=total, survivors=list(survivors), dropped=dropped_any)
        return survivors

    def _reconstruct(self, owner: int, released: dict[int, _Unmasked], kind: str) -> bytes:
        """Recover ``owner``'s self-mask seed ("b") or mask private key ("s_sk") of the current
        slot from t shares.

        The result is checked against what the owner published in stage 1 (the commitment to b,
        the public key of s_sk), so a wrong share aborts the round instead of corrupting the sum.
        """
        xs, ys = [], []
        for holder, shares in released.items():
            share = (shares.b_shares if kind == "b" else shares.sk_shares).get(owner)
            if share is not None:
                xs.append(self._points[holder])
                ys.append(share)
        threshold = self._params.threshold
        if len(xs) < threshold:
            raise SecAggAbort(
                f"only {len(xs)} shares of {kind} of node {owner} arrived, threshold is {threshold}"
            )
        value = combine(xs[:threshold], ys[:threshold])
        secret = value.to_bytes(KEY_BYTES, "big") if value.bit_length() <= 8 * KEY_BYTES else b""
        advert = self._adverts[owner]
        if kind == "b":
            valid = commit(secret, self._epoch, owner, self._slot) == self._slot_key(
                advert.commitments
            )
        else:
            valid = len(secret) == KEY_BYTES and public_key(secret) == self._slot_key(advert.s_pks)
        if not valid:
            raise SecAggAbort(
                f"reconstructed {kind} of node {owner} does not match what it published in "
                "stage 1: a released share is wrong"
            )
        return secret

    def _slot_key(self, per_slot: bytes) -> bytes:
        """The current slot's 32 bytes of a per-slot concatenation (keys or commitments)."""
        return per_slot[KEY_BYTES * self._slot : KEY_BYTES * (self._slot + 1)]
