"""Client side of SecAgg+ (Bell et al. 2020) against a malicious server, with key set-up
amortised over a key epoch of R rounds: one state machine per epoch, its state a flat dict.

An epoch starts with two set-up stages and then runs R slots, one FL round each:

1. advertise: ``round`` (the epoch's first round, e), ``cohort`` (sorted ids), ``graph_seed``,
   ``vector_length``, ``slots`` (R) and the resolved :class:`SecAggParams` fields -> ``c_pk``
   (32-byte X25519 key for share encryption), ``s_pks`` (R X25519 mask keys, one per slot,
   concatenated: 32·R bytes), ``commitments`` (R SHA-256 commitments to the self-mask seeds
   b_0..b_{R-1}, concatenated), ``identity`` (the node's 32-byte Ed25519 public key) and
   ``key_signature`` (its signature of run, e, node id, c_pk and s_pks).
2. share-keys: ``ids``, ``c_pks``, ``s_pks``, ``identities``, ``key_signatures`` of the
   neighbours alive after stage 1 -> ``ids``, ``blobs``: AEAD ciphertexts carrying the
   neighbour's Shamir shares of every b_j and every mask private key s_sk_j.

Then, per slot j (a round r > every round this node masked before):

3. masked-input: ``round``, ``slot`` (j), and until this node has them the ``ids`` and
   ``blobs`` addressed to it by neighbours alive after stage 2, plus the encoded input x given
   by the caller -> ``masked`` (y mod 2^m packed at m bits per value, uint8).
4. consistency: ``survivors`` (sorted U3_j: every node whose masked input the server holds)
   -> ``signature`` of run, round, node id and U3_j.
5. unmask: ``signers``, ``identities``, ``signatures`` (the consistency replies) ->
   ``b_ids``, ``b_shares`` (slot-j b-shares of the neighbours in U3_j and of this node itself)
   and ``sk_ids``, ``sk_shares`` (slot-j s_sk-shares of the neighbours not in U3_j).

Every slot has its own self-mask seed and its own mask key pair, so what one slot's unmask
reveals (b_j of a survivor, or s_sk_j of a dropped node) opens no other slot: a node that
dropped in slot j masks slot j+1 with fresh secrets and needs no re-keying. A node releases, per
slot and per neighbour, either the b-share or the s_sk-share, once; shares of a slot are wiped
after its unmask or as soon as a later slot starts. With R = 1 this is the per-round protocol.

Malicious-server checks (Bonawitz et al. CCS 2017, Bell et al. CCS 2020): every key and every
consistency signature must come from a distinct identity on the node's roster; |U2| >= t before
masking; at unmask, for this node and every neighbour v whose shares it holds, at least t of
v's k + 1 share holders must have signed exactly the U3 this node signed, so no two honest
holders can be shown different survivor sets; announced settings must equal the node's own
(modulus width, fractional bits, vector length) or be stricter (degree, threshold, minimum
cohort); rounds strictly increase; with DP on, at least the number of verified signers the noise
share was sized for.

A node counts as a holder of its own shares: t of the k neighbours plus itself reconstruct a
secret. Its own s_sk-shares are discarded at once, because a node that answers unmask has sent
its masked input and is never "dropped"; its own b-share of the slot is always released.

Without an identity (in-process experiments only; the Flower handlers always pass one) the
client signs nothing and checks no signatures: that is the honest-but-curious protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_args, get_origin, get_type_hints

import numpy as np
from cryptography.exceptions import InvalidTag

from common.secagg import MAX_SLOTS, STAGES, SecAggParams, SecAggRefusal
from common.secagg.crypto import (
    KEY_BYTES,
    UINT64_MAX,
    commit,
    decrypt,
    encrypt,
    encryption_keys,
    generate_keypair,
    mask_keys,
)
from common.secagg.graph import neighbour_graph, neighbours_of, share_points
from common.secagg.identity import (
    NodeIdentity,
    keys_statement,
    masking_statement,
    survivors_statement,
    verify,
)
from common.secagg.packing import pack_words
from common.secagg.prg import expand
from common.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes, split

Payload = dict[str, object]
StateDict = dict[str, int | float | bytes | list[int] | list[bytes]]
_STAGE = {name: index for index, name in enumerate(STAGES)}


@dataclass
class _State:
    """Everything a client remembers between messages; secrets are wiped once no longer needed.

    Per-slot lists hold R entries; per-(neighbour, slot) lists hold len(ids)·R entries, slot
    varying fastest. A wiped secret is an empty byte string.
    """

    node_id: int
    policy: list[int]  # the client's own SecAggParams fields, in declaration order
    run: int = 0  # run id bound into every signature
    identity_sk: bytes = field(default=b"", repr=False)  # Ed25519 key; empty = unauthenticated
    roster: list[bytes] = field(default_factory=list)  # identities whose signatures count
    expected_length: int = 0  # the vector length this node will send (0 = not checked)
    value_bound: float = 0.0  # its own bound B, fixing the modulus width (0 = not checked)
    min_contributors: int = 0  # verified U3 signers the DP noise share was sized for
    masked_round: int = -1  # last round this node sent a masked input in (-1: none)
    stage: int = 0  # index into STAGES
    epoch: int = 0  # round of the advertise stage; binds keys, ciphertexts and commitments
    slots: int = 0  # R, rounds the epoch's secrets cover
    slot: int = 0  # the slot in progress (stages 3-5) or the next one to use (stage 2)
    round: int = 0  # round of the slot in progress (the epoch's round during set-up)
    cohort: list[int] = field(default_factory=list)
    graph_seed: int = 0
    params: list[int] = field(default_factory=list)  # resolved settings announced by the server
    vector_length: int = 0
    # Set-up secrets live from stage 1 to stage 2; per-slot secrets until their slot is used.
    c_sk: bytes = field(default=b"", repr=False)  # share-encryption private key
    s_sks: list[bytes] = field(default_factory=list, repr=False)  # mask private key per slot
    self_mask_seeds: list[bytes] = field(default_factory=list, repr=False)  # b_j per slot
    own_b_shares: list[bytes] = field(default_factory=list, repr=False)  # per slot
    peer_ids: list[int] = field(default_factory=list)  # neighbours alive after stage 1
    peer_identities: list[bytes] = field(default_factory=list)  # of peer_ids, then of held_ids
    peer_enc_keys: list[bytes] = field(default_factory=list, repr=False)  # AEAD key per peer
    peer_mask_keys: list[bytes] = field(default_factory=list, repr=False)  # per (peer, slot)
    held_ids: list[int] = field(default_factory=list)  # neighbours whose shares this node holds
    held_b_shares: list[bytes] = field(default_factory=list, repr=False)  # per (held, slot)
    held_sk_shares: list[bytes] = field(default_factory=list, repr=False)  # per (held, slot)
    survivors: list[int] = field(default_factory=list)  # the U3 this node signed this slot


_STATE_TYPES = get_type_hints(_State)
_KEPT_ACROSS_EPOCHS = (  # the node's own settings, and the last round it masked in
    "node_id",
    "policy",
    "run",
    "identity_sk",
    "roster",
    "expected_length",
    "value_bound",
    "min_contributors",
    "masked_round",
)


def _int(request: Mapping[str, object], key: str) -> int:
    """Read an unsigned 64-bit integer field or refuse the request."""
    value = request.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= UINT64_MAX:
        raise SecAggRefusal(f"malformed request: {key!r} must be an integer in [0, 2^64)")
    return value


def _ids(request: Mapping[str, object], key: str) -> list[int]:
    """Read a list of distinct node ids or refuse the request."""
    value = request.get(key)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= UINT64_MAX for v in value
    ):
        raise SecAggRefusal(f"malformed request: {key!r} must be a list of node ids")
    if len(set(value)) != len(value):
        raise SecAggRefusal(f"malformed request: {key!r} lists a node twice")
    return value


def _blobs(request: Mapping[str, object], key: str, count: int) -> list[bytes]:
    """Read a list of ``count`` byte strings or refuse the request."""
    value = request.get(key)
    if not isinstance(value, list) or len(value) != count:
        raise SecAggRefusal(f"malformed request: {key!r} must be a list of {count} byte strings")
    if not all(isinstance(v, bytes) for v in value):
        raise SecAggRefusal(f"malformed request: {key!r} must hold bytes")
    return value


def _ints(request: Mapping[str, object], key: str, count: int) -> list[int]:
    """Read a list of ``count`` non-negative integers (repeats allowed) or refuse the request."""
    value = request.get(key)
    if not isinstance(value, list) or len(value) != count:
        raise SecAggRefusal(f"malformed request: {key!r} must be a list of {count} integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise SecAggRefusal(f"malformed request: {key!r} must hold non-negative integers")
    return value


@functools.lru_cache(maxsize=8)
def _graph(cohort: tuple[int, ...], neighbours: int, seed: int) -> dict[int, list[int]]:
    """The round's neighbour graph, built once per process for both unmask checks (clients of
    one cohort in one process share it)."""
    return neighbour_graph(list(cohort), neighbours, seed)


def _connected(graph: Mapping[int, Sequence[int]], nodes: set[int]) -> bool:
    """Whether the subgraph of ``graph`` on ``nodes`` is connected (an empty set is)."""
    if not nodes:
        return True
    start = min(nodes)
    seen, frontier = {start}, [start]
    while frontier:
        node = frontier.pop()
        for peer in graph[node]:
            if peer in nodes and peer not in seen:
                seen.add(peer)
                frontier.append(peer)
    return seen == nodes


class SecAggClient:
    """One client's side of one key epoch of secure aggregation (set-up plus R rounds).

    Create it with the client's own settings (its policy) and identity, call the stage methods
    in order, and persist it between messages with :meth:`to_state` / :meth:`from_state`. Every
    method raises :class:`SecAggRefusal` for a request that is out of order, malformed, or
    breaks the protocol or the policy; the state is then unchanged. An advertise request starts
    a new epoch at any stage (the old epoch's secrets are dropped unused), and a masked-input
    request for a later slot abandons an unfinished one.

    Parameters
    ----------
    node_id : int
        This node's id (unsigned 64-bit, as Flower assigns).
    params : SecAggParams
        The client's own settings; automatic fields are resolved for the announced cohort and
        the server's settings must be at least as strict (degree, threshold, minimum cohort)
        and use the same fractional bits.
    run : int
        Run id (unsigned 64-bit) bound into every signature.
    identity : NodeIdentity or None
        The node's long-term signing key; None runs the unauthenticated (honest-but-curious)
        protocol, for in-process experiments.
    roster : Sequence[bytes]
        Identity public keys (32 bytes each) whose signatures count; must include ``identity``.
    expected_length : int
        Length L of the vector this node will mask; the announced length must equal it
        (0: not checked).
    value_bound : float
        This node's bound B on every element; the announced modulus width must equal the one
        its own settings resolve to for the cohort and B (0: not checked).
    min_contributors : int
        Fewest verified consistency signers this node accepts (what its DP noise share was sized
        for; 0: no such check).
    """

    def __init__(
        self,
        node_id: int,
        params: SecAggParams,
        *,
        run: int = 0,
        identity: NodeIdentity | None = None,
        roster: Sequence[bytes] = (),
        expected_length: int = 0,
        value_bound: float = 0.0,
        min_contributors: int = 0,
    ) -> None:
        for name, value in (("node_id", node_id), ("run", run)):
            if not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
                raise ValueError(f"{name} must be an integer in [0, 2^64), got {value!r}")
        if identity is not None and identity.public_key not in roster:
            raise ValueError("this node's identity is not on its roster")
        if expected_length < 0 or value_bound < 0 or min_contributors < 0:
            raise ValueError(
                "expected_length, value_bound and min_contributors must be >= 0, got "
                f"{expected_length}, {value_bound}, {min_contributors}"
            )
        self._state = _State(
            node_id=node_id,
            policy=list(dataclasses.astuple(params)),
            run=run,
            identity_sk=b"" if identity is None else identity.private_bytes(),
            roster=list(roster),
            expected_length=expected_length,
            value_bound=float(value_bound),
            min_contributors=min_contributors,
        )

    @property
    def authenticated(self) -> bool:
        """True when this client signs its keys and verifies everyone else's signatures."""
        return bool(self._state.identity_sk)

    def __repr__(self) -> str:
        state = self._state
        return (
            f"SecAggClient(node_id={state.node_id}, round={state.round}, "
            f"slot={state.slot}/{state.slots}, stage={self.stage!r})"
        )

    @property
    def stage(self) -> str:
        """Name of the request this client expects next (``'done'`` once the epoch is used up;
        an advertise request is accepted at every stage)."""
        return STAGES[self._state.stage]

    @property
    def round_number(self) -> int:
        """The round this client is in (0 before the advertise stage)."""
        return self._state.round

    @property
    def cohort(self) -> list[int]:
        """The epoch's cohort as announced at advertise (sorted node ids)."""
        return list(self._state.cohort)

    @property
    def round_params(self) -> SecAggParams:
        """Resolved settings announced by the server; use them to encode the input vector.

        Raises
        ------
        RuntimeError
            Before :meth:`advertise` has succeeded.
        """
        if not self._state.params:
            raise RuntimeError("round settings are known only after the advertise stage")
        return SecAggParams(*self._state.params)

    def to_state(self) -> StateDict:
        """Whole state as a flat dict of ints, bytes and lists of them (holds private keys)."""
        return {key: list(v) if isinstance(v, list) else v for key, v in vars(self._state).items()}

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> SecAggClient:
        """Rebuild a client from :meth:`to_state` output.

        Raises
        ------
        ValueError
            If keys are missing or unknown, or a value has the wrong type.
        """
        if set(state) != set(_STATE_TYPES):
            raise ValueError(
                f"client state must have keys {sorted(_STATE_TYPES)}, got {sorted(state)}"
            )
        for key, hint in _STATE_TYPES.items():
            value = state[key]
            if get_origin(hint) is list:
                (item,) = get_args(hint)
                valid = isinstance(value, list) and all(isinstance(v, item) for v in value)
            else:
                valid = isinstance(value, hint) and not isinstance(value, bool)
            if not valid:
                raise ValueError(f"client state field {key!r} must be {hint}")
        if not 0 <= state["stage"] < len(STAGES):
            raise ValueError(
                f"client state stage must be in [0, {len(STAGES)}), got {state['stage']}"
            )
        client = cls.__new__(cls)
        client._state = _State(**state)
        return client

    def respond(
        self, stage: str, request: Mapping[str, object], vector: np.ndarray | None = None
    ) -> Payload:
        """Answer a request of the named stage by calling its stage method.

        Parameters
        ----------
        stage : str
            One of :data:`STAGES` but ``'done'``, as the server labels the request.
        request : Mapping[str, object]
            The request payload.
        vector : np.ndarray or None
            The encoded input; required for ``'masked-input'`` and ignored otherwise.

        Returns
        -------
        dict
            The reply payload.
        """
        if stage == "masked-input":
            if vector is None:
                raise ValueError("the masked-input stage needs the encoded input vector")
            return self.masked_input(request, vector)
        handlers = {
            "advertise": self.advertise,
            "share-keys": self.share_keys,
            "consistency": self.consistency,
            "unmask": self.unmask,
        }
        if stage not in handlers:
            raise SecAggRefusal(f"unknown stage {stage!r}; expected one of {STAGES[:-1]}")
        return handlers[stage](request)

    def advertise(self, request: Mapping[str, object]) -> Payload:
        """Stage 1: check the epoch's cohort and settings, make its keys and self-mask seeds.

        Accepted at any stage: a new epoch drops whatever secrets the old one still held, unused.

        Parameters
        ----------
        request : Mapping[str, object]
            ``round``, ``cohort``, ``graph_seed``, ``vector_length``, ``slots`` and the
            SecAggParams fields.

        Returns
        -------
        dict
            ``c_pk`` and ``identity`` (32 bytes each), ``s_pks`` and ``commitments`` (32·R bytes
            each) and ``key_signature`` (64 bytes; empty without an identity).
        """
        state = self._state
        round_ = _int(request, "round")
        cohort = _ids(request, "cohort")
        graph_seed = _int(request, "graph_seed")
        vector_length = _int(request, "vector_length")
        slots = _int(request, "slots")
        if round_ <= state.masked_round:
            raise SecAggRefusal(
                f"advertise for round {round_}, but this node already sent a masked input in "
                f"round {state.masked_round}: rounds must increase"
            )
        if not 1 <= slots <= MAX_SLOTS:
            raise SecAggRefusal(f"slots must be in [1, {MAX_SLOTS}], got {slots}")
        if cohort != sorted(cohort):
            raise SecAggRefusal("malformed request: cohort must be sorted")
        if state.node_id not in cohort:
            raise SecAggRefusal(f"node {state.node_id} is not in the announced cohort")
        if vector_length < 1:
            raise SecAggRefusal(f"vector_length must be >= 1, got {vector_length}")
        if state.expected_length and vector_length != state.expected_length:
            raise SecAggRefusal(
                f"announced vector_length={vector_length}, this node's contribution has "
                f"{state.expected_length} elements"
            )
        if self.authenticated and len(cohort) > len(state.roster):
            raise SecAggRefusal(
                f"cohort of {len(cohort)} nodes is larger than the roster of {len(state.roster)} "
                "identities"
            )
        announced = self._check_settings(request, len(cohort))
        c_sk, c_pk = generate_keypair()
        s_pairs = [generate_keypair() for _ in range(slots)]
        seeds = [os.urandom(KEY_BYTES) for _ in range(slots)]
        self._state = state = _State(
            **{name: getattr(state, name) for name in _KEPT_ACROSS_EPOCHS},
            stage=_STAGE["share-keys"],
            epoch=round_,
            slots=slots,
            round=round_,
            cohort=cohort,
            graph_seed=graph_seed,
            params=list(dataclasses.astuple(announced)),
            vector_length=vector_length,
            c_sk=c_sk,
            s_sks=[s_sk for s_sk, _ in s_pairs],
            self_mask_seeds=seeds,
        )
        s_pks = b"".join(s_pk for _, s_pk in s_pairs)
        identity, signature = b"", b""
        if self.authenticated:
            signer = NodeIdentity(state.identity_sk)
            identity = signer.public_key
            signature = signer.sign(keys_statement(state.run, round_, state.node_id, c_pk, s_pks))
        return {
            "c_pk": c_pk,
            "s_pks": s_pks,
            "commitments": b"".join(
                commit(seed, round_, state.node_id, slot) for slot, seed in enumerate(seeds)
            ),
            "identity": identity,
            "key_signature": signature,
        }

    def share_keys(self, request: Mapping[str, object]) -> Payload:
        """Stage 2: Shamir-share every s_sk_j and b_j among the alive neighbours, encrypt the
        shares, and derive the pairwise mask seeds of every slot.

        Parameters
        ----------
        request : Mapping[str, object]
            ``round`` and ``ids``, ``c_pks``, ``s_pks`` (32·R bytes each), ``identities``,
            ``key_signatures`` of the neighbours alive after stage 1.

        Returns
        -------
        dict
            ``ids`` and ``blobs``: one ciphertext per neighbour, in the order of ``ids``.
        """
        state = self._expect("share-keys")
        self._check_round(request)
        ids = _ids(request, "ids")
        c_pks = _blobs(request, "c_pks", len(ids))
        s_pks = _blobs(request, "s_pks", len(ids))
        identities = _blobs(request, "identities", len(ids))
        signatures = _blobs(request, "key_signatures", len(ids))
        params = self.round_params
        neighbours = neighbours_of(state.node_id, state.cohort, params.neighbours, state.graph_seed)
        strangers = sorted(set(ids) - set(neighbours))
        if strangers:
            raise SecAggRefusal(f"keys sent for nodes that are not neighbours: {strangers}")
        if len(ids) + 1 < params.threshold:
            raise SecAggRefusal(
                f"{len(ids)} alive neighbours plus this node are fewer than the "
                f"threshold t={params.threshold}"
            )
        key_bytes = KEY_BYTES * state.slots
        short = [peer for peer, keys in zip(ids, s_pks, strict=True) if len(keys) != key_bytes]
        if short:
            raise SecAggRefusal(f"nodes {short} did not advertise one mask key per slot")
        if self.authenticated:
            self._check_signers(ids, identities)
            forged = [
                peer
                for peer, identity, signature, c_pk, keys in zip(
                    ids, identities, signatures, c_pks, s_pks, strict=True
                )
                if not verify(
                    identity, signature, keys_statement(state.run, state.epoch, peer, c_pk, keys)
                )
            ]
            if forged:
                raise SecAggRefusal(
                    f"public keys of nodes {forged} are not signed by the identity they name "
                    "(missing or wrong signature: substituted keys?)"
                )
        try:
            enc_keys = encryption_keys(state.c_sk, c_pks, state.epoch, state.node_id, ids)
            per_slot = [
                mask_keys(
                    s_sk,
                    [keys[KEY_BYTES * slot : KEY_BYTES * (slot + 1)] for keys in s_pks],
                    state.epoch,
                    state.node_id,
                    ids,
                )
                for slot, s_sk in enumerate(state.s_sks)
            ]
        except ValueError as error:  # wrong size or low-order public key
            raise SecAggRefusal(f"bad public key: {error}") from error
        state.own_b_shares, blobs = self._encrypt_shares(ids, enc_keys)
        state.peer_ids, state.peer_enc_keys = ids, enc_keys
        state.peer_mask_keys = [
            per_slot[slot][i] for i in range(len(ids)) for slot in range(state.slots)
        ]
        state.peer_identities = identities if self.authenticated else []
        state.c_sk, state.s_sks = b"", []  # shared; the per-peer keys are all later stages need
        state.stage, state.slot = _STAGE["masked-input"], 0
        return {"ids": ids, "blobs": blobs}

    def masked_input(self, request: Mapping[str, object], vector: np.ndarray) -> Payload:
        """Stage 3 of slot j: store the shares sent to this node (first time only) and reply
        with the masked input.

        y = x + PRG(b_j) + sum over neighbours v alive after stage 2 of ±PRG(k_uv,j) mod 2^m,
        with + when this node's id is below v's. Slot j's seed and mask keys are wiped after.

        Parameters
        ----------
        request : Mapping[str, object]
            ``round`` (above every round this node masked before), ``slot`` (j, not below the
            next unused slot and below R), and ``ids`` / ``blobs``: the senders and their
            ciphertexts to this node, needed until this node holds its neighbours' shares and
            ignored after.
        vector : np.ndarray
            Encoded input x, shape (L,), dtype uint64, values in [0, 2^m) (see
            ``common.secagg.encoding.encode`` with :attr:`round_params`).

        Returns
        -------
        dict
            ``masked``: y packed at m bits per value (``common.secagg.packing``), shape
            (⌈L·m/8⌉,), dtype uint8.

        Raises
        ------
        ValueError
            If ``vector`` does not match the announced length and modulus (a caller error).
        """
        state = self._state
        stage = STAGES[state.stage]
        if stage not in ("masked-input", "consistency", "unmask"):
            raise SecAggRefusal(
                f"unexpected masked-input request: this client is at stage {stage!r}"
            )
        round_ = _int(request, "round")
        slot = _int(request, "slot")
        first = state.slot + (stage != "masked-input")  # the earliest slot still unused
        if round_ <= state.masked_round or round_ < state.round:
            raise SecAggRefusal(
                f"masked-input request for round {round_}: this node is in round {state.round} "
                f"and last masked in round {state.masked_round}; rounds must increase"
            )
        if not first <= slot < state.slots:
            raise SecAggRefusal(
                f"masked-input request for slot {slot}: this epoch's unused slots are "
                f"[{first}, {state.slots})"
            )
        modulus_bits = self.round_params.modulus_bits
        self._check_vector(vector, modulus_bits)
        if not state.held_ids:
            self._take_shares(request)
        self._wipe_slots_before(slot)
        masked = self._mask(vector, slot, modulus_bits)
        state.self_mask_seeds[slot] = b""
        for index in range(slot, len(state.peer_mask_keys), state.slots):
            state.peer_mask_keys[index] = b""
        state.round, state.slot, state.masked_round = round_, slot, round_
        state.survivors = []
        state.stage = _STAGE["consistency"]
        signature = b""  # whom it masked with, for the holders' check at unmask
        if self.authenticated:
            statement = masking_statement(
                state.run, state.epoch, slot, round_, state.node_id, state.held_ids
            )
            signature = NodeIdentity(state.identity_sk).sign(statement)
        return {"masked": pack_words(masked, modulus_bits), "masking_signature": signature}

    def consistency(self, request: Mapping[str, object]) -> Payload:
        """Stage 4: sign the survivor set U3 the server shows, once per slot.

        Parameters
        ----------
        request : Mapping[str, object]
            ``round`` and ``survivors``: sorted ids of every node whose masked input the server
            holds; must include this node.

        Returns
        -------
        dict
            ``signature``: 64-byte signature of (run, round, node id, U3); empty without an
            identity.
        """
        state = self._expect("consistency")
        self._check_round(request)
        survivors = _ids(request, "survivors")
        if survivors != sorted(survivors):
            raise SecAggRefusal("malformed request: survivors must be sorted")
        strangers = sorted(set(survivors) - set(state.cohort))
        if strangers:
            raise SecAggRefusal(f"survivors {strangers} are not in the round's cohort")
        if state.node_id not in survivors:
            raise SecAggRefusal(f"node {state.node_id} sent its masked input but is not in U3")
        living = len(set(survivors) & set(state.held_ids))
        threshold = self.round_params.threshold
        if living + 1 < threshold:  # |U3| >= t among the holders of this node's shares
            raise SecAggRefusal(
                f"only {living} surviving neighbours: with this node that is fewer than the "
                f"threshold t={threshold}; releasing shares could expose a survivor's input"
            )
        if len(survivors) < state.min_contributors:
            raise SecAggRefusal(
                f"U3 has {len(survivors)} nodes, fewer than the {state.min_contributors} this "
                "node's DP noise share was sized for"
            )
        signature = b""
        if self.authenticated:
            statement = survivors_statement(
                state.run, state.epoch, state.slot, state.round, state.node_id, survivors
            )
            signature = NodeIdentity(state.identity_sk).sign(statement)
        state.survivors = survivors
        state.stage = _STAGE["unmask"]
        return {"signature": signature}

    def unmask(self, request: Mapping[str, object]) -> Payload:
        """Stage 5: release this slot's b-shares of U3 and s_sk-shares of the rest, once, after
        checking that enough share holders of every affected node signed the same U3.

        Parameters
        ----------
        request : Mapping[str, object]
            ``round``, ``signers`` (node ids), ``identities`` and ``signatures`` of the
            consistency replies; without an identity the lists may be empty.

        Returns
        -------
        dict
            ``b_ids`` (the neighbours in U3, then this node), ``b_shares``, ``sk_ids`` (the
            neighbours not in U3) and ``sk_shares``; shares are 66-byte field elements.
        """
        state = self._expect("unmask")
        self._check_round(request)
        if self.authenticated:
            self._check_consistency(request)
        self._check_masking(request)
        in_u3 = set(state.survivors)
        slot, slots = state.slot, state.slots
        survivors = [i for i, v in enumerate(state.held_ids) if v in in_u3]
        dropped = [i for i, v in enumerate(state.held_ids) if v not in in_u3]
        reply: Payload = {
            "b_ids": [*(state.held_ids[i] for i in survivors), state.node_id],
            "b_shares": [
                *(state.held_b_shares[i * slots + slot] for i in survivors),
                state.own_b_shares[slot],
            ],
            "sk_ids": [state.held_ids[i] for i in dropped],
            "sk_shares": [state.held_sk_shares[i * slots + slot] for i in dropped],
        }
        # Answering unmask once per slot, for the one U3 this node signed, is what keeps b_j and
        # s_sk_j of a node from both leaving this client; no other slot uses either secret.
        self._wipe_slots_before(slot + 1)
        if slot + 1 < slots:
            state.stage, state.slot = _STAGE["masked-input"], slot + 1
        else:
            self._end_epoch()
        return reply

    def _check_masking(self, request: Mapping[str, object]) -> None:
        """Refuse to release shares unless the masks of U3 leave only U3's whole sum open.

        Two rules, each cheap to check here: (1) the neighbour graph restricted to U3 is
        connected, and (2) this node and every owner of a self-mask share it would release masked
        with all of its graph neighbours in U3 (an owner's signed masking set, relayed by the
        server as ``mask_owners`` / ``mask_sizes`` / ``mask_peers`` / ``mask_signatures``).
        Then every edge of the graph on U3 carries a pairwise mask in both endpoints' inputs; the
        server learns s_sk only of nodes outside U3, so for any proper subset of U3 the masks on
        its cut to the rest stay on, and only the sum over all of U3 can be unmasked. Without
        rule (2) a server that hands each node the ciphertexts of part of its neighbourhood
        could unmask each part's sum separately.
        """
        state = self._state
        in_u3 = set(state.survivors)
        graph = _graph(tuple(state.cohort), self.round_params.neighbours, state.graph_seed)
        if not _connected(graph, in_u3):
            raise SecAggRefusal(
                "the neighbour graph restricted to U3 is disconnected: its parts' sums could be "
                "unmasked separately"
            )
        unmasked = sorted((set(graph[state.node_id]) & in_u3) - set(state.held_ids))
        if unmasked:
            raise SecAggRefusal(
                f"U3 lists graph neighbours {unmasked} whose shares this node never received, "
                "so their inputs and this node's carry no mask between them"
            )
        if not self.authenticated:
            return
        owners = _ids(request, "mask_owners")
        sizes = _ints(request, "mask_sizes", len(owners))
        peers = _ints(request, "mask_peers", sum(sizes))
        signatures = _blobs(request, "mask_signatures", len(owners))
        claimed, start = {}, 0
        for owner, size, signature in zip(owners, sizes, signatures, strict=True):
            claimed[owner] = (peers[start : start + size], signature)
            start += size
        identities = dict(zip(state.held_ids, state.peer_identities, strict=True))
        for owner in (v for v in state.held_ids if v in in_u3):
            if owner not in claimed:
                raise SecAggRefusal(f"no signed masking set of node {owner}, whose share it asks")
            owner_peers, signature = claimed[owner]
            statement = masking_statement(
                state.run, state.epoch, state.slot, state.round, owner, owner_peers
            )
            if not verify(identities[owner], signature, statement):
                raise SecAggRefusal(f"the masking set of node {owner} does not verify")
            missing = sorted((set(graph[owner]) & in_u3) - set(owner_peers))
            if missing:
                raise SecAggRefusal(
                    f"node {owner} did not mask with its graph neighbours {missing} in U3: "
                    "releasing its self-mask shares would open a sub-group's sum"
                )

    def _check_signers(self, ids: list[int], identities: list[bytes]) -> None:
        """Refuse identities that are off the roster, repeated, or this node's own."""
        state = self._state
        own = NodeIdentity(state.identity_sk).public_key
        roster = set(state.roster)
        strangers = [
            v for v, identity in zip(ids, identities, strict=True) if identity not in roster
        ]
        if strangers:
            raise SecAggRefusal(
                f"nodes {strangers} sign with identities that are not on the roster"
            )
        if len(set(identities)) != len(identities) or own in identities:
            raise SecAggRefusal("one roster identity is named for two nodes")

    def _check_consistency(self, request: Mapping[str, object]) -> None:
        """Refuse unless t holders of this node's and each held neighbour's shares signed U3.

        Signatures must verify against distinct roster identities, over exactly the U3 this
        node signed; a signer that is a neighbour must use the identity it signed its keys with.
        """
        state = self._state
        signers = _ids(request, "signers")
        identities = _blobs(request, "identities", len(signers))
        signatures = _blobs(request, "signatures", len(signers))
        outside = sorted(set(signers) - set(state.survivors))
        if outside:
            raise SecAggRefusal(f"consistency signatures from nodes {outside} outside U3")
        own = NodeIdentity(state.identity_sk).public_key
        others = [(v, i) for v, i in zip(signers, identities, strict=True) if v != state.node_id]
        self._check_signers([v for v, _ in others], [i for _, i in others])
        if state.node_id in signers and identities[signers.index(state.node_id)] != own:
            raise SecAggRefusal("a consistency signature names this node with another identity")
        known = dict(zip(state.held_ids, state.peer_identities, strict=True))
        switched = sorted(v for v, i in others if v in known and known[v] != i)
        if switched:
            raise SecAggRefusal(
                f"nodes {switched} sign U3 with other identities than their keys were signed with"
            )
        params = self.round_params
        graph = _graph(tuple(state.cohort), params.neighbours, state.graph_seed)
        owners = [*state.held_ids, state.node_id]
        # The holders of the owners' shares matter; with DP on, every signer counts.
        relevant = {v for owner in owners for v in (*graph[owner], owner)}
        forged = [
            v
            for v, identity, signature in zip(signers, identities, signatures, strict=True)
            if (state.min_contributors or v in relevant)
            and not verify(
                identity,
                signature,
                survivors_statement(
                    state.run, state.epoch, state.slot, state.round, v, state.survivors
                ),
            )
        ]
        if forged:
            raise SecAggRefusal(
                f"consistency signatures of nodes {forged} do not verify over the U3 this node "
                "signed (the server showed different survivor sets)"
            )
        if len(signers) < state.min_contributors:
            raise SecAggRefusal(
                f"only {len(signers)} verified signers of U3, fewer than the "
                f"{state.min_contributors} this node's DP noise share was sized for"
            )
        signed = set(signers)
        short = [
            owner
            for owner in owners
            if len(signed.intersection(graph[owner])) + (owner in signed) < params.threshold
        ]
        if short:
            raise SecAggRefusal(
                f"fewer than t={params.threshold} share holders of nodes {short} signed U3: "
                "their holders may have been shown another survivor set"
            )

    def _expect(self, stage: str) -> _State:
        """Return the state if ``stage`` is the request this client expects, else refuse."""
        if self.stage != stage:
            raise SecAggRefusal(
                f"unexpected {stage} request: this client is at stage {self.stage!r}"
            )
        return self._state

    def _check_round(self, request: Mapping[str, object]) -> None:
        """Refuse a request for another round."""
        round_ = _int(request, "round")
        if round_ != self._state.round:
            raise SecAggRefusal(
                f"request for round {round_}, this client is in round {self._state.round}"
            )

    def _check_settings(self, request: Mapping[str, object], n_clients: int) -> SecAggParams:
        """Return the announced settings if valid for n and at least as strict as the policy."""
        policy = SecAggParams(*self._state.policy)
        try:
            announced = SecAggParams.from_config(request)
            neighbours, threshold = policy.graph_for(n_clients)
            announced.check_resolved(n_clients)
        except (TypeError, ValueError) as error:
            raise SecAggRefusal(str(error)) from error
        weaker = (
            announced.neighbours < neighbours
            or announced.threshold < threshold
            or announced.min_cohort < policy.min_cohort
        )
        if weaker:
            raise SecAggRefusal(
                f"announced neighbours={announced.neighbours}, threshold={announced.threshold}, "
                f"min_cohort={announced.min_cohort} are weaker than this client's policy "
                f"({neighbours}, {threshold}, {policy.min_cohort}) for {n_clients} clients"
            )
        if announced.frac_bits != policy.frac_bits:
            raise SecAggRefusal(
                f"announced frac_bits={announced.frac_bits}, this client encodes with "
                f"{policy.frac_bits}"
            )
        bound = self._state.value_bound
        if bound:
            try:
                own_bits = policy.validate(n_clients, bound).modulus_bits
            except ValueError as error:
                raise SecAggRefusal(str(error)) from error
            if announced.modulus_bits != own_bits:
                raise SecAggRefusal(
                    f"announced modulus_bits={announced.modulus_bits}, this client's settings "
                    f"give {own_bits} for {n_clients} clients and bound {bound:g}"
                )
        return announced

    def _encrypt_shares(
        self, ids: list[int], enc_keys: list[bytes]
    ) -> tuple[list[bytes], list[bytes]]:
        """Share every b_j and s_sk_j among ``ids`` and this node; encrypt each neighbour's
        2·R shares (b_0..b_{R-1}, then s_sk_0..s_sk_{R-1}) in one ciphertext.

        Returns
        -------
        tuple[list[bytes], list[bytes]]
            This node's own b-share per slot, and one ciphertext per neighbour in ``ids``.
        """
        state = self._state
        points = share_points(state.cohort)
        holders = [*ids, state.node_id]  # this node's own share comes last
        xs = [points[v] for v in holders]
        threshold = self.round_params.threshold
        secrets_ = [*state.self_mask_seeds, *state.s_sks]
        shares = [split(int.from_bytes(secret, "big"), threshold, xs) for secret in secrets_]
        blobs = []
        for index, (peer, key) in enumerate(zip(ids, enc_keys, strict=True)):
            plaintext = b"".join(share_to_bytes(per_secret[index]) for per_secret in shares)
            blobs.append(encrypt(key, plaintext, state.epoch, state.node_id, peer))
        own_b_shares = [share_to_bytes(shares[slot][-1]) for slot in range(state.slots)]
        return own_b_shares, blobs

    def _take_shares(self, request: Mapping[str, object]) -> None:
        """Decrypt and keep the shares neighbours sent to this node; from now on it masks with
        exactly those neighbours (U2) in every slot of the epoch."""
        state = self._state
        ids = _ids(request, "ids")
        blobs = _blobs(request, "blobs", len(ids))
        unknown = sorted(set(ids) - set(state.peer_ids))
        if unknown:
            raise SecAggRefusal(f"ciphertexts from nodes whose keys this node never got: {unknown}")
        threshold = self.round_params.threshold
        if len(ids) + 1 < threshold:  # |U2| >= t: fewer holders would expose the self mask
            raise SecAggRefusal(
                f"only {len(ids)} neighbours alive after share-keys: with this node that is "
                f"fewer than the threshold t={threshold}, so its input would be unprotected"
            )
        slots = state.slots
        enc_keys = dict(zip(state.peer_ids, state.peer_enc_keys, strict=True))
        b_shares, sk_shares = [], []
        for peer, blob in zip(ids, blobs, strict=True):
            try:
                plaintext = decrypt(enc_keys[peer], blob, state.epoch, peer, state.node_id)
                if len(plaintext) != 2 * slots * SHARE_BYTES:
                    raise ValueError("wrong number of shares")
                shares = [
                    plaintext[i * SHARE_BYTES : (i + 1) * SHARE_BYTES] for i in range(2 * slots)
                ]
                for share in shares:
                    share_from_bytes(share)
            except (InvalidTag, ValueError) as error:
                raise SecAggRefusal(f"ciphertext from node {peer} failed authentication") from error
            b_shares.extend(shares[:slots])
            sk_shares.extend(shares[slots:])
        position = {v: i for i, v in enumerate(state.peer_ids)}
        state.peer_mask_keys = [
            state.peer_mask_keys[position[v] * slots + slot] for v in ids for slot in range(slots)
        ]
        if self.authenticated:  # from now on, the identities of the held ids
            state.peer_identities = [state.peer_identities[position[v]] for v in ids]
        state.held_ids, state.held_b_shares, state.held_sk_shares = ids, b_shares, sk_shares
        state.peer_ids, state.peer_enc_keys = [], []

    def _wipe_slots_before(self, end: int) -> None:
        """Forget every secret of slots [0, end): a slot is used at most once."""
        state = self._state
        slots = state.slots
        for slot in range(min(end, slots)):
            state.self_mask_seeds[slot] = b""
            state.own_b_shares[slot] = b""
            for shares in (state.peer_mask_keys, state.held_b_shares, state.held_sk_shares):
                for index in range(slot, len(shares), slots):
                    shares[index] = b""

    def _end_epoch(self) -> None:
        """Forget the epoch: every slot is used, a new advertise is needed."""
        state = self._state
        state.stage = _STAGE["done"]
        state.self_mask_seeds, state.own_b_shares, state.peer_mask_keys = [], [], []
        state.held_ids, state.held_b_shares, state.held_sk_shares = [], [], []
        state.peer_identities, state.survivors = [], []

    def _check_vector(self, vector: np.ndarray, modulus_bits: int) -> None:
        """Raise ValueError unless ``vector`` is an encoded input of the announced shape."""
        length = self._state.vector_length
        if (
            not isinstance(vector, np.ndarray)
            or vector.dtype != np.uint64
            or vector.shape != (length,)
        ):
            raise ValueError(f"vector must be a uint64 array of shape ({length},)")
        if modulus_bits < 64 and np.any(vector >> np.uint64(modulus_bits)):
            raise ValueError(f"vector values must be < 2^{modulus_bits}")

    def _mask(self, vector: np.ndarray, slot: int, modulus_bits: int) -> np.ndarray:
        """Add slot ``slot``'s self mask and pairwise masks with the held neighbours, mod 2^m."""
        state = self._state
        length = state.vector_length
        masked = vector + expand(state.self_mask_seeds[slot], length, modulus_bits)  # (L,) uint64
        for index, peer in enumerate(state.held_ids):
            pad = expand(state.peer_mask_keys[index * state.slots + slot], length, modulus_bits)
            if state.node_id < peer:
                masked += pad
            else:
                masked -= pad
        return masked & np.uint64(2**modulus_bits - 1)  # 2^m divides 2^64, so wrapping is exact
