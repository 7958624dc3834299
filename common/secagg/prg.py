"""Mask expansion: a 256-bit key stretched into uniform integers mod 2^m by AES-256-CTR."""

from __future__ import annotations

import functools

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_ZERO_COUNTER = bytes(16)
_BLOCK_SLACK = 15  # update_into wants room for one more partial block


@functools.lru_cache(maxsize=4)
def _zeros(size: int) -> bytes:
    """All-zero plaintext, cached: fresh large zero buffers cost more than the AES itself."""
    return bytes(size)


def expand(key: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """Expand a key into a mask vector.

    The keystream of AES-256-CTR (counter block starting at zero) is read as little-endian
    uint64 words and reduced mod 2^m by a bit mask; since 2^m divides 2^64 the result is uniform.
    A zero counter is safe because every key in the protocol expands exactly one stream.

    Parameters
    ----------
    key : bytes
        32-byte key.
    length : int
        Number of elements L.
    modulus_bits : int
        m in [1, 64].

    Returns
    -------
    np.ndarray
        Shape (L,), dtype uint64, values in [0, 2^m); a fresh writable array.
    """
    if len(key) != 32:
        raise ValueError(f"PRG key must be 32 bytes, got {len(key)}")
    if not 1 <= modulus_bits <= 64:
        raise ValueError(f"modulus_bits must be in [1, 64], got {modulus_bits}")
    size = 8 * length
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_COUNTER)).encryptor()
    stream = bytearray(size + _BLOCK_SLACK)
    encryptor.update_into(_zeros(size), stream)  # encrypting zeros yields the keystream
    words = np.frombuffer(stream, dtype="<u8", count=length)  # (L,), shares the buffer
    words &= np.uint64(2**modulus_bits - 1)
    return words
