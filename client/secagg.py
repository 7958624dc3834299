"""Client side of SecAgg+ (Bell et al. 2020) against a malicious server: one state machine per
round, its state a flat dict.

Stages and payloads (request -> reply); every request after the first repeats ``round``:

1. advertise: ``round``, ``cohort`` (sorted ids), ``graph_seed``, ``vector_length`` and the
   resolved :class:`SecAggParams` fields -> ``c_pk``, ``s_pk`` (32-byte X25519 public keys),
   ``commitment`` (32-byte SHA-256 commitment to the self-mask seed b), ``identity`` (the node's
   32-byte Ed25519 public key) and ``key_signature`` (its signature of run, round, node id and
   both public keys).
2. share-keys: ``ids``, ``c_pks``, ``s_pks``, ``identities``, ``key_signatures`` of the
   neighbours alive after stage 1 -> ``ids``, ``blobs``: AEAD ciphertexts carrying the
   neighbour's Shamir shares of b and of s_sk.
3. masked-input: ``ids``, ``blobs`` addressed to this node by neighbours alive after stage 2,
   plus the encoded input vector x given by the caller -> ``masked`` (y mod 2^m packed at m
   bits per value, uint8).
4. consistency: ``survivors`` (sorted U3: every node whose masked input the server holds) ->
   ``signature`` of run, round, node id and U3.
5. unmask: ``signers``, ``identities``, ``signatures`` (the consistency replies) ->
   ``b_ids``, ``b_shares`` (b-shares of the neighbours in U3 and of this node itself) and
   ``sk_ids``, ``sk_shares`` (s_sk-shares of the neighbours not in U3), 66-byte field elements.

Malicious-server checks (Bonawitz et al. CCS 2017, Bell et al. CCS 2020): every key and every
consistency signature must come from a distinct identity on the node's roster; |U2| >= t before
masking; at unmask, for this node and every neighbour v whose shares it holds, at least t of
v's k + 1 share holders must have signed exactly the U3 this node signed, so no two honest
holders can be shown different survivor sets; announced settings must equal the node's own
(modulus width, fractional bits, vector length) or be stricter (degree, threshold, minimum
cohort); and with DP on, at least the number of verified signers the noise share was sized for.

A node counts as a holder of its own shares: t of the k neighbours plus itself reconstruct a
secret. Its own s_sk-share is discarded at once, because a node that answers unmask has sent its
masked input and is never "dropped"; its own b-share is always released at unmask.

Without an identity (in-process experiments only; the Flower handlers always pass one) the
client signs nothing and checks no signatures: that is the honest-but-curious protocol.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_args, get_origin, get_type_hints

import numpy as np
from cryptography.exceptions import InvalidTag

from common.secagg import STAGES, SecAggParams, SecAggRefusal
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
    survivors_statement,
    verify,
)
from common.secagg.packing import pack_words
from common.secagg.prg import expand
from common.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes, split

Payload = dict[str, object]
StateDict = dict[str, int | float | bytes | list[int] | list[bytes]]


@dataclass
class _State:
    """Everything a client remembers between messages; secrets are wiped once no longer needed."""

    node_id: int
    policy: list[int]  # the client's own SecAggParams fields, in declaration order
    run: int = 0  # run id bound into every signature
    identity_sk: bytes = field(default=b"", repr=False)  # Ed25519 key; empty = unauthenticated
    roster: list[bytes] = field(default_factory=list)  # identities whose signatures count
    expected_length: int = 0  # the vector length this node will send (0 = not checked)
    value_bound: float = 0.0  # its own bound B, fixing the modulus width (0 = not checked)
    min_contributors: int = 0  # verified U3 signers the DP noise share was sized for
    stage: int = 0  # index into STAGES
    round: int = 0
    cohort: list[int] = field(default_factory=list)
    graph_seed: int = 0
    params: list[int] = field(default_factory=list)  # resolved settings announced by the server
    vector_length: int = 0
    # Private keys live from stage 1 to stage 2; the per-peer keys derived from them and the
    # self-mask seed b from stage 2 to stage 3; received shares from stage 3 to stage 4.
    c_sk: bytes = field(default=b"", repr=False)  # share-encryption private key
    s_sk: bytes = field(default=b"", repr=False)  # pairwise-mask private key
    self_mask_seed: bytes = field(default=b"", repr=False)  # b
    peer_ids: list[int] = field(default_factory=list)  # neighbours alive after stage 1
    # Verified identities of peer_ids (stages 2-3), then of held_ids (stages 3-5).
    peer_identities: list[bytes] = field(default_factory=list)
    peer_enc_keys: list[bytes] = field(default_factory=list, repr=False)  # AEAD key per peer
    peer_mask_keys: list[bytes] = field(default_factory=list, repr=False)  # PRG key per peer
    own_b_share: bytes = field(default=b"", repr=False)
    held_ids: list[int] = field(default_factory=list)  # neighbours whose shares this node holds
    held_b_shares: list[bytes] = field(default_factory=list, repr=False)
    held_sk_shares: list[bytes] = field(default_factory=list, repr=False)
    survivors: list[int] = field(default_factory=list)  # the U3 this node signed


_STATE_TYPES = get_type_hints(_State)


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


class SecAggClient:
    """One client's side of one secure-aggregation round.

    Create it with the client's own settings (its policy) and identity, call the five stage
    methods in order, and persist it between messages with :meth:`to_state` /
    :meth:`from_state`. Every method raises :class:`SecAggRefusal` for a request that is out of
    order, malformed, or breaks the protocol or the policy; the state is then unchanged.

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
        return f"SecAggClient(node_id={state.node_id}, round={state.round}, stage={self.stage!r})"

    @property
    def stage(self) -> str:
        """Name of the request this client expects next (``'done'`` after unmask)."""
        return STAGES[self._state.stage]

    @property
    def round_number(self) -> int:
        """The round this client is in (0 before the advertise stage)."""
        return self._state.round

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
                valid = isinstance(value, hint)
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
        """Stage 1: check the round's cohort and settings, make keys and the self-mask seed.

        Parameters
        ----------
        request : Mapping[str, object]
            ``round``, ``cohort``, ``graph_seed``, ``vector_length`` and SecAggParams fields.

        Returns
        -------
        dict
            ``c_pk``, ``s_pk``, ``commitment`` and ``identity``, 32 bytes each, and
            ``key_signature`` (64 bytes; empty without an identity).
        """
        state = self._expect("advertise")
        round_ = _int(request, "round")
        cohort = _ids(request, "cohort")
        graph_seed = _int(request, "graph_seed")
        vector_length = _int(request, "vector_length")
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
        s_sk, s_pk = generate_keypair()
        seed = os.urandom(KEY_BYTES)
        state.round, state.cohort, state.graph_seed = round_, cohort, graph_seed
        state.params, state.vector_length = list(dataclasses.astuple(announced)), vector_length
        state.c_sk, state.s_sk, state.self_mask_seed = c_sk, s_sk, seed
        state.stage += 1
        identity, signature = b"", b""
        if self.authenticated:
            signer = NodeIdentity(state.identity_sk)
            identity = signer.public_key
            signature = signer.sign(keys_statement(state.run, round_, state.node_id, c_pk, s_pk))
        return {
            "c_pk": c_pk,
            "s_pk": s_pk,
            "commitment": commit(seed, round_, state.node_id),
            "identity": identity,
            "key_signature": signature,
        }

    def share_keys(self, request: Mapping[str, object]) -> Payload:
        """Stage 2: Shamir-share s_sk and b among the alive neighbours and encrypt the shares.

        Parameters
        ----------
        request : Mapping[str, object]
            ``round`` and ``ids``, ``c_pks``, ``s_pks``, ``identities``, ``key_signatures`` of
            the neighbours alive after stage 1.

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
        if self.authenticated:
            self._check_signers(ids, identities)
            forged = [
                peer
                for peer, identity, signature, c_pk, s_pk in zip(
                    ids, identities, signatures, c_pks, s_pks, strict=True
                )
                if not verify(
                    identity, signature, keys_statement(state.run, state.round, peer, c_pk, s_pk)
                )
            ]
            if forged:
                raise SecAggRefusal(
                    f"public keys of nodes {forged} are not signed by the identity they name "
                    "(missing or wrong signature: substituted keys?)"
                )
        try:
            enc_keys = encryption_keys(state.c_sk, c_pks, state.round, state.node_id, ids)
            mask_seeds = mask_keys(state.s_sk, s_pks, state.round, state.node_id, ids)
        except ValueError as error:  # wrong size or low-order public key
            raise SecAggRefusal(f"bad public key: {error}") from error
        state.own_b_share, blobs = self._encrypt_shares(ids, enc_keys)
        state.peer_ids, state.peer_enc_keys, state.peer_mask_keys = ids, enc_keys, mask_seeds
        state.peer_identities = identities if self.authenticated else []
        state.c_sk = state.s_sk = b""  # s_sk is shared; the per-peer keys are all stage 3 needs
        state.stage += 1
        return {"ids": ids, "blobs": blobs}

    def masked_input(self, request: Mapping[str, object], vector: np.ndarray) -> Payload:
        """Stage 3: store the shares sent to this node and reply with the masked input.

        y = x + PRG(b) + sum over neighbours j alive after stage 2 of ±PRG(k_ij) mod 2^m, with
        + when this node's id is below j's. The keys and b are wiped from the state afterwards.

        Parameters
        ----------
        request : Mapping[str, object]
            ``round``, ``ids`` of the senders and ``blobs``, their ciphertexts to this node.
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
        state = self._expect("masked-input")
        self._check_round(request)
        modulus_bits = self.round_params.modulus_bits
        self._check_vector(vector, modulus_bits)
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
        b_shares, sk_shares = self._decrypt_shares(ids, blobs)
        masked = self._mask(vector, ids, modulus_bits)
        state.held_ids, state.held_b_shares, state.held_sk_shares = ids, b_shares, sk_shares
        if self.authenticated:  # from now on, the identities of the held ids
            identity_of = dict(zip(state.peer_ids, state.peer_identities, strict=True))
            state.peer_identities = [identity_of[v] for v in ids]
        state.self_mask_seed = b""
        state.peer_ids, state.peer_enc_keys, state.peer_mask_keys = [], [], []
        state.stage += 1
        return {"masked": pack_words(masked, modulus_bits)}

    def consistency(self, request: Mapping[str, object]) -> Payload:
        """Stage 4: sign the survivor set U3 the server shows, once per round.

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
            statement = survivors_statement(state.run, state.round, state.node_id, survivors)
            signature = NodeIdentity(state.identity_sk).sign(statement)
        state.survivors = survivors
        state.stage += 1
        return {"signature": signature}

    def unmask(self, request: Mapping[str, object]) -> Payload:
        """Stage 5: release b-shares of U3 and s_sk-shares of the rest, once, after checking
        that enough share holders of every affected node signed the same U3.

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
        in_u3 = set(state.survivors)
        survivors = [v for v in state.held_ids if v in in_u3]
        dropped = [v for v in state.held_ids if v not in in_u3]
        b_shares = dict(zip(state.held_ids, state.held_b_shares, strict=True))
        sk_shares = dict(zip(state.held_ids, state.held_sk_shares, strict=True))
        reply: Payload = {
            "b_ids": [*survivors, state.node_id],
            "b_shares": [*(b_shares[v] for v in survivors), state.own_b_share],
            "sk_ids": dropped,
            "sk_shares": [sk_shares[v] for v in dropped],
        }
        # Answering unmask once, for the one U3 this node signed, is what keeps b and s_sk of a
        # node from both leaving this client; its secrets are fresh every round.
        state.held_ids, state.held_b_shares, state.held_sk_shares = [], [], []
        state.own_b_share = b""
        state.stage += 1
        return reply

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
        graph = neighbour_graph(state.cohort, params.neighbours, state.graph_seed)
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
                survivors_statement(state.run, state.round, v, state.survivors),
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

    def _encrypt_shares(self, ids: list[int], enc_keys: list[bytes]) -> tuple[bytes, list[bytes]]:
        """Share b and s_sk among ``ids`` and this node; encrypt each neighbour's pair of shares.

        Returns
        -------
        tuple[bytes, list[bytes]]
            This node's own b-share and one ciphertext per neighbour in ``ids``.
        """
        state = self._state
        points = share_points(state.cohort)
        holders = [*ids, state.node_id]  # this node's own share comes last
        xs = [points[v] for v in holders]
        threshold = self.round_params.threshold
        b_shares = split(int.from_bytes(state.self_mask_seed, "big"), threshold, xs)
        sk_shares = split(int.from_bytes(state.s_sk, "big"), threshold, xs)
        blobs = []
        for peer, key, b_share, sk_share in zip(
            ids, enc_keys, b_shares[:-1], sk_shares[:-1], strict=True
        ):
            plaintext = share_to_bytes(b_share) + share_to_bytes(sk_share)
            blobs.append(encrypt(key, plaintext, state.round, state.node_id, peer))
        return share_to_bytes(b_shares[-1]), blobs

    def _decrypt_shares(
        self, ids: list[int], blobs: list[bytes]
    ) -> tuple[list[bytes], list[bytes]]:
        """Decrypt and check the (b-share, s_sk-share) pairs that neighbours sent to this node."""
        state = self._state
        enc_keys = dict(zip(state.peer_ids, state.peer_enc_keys, strict=True))
        b_shares, sk_shares = [], []
        for peer, blob in zip(ids, blobs, strict=True):
            key = enc_keys[peer]
            try:
                plaintext = decrypt(key, blob, state.round, peer, state.node_id)
                b_share, sk_share = plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:]
                share_from_bytes(b_share)
                share_from_bytes(sk_share)
            except (InvalidTag, ValueError) as error:
                raise SecAggRefusal(f"ciphertext from node {peer} failed authentication") from error
            b_shares.append(b_share)
            sk_shares.append(sk_share)
        return b_shares, sk_shares

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

    def _mask(self, vector: np.ndarray, peers: list[int], modulus_bits: int) -> np.ndarray:
        """Add the self mask and the pairwise masks with ``peers`` to x, mod 2^m."""
        state = self._state
        length = state.vector_length
        mask_seeds = dict(zip(state.peer_ids, state.peer_mask_keys, strict=True))
        masked = vector + expand(state.self_mask_seed, length, modulus_bits)  # (L,) uint64, wraps
        for peer in peers:
            pad = expand(mask_seeds[peer], length, modulus_bits)
            if state.node_id < peer:
                masked += pad
            else:
                masked -= pad
        return masked & np.uint64(2**modulus_bits - 1)  # 2^m divides 2^64, so wrapping is exact
