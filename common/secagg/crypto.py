"""Key agreement (X25519), key derivation (HKDF-SHA256), AEAD (AES-256-GCM) and commitments.

Every derived key and every ciphertext is bound to the round and to the two node ids, so a key or
ciphertext from one round or one pair of nodes is useless for any other. Node ids and rounds are
unsigned 64-bit integers (Flower node ids use the full range).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
UINT64_MAX = 2**64 - 1  # node ids and rounds are unsigned 64-bit
_DOMAIN = b"feddistill/secagg/v1/"


def _pack_ids(*values: int) -> bytes:
    """Pack rounds and node ids as fixed-width 8-byte big-endian words.

    Raises
    ------
    ValueError
        If a value is not an integer in [0, 2^64).
    """
    for value in values:
        if not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
            raise ValueError(f"round and node ids must be integers in [0, 2^64), got {value!r}")
    return struct.pack(f">{len(values)}Q", *values)


def generate_keypair() -> tuple[bytes, bytes]:
    """Generate a fresh X25519 key pair.

    Returns
    -------
    tuple[bytes, bytes]
        ``(private_key, public_key)``, 32 raw bytes each.
    """
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def public_key(private_key: bytes) -> bytes:
    """Return the 32-byte X25519 public key of a 32-byte private key."""
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()


def _agree(
    purpose: bytes,
    private_key: bytes,
    peer_public_keys: Sequence[bytes],
    round: int,
    node: int,
    peers: Sequence[int],
) -> list[bytes]:
    """X25519 shared secrets with several peers, each expanded by HKDF-SHA256 for one purpose.

    The private key is loaded once: loading derives its public key, which costs as much as an
    exchange.

    Raises
    ------
    ValueError
        If a peer key is not 32 bytes or is a low-order point (all-zero shared secret).
    """
    private = X25519PrivateKey.from_private_bytes(private_key)
    keys = []
    for peer_public_key, peer in zip(peer_public_keys, peers, strict=True):
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
        info = _DOMAIN + purpose + _pack_ids(round, min(node, peer), max(node, peer))
        kdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info)
        keys.append(kdf.derive(shared))
    return keys


def encryption_keys(
    private_key: bytes,
    peer_public_keys: Sequence[bytes],
    round: int,
    node: int,
    peers: Sequence[int],
) -> list[bytes]:
    """Symmetric AEAD keys that ``node`` shares with each of ``peers`` for encrypting shares.

    Parameters
    ----------
    private_key : bytes
        The caller's 32-byte X25519 private key ("c" pair).
    peer_public_keys : Sequence[bytes]
        The peers' 32-byte X25519 public keys ("c" pairs), one per peer.
    round, node : int
        Round and the caller's node id.
    peers : Sequence[int]
        Peer node ids; the key for ``(node, peer)`` equals the peer's key for ``(peer, node)``.

    Returns
    -------
    list[bytes]
        One 32-byte key per peer.

    Raises
    ------
    ValueError
        If a peer key is not 32 bytes or is a low-order point.
    """
    return _agree(b"share-encryption", private_key, peer_public_keys, round, node, peers)


def mask_keys(
    private_key: bytes,
    peer_public_keys: Sequence[bytes],
    round: int,
    node: int,
    peers: Sequence[int],
) -> list[bytes]:
    """Seeds of the pairwise masks between ``node`` and each of ``peers`` in ``round``.

    Parameters
    ----------
    private_key : bytes
        The caller's 32-byte X25519 private key ("s" pair).
    peer_public_keys : Sequence[bytes]
        The peers' 32-byte X25519 public keys ("s" pairs), one per peer.
    round, node : int
        Round and the caller's node id.
    peers : Sequence[int]
        Peer node ids; the seed for ``(node, peer)`` equals the peer's seed for ``(peer, node)``.

    Returns
    -------
    list[bytes]
        One 32-byte PRG key per peer.

    Raises
    ------
    ValueError
        If a peer key is not 32 bytes or is a low-order point.
    """
    return _agree(b"pairwise-mask", private_key, peer_public_keys, round, node, peers)


def encrypt(key: bytes, plaintext: bytes, round: int, sender: int, receiver: int) -> bytes:
    """Encrypt with AES-256-GCM; associated data binds round, sender and receiver.

    Returns
    -------
    bytes
        ``nonce || ciphertext || tag``, ``len(plaintext) + 28`` bytes. The nonce is random, so
        both directions of a pair may use the same key.
    """
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _pack_ids(round, sender, receiver))


def decrypt(key: bytes, blob: bytes, round: int, sender: int, receiver: int) -> bytes:
    """Decrypt and authenticate a blob made by :func:`encrypt`.

    Raises
    ------
    cryptography.exceptions.InvalidTag
        If the blob, the key or any of round, sender and receiver differ from encryption.
    """
    nonce, body = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
    return AESGCM(key).decrypt(nonce, body, _pack_ids(round, sender, receiver))


def commit(secret: bytes, round: int, node: int, slot: int = 0) -> bytes:
    """SHA-256 commitment to a 256-bit random secret, bound to round, node and slot (the round of
    a key epoch the secret masks).

    It lets the server check a reconstructed self-mask seed; since the secret is uniformly random
    and 256 bits long, the commitment reveals nothing usable about it.

    Returns
    -------
    bytes
        32-byte digest.
    """
    return hashlib.sha256(_DOMAIN + b"self-mask" + _pack_ids(round, node, slot) + secret).digest()
