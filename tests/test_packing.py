"""Masked words packed at m bits: exact round trips, sizes, and refusals."""

from __future__ import annotations

import re

import numpy as np
import pytest

from common.secagg.packing import pack_words, packed_size, unpack_words


@pytest.mark.parametrize("bits", [1, 7, 13, 29, 53, 63, 64])
@pytest.mark.parametrize("length", [1, 5, 1000])
def test_pack_then_unpack_is_the_identity(bits, length):
    rng = np.random.default_rng(bits * 1000 + length)
    high = 2**bits if bits < 64 else None
    values = (
        rng.integers(0, high, size=length, dtype=np.uint64)
        if high
        else rng.integers(0, 2**63, size=length, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    )

    packed = pack_words(values, bits)

    assert packed.dtype == np.uint8 and packed.shape == (packed_size(length, bits),)
    np.testing.assert_array_equal(unpack_words(packed, length, bits), values)


def test_packing_is_most_significant_bit_first_by_hand():
    # 5 = 101, 3 = 011 at 3 bits: 101011 then two zero pad bits = 0b10101100 = 172.
    assert pack_words(np.array([5, 3], dtype=np.uint64), 3).tolist() == [172]


def test_sizes_follow_the_bit_width():
    assert packed_size(32_000, 29) == 116_000  # a 3 200 × 10 report at m = 29: 116 KB, not 256
    assert packed_size(3, 3) == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pack_words(np.array([8], dtype=np.uint64), 3), "values must be < 2^3"),
        (lambda: pack_words(np.array([1], dtype=np.int64), 3), "1-D uint64 array"),
        (lambda: pack_words(np.array([1], dtype=np.uint64), 0), "bits must be in [1, 64], got 0"),
        (
            lambda: unpack_words(np.zeros(3, dtype=np.uint8), 2, 3),
            "packed words must be 1 uint8 bytes (2 values × 3 bits), got uint8 (3,)",
        ),
    ],
    ids=["too-wide", "signed", "zero-bits", "wrong-size"],
)
def test_bad_input_is_refused_with_the_reason(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
