"""Masked words on the wire at m bits each, not in 64-bit words.

A masked input is uniform mod 2^m, so it cannot be compressed, but it never needs more than m
bits per value: packing L values of m bits takes ⌈L·m / 8⌉ bytes instead of 8·L. Both sides know
L and m (the server announced them), so the packed bytes carry no header.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64


def packed_size(length: int, bits: int) -> int:
    """Bytes of `length` values packed at `bits` bits each: ⌈length·bits / 8⌉."""
    return (length * bits + 7) // 8


def pack_words(values: np.ndarray, bits: int) -> np.ndarray:
    """(L,) uint64 values in [0, 2^bits) → (⌈L·bits/8⌉,) uint8, most significant bit first.

    Raises ValueError for a value that does not fit `bits` bits.
    """
    _check_bits(bits)
    values = np.asarray(values)
    if values.dtype != np.uint64 or values.ndim != 1:
        raise ValueError(f"values must be a 1-D uint64 array, got {values.dtype} {values.shape}")
    if bits < WORD_BITS and np.any(values >> np.uint64(bits)):
        raise ValueError(f"values must be < 2^{bits}")
    big_endian = values.astype(">u8").view(np.uint8).reshape(-1, 8)  # (L, 8) bytes, MSB first
    all_bits = np.unpackbits(big_endian, axis=1)[:, WORD_BITS - bits :]  # (L, bits)
    return np.packbits(all_bits.ravel())


def unpack_words(packed: np.ndarray, length: int, bits: int) -> np.ndarray:
    """Inverse of `pack_words`: (⌈L·bits/8⌉,) uint8 → (L,) uint64.

    Raises ValueError when `packed` is not exactly ⌈length·bits/8⌉ bytes of uint8.
    """
    _check_bits(bits)
    packed = np.asarray(packed)
    expected = packed_size(length, bits)
    if packed.dtype != np.uint8 or packed.shape != (expected,):
        raise ValueError(
            f"packed words must be {expected} uint8 bytes ({length} values × {bits} bits), "
            f"got {packed.dtype} {packed.shape}"
        )
    value_bits = np.unpackbits(packed)[: length * bits].reshape(length, bits)  # (L, bits)
    words = np.zeros((length, WORD_BITS), dtype=np.uint8)
    words[:, WORD_BITS - bits :] = value_bits
    return np.packbits(words, axis=1).view(">u8").ravel().astype(np.uint64)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= WORD_BITS:
        raise ValueError(f"bits must be in [1, {WORD_BITS}], got {bits}")
