"""Lossless wire coding of quantised soft labels and of public-index sets (plain messages).

Counts (Q, K) at b bits travel as LZMA over byte planes: column K is dropped when every row sums
to 2^b (it follows from the others), values are stored in the narrowest unsigned integer type
that holds 2^b, and the bytes are regrouped so that byte j of every value is contiguous (the high
bytes of soft-label counts are mostly zero and compress to almost nothing). Decoding refuses
anything that is not exactly such a payload, and never inflates beyond the expected size.

Index sets (sorted, unique public indices) travel as a bitmask over the public set: ⌈N/8⌉ bytes
instead of 8·Q.
"""

from __future__ import annotations

import lzma

import numpy as np

from common.quantise import check_counts

# Preset 9's 64 MiB dictionary costs 7× the time and ~670 MiB per compressor for the same bytes
# on payloads of this size (measured: 3 200 × 10 counts, 6–8 ms instead of 44–56 ms).
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << 20}]


def count_dtype(bits: int) -> np.dtype:
    """Narrowest unsigned type holding 0 … 2^bits."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if 2**bits <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label_bits={bits} is too wide for the count coding (max 31)")


def encode_counts(counts: np.ndarray, bits: int, per_row: bool) -> np.ndarray:
    """(Q, K) int64 counts → (L,) uint8 LZMA payload.

    Parameters
    ----------
    counts : (Q, K) counts at `bits` bits (rows sum to 2^b unless `per_row`).
    bits : label_bits b.
    per_row : whether row totals vary (per-row weights); otherwise column K is implied.
    """
    check_counts(counts, bits, per_row, counts.shape)
    return compress_columns(counts if per_row else counts[:, :-1], bits)


def compress_columns(columns: np.ndarray, bits: int) -> np.ndarray:
    """(Q, K') non-negative integers < 2^(8·width) → (L,) uint8 LZMA over byte planes (no checks:
    `encode_counts` validates first)."""
    values = np.ascontiguousarray(columns, dtype=count_dtype(bits)).ravel()
    planes = values.view(np.uint8).reshape(values.size, -1).T  # (bytes per value, Q·K')
    compressed = lzma.compress(planes.tobytes(), format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    return np.frombuffer(compressed, dtype=np.uint8)


def decode_counts(
    payload: np.ndarray, bits: int, per_row: bool, shape: tuple[int, int]
) -> np.ndarray:
    """Inverse of `encode_counts` for an expected (Q, K) shape; ValueError for bad payloads."""
    payload = np.asarray(payload)
    if payload.dtype != np.uint8 or payload.ndim != 1:
        raise ValueError(f"coded counts must be 1-D uint8, got {payload.dtype} {payload.shape}")
    n_rows, n_classes = shape
    width = n_classes if per_row else n_classes - 1
    dtype = count_dtype(bits)
    expected = n_rows * width * dtype.itemsize
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    try:
        raw = decompressor.decompress(payload.tobytes(), max_length=expected + 1)
    except lzma.LZMAError as error:
        raise ValueError(f"coded counts do not decompress ({error})") from None
    if len(raw) != expected or not decompressor.eof:
        raise ValueError(
            f"coded counts hold {len(raw)}{'' if decompressor.eof else '+'} bytes, expected "
            f"{expected} ({n_rows}×{width} values of {dtype.itemsize} bytes)"
        )
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(dtype.itemsize, n_rows * width)
    values = np.ascontiguousarray(planes.T).view(dtype).reshape(n_rows, width).astype(np.int64)
    if per_row:
        counts = values
    else:
        counts = np.concatenate([values, 2**bits - values.sum(axis=1, keepdims=True)], axis=1)
    check_counts(counts, bits, per_row, shape)
    return counts


def encode_indices(indices: np.ndarray, n_public: int) -> np.ndarray:
    """Sorted unique indices in [0, N) → (⌈N/8⌉,) uint8 bitmask."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (
        indices.min() < 0 or indices.max() >= n_public or np.any(np.diff(indices) <= 0)
    ):
        raise ValueError(f"indices must be sorted, unique and in [0, {n_public})")
    mask = np.zeros(n_public, dtype=bool)
    mask[indices] = True
    return np.packbits(mask)


def decode_indices(bitmask: np.ndarray, n_public: int) -> np.ndarray:
    """Inverse of `encode_indices`: (⌈N/8⌉,) uint8 → (Q,) sorted int64 indices."""
    bitmask = np.asarray(bitmask)
    expected = (n_public + 7) // 8
    if bitmask.dtype != np.uint8 or bitmask.shape != (expected,):
        raise ValueError(
            f"index bitmask must be {expected} uint8 bytes for {n_public} public samples, "
            f"got {bitmask.dtype} {bitmask.shape}"
        )
    bits = np.unpackbits(bitmask)
    if bits[n_public:].any():
        raise ValueError(f"index bitmask marks samples beyond the public set's {n_public}")
    return np.flatnonzero(bits[:n_public]).astype(np.int64)
