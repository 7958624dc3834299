"""Shamir secret sharing over the prime field GF(2^521 - 1), large enough for 256-bit secrets."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

PRIME = 2**521 - 1  # Mersenne prime M521
SHARE_BYTES = (PRIME.bit_length() + 7) // 8  # 66


def _check_points(xs: Sequence[int]) -> None:
    """Raise ValueError unless the evaluation points are distinct and in [1, p)."""
    if len(set(xs)) != len(xs):
        raise ValueError(f"evaluation points must be distinct, got {list(xs)}")
    bad = [x for x in xs if not 0 < x < PRIME]
    if bad:
        raise ValueError(f"evaluation points must be in [1, p), got {bad}")


def split(secret: int, threshold: int, xs: Sequence[int]) -> list[int]:
    """Share a secret so that any ``threshold`` of the shares reconstruct it.

    Parameters
    ----------
    secret : int
        Value in [0, p).
    threshold : int
        t >= 1; the random polynomial has degree t - 1.
    xs : Sequence[int]
        Distinct non-zero evaluation points, one per holder, at least ``threshold`` of them.

    Returns
    -------
    list[int]
        Share values f(x) for each x in ``xs``, in the same order.
    """
    if not 0 <= secret < PRIME:
        raise ValueError("secret must be in [0, p)")
    if not 1 <= threshold <= len(xs):
        raise ValueError(
            f"threshold must be in [1, {len(xs)}] for {len(xs)} holders, got {threshold}"
        )
    _check_points(xs)
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = [0] * len(xs)
    for coefficient in reversed(coefficients):  # Horner, all points at once
        shares = [(share * x + coefficient) % PRIME for share, x in zip(shares, xs, strict=True)]
    return shares


def combine(xs: Sequence[int], shares: Sequence[int]) -> int:
    """Lagrange-interpolate the shared polynomial at 0.

    With at least t honest shares this is the secret; with fewer it is an unrelated field element
    (nothing signals the difference, so callers check the count or verify the result).

    Parameters
    ----------
    xs : Sequence[int]
        Distinct non-zero evaluation points.
    shares : Sequence[int]
        Share values at ``xs``, each in [0, p).

    Returns
    -------
    int
        f(0) in [0, p).
    """
    if len(xs) != len(shares) or not xs:
        raise ValueError(
            f"need matching non-empty points and shares, got {len(xs)} and {len(shares)}"
        )
    _check_points(xs)
    # Sum of y_i * l_i(0) kept as one fraction num/den, so a single modular inverse suffices.
    numerator, denominator = 0, 1
    for i, (x_i, y_i) in enumerate(zip(xs, shares, strict=True)):
        basis_num, basis_den = 1, 1
        for j, x_j in enumerate(xs):
            if j != i:
                basis_num = basis_num * x_j % PRIME
                basis_den = basis_den * (x_j - x_i) % PRIME
        numerator = (numerator * basis_den + y_i * basis_num * denominator) % PRIME
        denominator = denominator * basis_den % PRIME
    return numerator * pow(denominator, -1, PRIME) % PRIME


def share_to_bytes(share: int) -> bytes:
    """Encode a field element as ``SHARE_BYTES`` big-endian bytes."""
    return share.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(blob: bytes) -> int:
    """Decode a field element written by :func:`share_to_bytes`.

    Raises
    ------
    ValueError
        If ``blob`` has the wrong length or encodes a value >= p.
    """
    if not isinstance(blob, bytes) or len(blob) != SHARE_BYTES:
        raise ValueError(f"a share must be {SHARE_BYTES} bytes")
    value = int.from_bytes(blob, "big")
    if value >= PRIME:
        raise ValueError("share value is not a field element (>= p)")
    return value
