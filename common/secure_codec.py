"""Between soft labels and secure aggregation: encode a contribution, decode a secure sum.

The summed vector is [w·P.ravel(), w] (length Q·K + 1), in fixed point mod 2^m. Both sides derive
the same element bound B from the run config, so the server can pick m such that the sum of the
cohort cannot wrap, and a client refuses values outside B instead of corrupting the sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

from common.config import RunConfig
from common.dp import noise_share_std, soft_label_sensitivity
from common.protocol import Contribution, arrays_to_record, record_to_arrays, split_weighted_vector
from common.secagg import SecAggParams
from common.secagg.encoding import decode_sum, encode


def client_policy(config: RunConfig) -> SecAggParams:
    """The SecAgg+ settings this run asks for (zeros are resolved per cohort)."""
    return SecAggParams(
        neighbours=config.secagg_neighbours,
        threshold=config.secagg_threshold,
        frac_bits=config.label_bits,
        min_cohort=config.secagg_min_cohort,
    )


NOISE_CLIP_SIGMAS = 8.0  # a noise share beyond 8σ has probability ~1e-15 per entry


def dp_noise_share_std(config: RunConfig, n_query: int, cohort_size: int) -> float:
    """Per-client std of the distributed-DP noise on each soft-label entry (0 when DP is off).

    σ = z · Δ₂ with Δ₂ = sqrt(2·Q) (replace one client, rows on the simplex; see common.dp),
    split so that n_min = `dp_min_clients` (or the cohort size) shares carry σ².
    """
    if config.dp_noise_multiplier == 0:
        return 0.0
    n_min = config.dp_min_clients or cohort_size
    sensitivity = soft_label_sensitivity(n_query, "replace")
    return noise_share_std(config.dp_noise_multiplier, sensitivity, n_min)


def value_bound(config: RunConfig, noise_std: float = 0.0) -> float:
    """B ≥ |x| for every element a client sums: probabilities and weights are ≤ the weight,
    plus room for a DP noise share clipped at NOISE_CLIP_SIGMAS standard deviations."""
    base = config.secagg_weight_bound if config.ensemble == "weighted" else 1.0
    return base + NOISE_CLIP_SIGMAS * noise_std


def encode_contribution(
    contribution: Contribution, params: SecAggParams, bound: float
) -> np.ndarray:
    """Contribution → uint64 vector (Q·K + 1,) mod 2^m, or ValueError if it exceeds the bound."""
    return encode(contribution.weighted_vector(), params.frac_bits, params.modulus_bits, bound)


def decode_aggregate(
    total: np.ndarray, params: SecAggParams, num_classes: int, per_row_weights: bool = False
) -> tuple[np.ndarray, np.ndarray | float]:
    """Secure sum → (Σ w·P as (Q, K) float64, Σ w as a float, or (Q,) per-row totals).

    The sum is (Q·K + 1,) uint64 without per-row weights, (Q·K + Q,) with them.
    """
    values = decode_sum(total, params.frac_bits, params.modulus_bits)
    return split_weighted_vector(values, num_classes, per_row_weights)


def payload_to_records(payload: dict[str, Any]) -> tuple[ConfigRecord, ArrayRecord]:
    """A SecAgg payload → (scalars/bytes/lists as ConfigRecord, arrays as ArrayRecord)."""
    arrays = {k: v for k, v in payload.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in payload.items() if not isinstance(v, np.ndarray)}
    return ConfigRecord(scalars), arrays_to_record(arrays)


def records_to_payload(config: ConfigRecord, arrays: ArrayRecord) -> dict[str, Any]:
    """Inverse of `payload_to_records`."""
    return {**dict(config), **record_to_arrays(arrays)}
