"""Fixed-point encoding of float arrays into integers mod 2^m (two's complement) and back.

A value x becomes round(x · 2^f) mod 2^m, so small negative values (distributed-DP noise) encode
as large residues and a sum of encodings decodes back to the signed sum, provided the true sum
never leaves [-2^(m-1), 2^(m-1)). :func:`choose_modulus_bits` and :func:`check_no_wrap` enforce
that for n clients whose values all satisfy |x| <= B.

Quantisation: each encoded element is off by at most 2^-(f+1), so a decoded sum of n clients is
within n · 2^-(f+1) of the float sum per element, and a decoded mean within 2^-(f+1).
"""

from __future__ import annotations

import math

import numpy as np

WORD_BITS = 64


def _max_encoded(value_bound: float, frac_bits: int) -> int:
    """Largest |round(x · 2^f)| for |x| <= B."""
    if not (math.isfinite(value_bound) and value_bound > 0):
        raise ValueError(f"value_bound must be a finite number > 0, got {value_bound}")
    if not 0 <= frac_bits < WORD_BITS - 1:
        raise ValueError(f"frac_bits must be in [0, {WORD_BITS - 2}], got {frac_bits}")
    return math.ceil(math.ldexp(value_bound, frac_bits))


def choose_modulus_bits(n_clients: int, value_bound: float, frac_bits: int) -> int:
    """Smallest m such that a sum of n encodings with |x| <= B cannot wrap mod 2^m.

    Parameters
    ----------
    n_clients : int
        Number of summed contributions n >= 1.
    value_bound : float
        B > 0, bound on |x| of every element of every contribution.
    frac_bits : int
        Fractional bits f.

    Returns
    -------
    int
        m in [2, 64] with n · ceil(B · 2^f) <= 2^(m-1) - 1.

    Raises
    ------
    ValueError
        If even m = 64 (the uint64 word) could wrap.
    """
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    worst_sum = n_clients * _max_encoded(value_bound, frac_bits)
    bits = worst_sum.bit_length() + 1  # + sign bit
    if bits > WORD_BITS:
        raise ValueError(
            f"a sum of {n_clients} values with |x| <= {value_bound} at frac_bits={frac_bits} "
            f"reaches {worst_sum} in magnitude and needs {bits} bits, more than the "
            f"{WORD_BITS}-bit word; lower frac_bits (label_bits) or value_bound "
            "(secagg_weight_bound)"
        )
    return max(bits, 2)


def check_no_wrap(n_clients: int, value_bound: float, frac_bits: int, modulus_bits: int) -> None:
    """Raise ValueError if a sum of n encodings with |x| <= B could wrap mod 2^m.

    Parameters
    ----------
    n_clients, value_bound, frac_bits
        As in :func:`choose_modulus_bits`.
    modulus_bits : int
        The configured m.
    """
    needed = choose_modulus_bits(n_clients, value_bound, frac_bits)
    if modulus_bits > WORD_BITS or modulus_bits < needed:
        raise ValueError(
            f"modulus_bits={modulus_bits} cannot hold a sum of {n_clients} values with "
            f"|x| <= {value_bound} at frac_bits={frac_bits}: need {needed} <= m <= {WORD_BITS}"
        )


def encode(values: np.ndarray, frac_bits: int, modulus_bits: int, value_bound: float) -> np.ndarray:
    """Encode floats as fixed-point integers mod 2^m.

    Parameters
    ----------
    values : np.ndarray
        Float array of any shape, every |x| <= ``value_bound`` (clip DP noise before encoding).
    frac_bits : int
        Fractional bits f.
    modulus_bits : int
        m in [2, 64].
    value_bound : float
        B, the bound the modulus was chosen for.

    Returns
    -------
    np.ndarray
        Same shape, dtype uint64, values in [0, 2^m).

    Raises
    ------
    ValueError
        If a value is not finite or exceeds the bound, or one value alone does not fit m bits.
    """
    check_no_wrap(1, value_bound, frac_bits, modulus_bits)
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("values to encode must be finite")
    largest = float(np.max(np.abs(values), initial=0.0))
    if largest > value_bound:
        raise ValueError(f"values must satisfy |x| <= value_bound={value_bound}, got {largest}")
    fixed = np.rint(np.ldexp(values, frac_bits)).astype(np.int64)
    return fixed.view(np.uint64) & np.uint64(2**modulus_bits - 1)  # two's complement mod 2^m


def decode_sum(total: np.ndarray, frac_bits: int, modulus_bits: int) -> np.ndarray:
    """Decode a sum of encodings (or a single encoding) back to floats.

    Parameters
    ----------
    total : np.ndarray
        uint64 array of any shape, values in [0, 2^m), read as signed m-bit two's complement.
    frac_bits : int
        Fractional bits f.
    modulus_bits : int
        m in [2, 64].

    Returns
    -------
    np.ndarray
        Same shape, float64. Exact fixed-point values while m <= 53; for a sum of n encodings
        of values within the bound, each element is within n · 2^-(f+1) of the float sum.
    """
    total = np.asarray(total)
    if total.dtype != np.uint64:
        raise ValueError(f"total must have dtype uint64, got {total.dtype}")
    if modulus_bits < WORD_BITS and np.any(total >> np.uint64(modulus_bits)):
        raise ValueError(f"total has values >= 2^{modulus_bits}")
    shift = np.uint64(WORD_BITS - modulus_bits)
    signed = (total << shift).view(np.int64) >> np.int64(shift)  # sign-extend from bit m-1
    return np.ldexp(signed.astype(np.float64), -frac_bits)
