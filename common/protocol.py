"""Names and payload layouts shared by the ServerApp and the ClientApp (the wire contract).

One round, plain aggregation: the server sends `train` with a `round` ConfigRecord (round number,
public-set hash, secagg flag, `label_bits`) and an `arrays` ArrayRecord
(`query_mask`: the queried public indices as a bitmask, and optionally `digest_mask` with
`digest_counts`, the previous ensemble quantised at `label_bits` and LZMA-coded; see
`common.label_coding`); the client answers with a `contribution` ArrayRecord (`counts`: its
quantised soft labels, LZMA-coded) and a `round` ConfigRecord (`weight`, `public_hash`,
`label_bits`). Under secure aggregation the same `train` message starts the protocol; see
`server.secure_aggregator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

MSG_DESCRIBE = "query.describe"
MSG_TRAIN = "train"

ROUND_RECORD = "round"
ARRAYS_RECORD = "arrays"
CONTRIBUTION_RECORD = "contribution"
METRICS_RECORD = "client_metrics"
NODE_RECORD = "node"
SECAGG_CONFIG = "secagg"
SECAGG_ARRAYS = "secagg_arrays"


@dataclass(frozen=True)
class Contribution:
    """What one client reports for one round, before any encoding or masking.

    Attributes
    ----------
    probs : (Q, K) temperature-softened probabilities on the queried public samples (float32
        from the teacher, float64 once quantised at `label_bits`; see `common.quantise`).
    weight : the client's ensemble weight (1.0 for the uniform rule, its private sample count
        for the weighted rule).
    row_weights : (Q,) per-row weights r_j in [0, 1] (0 = abstain on that row) for methods with
        per-row weights, else None.

    The server receives only sums over clients: Σ w·probs and Σ w without row weights;
    Σ w·r_j·probs_j and Σ w·r_j per row with them.
    """

    probs: np.ndarray
    weight: float
    row_weights: np.ndarray | None = None

    def weighted_vector(self) -> np.ndarray:
        """Flat float64 vector of what gets summed.

        Without row weights: [w · probs.ravel(), w], length Q·K + 1; with them:
        [(w · r[:, None] · probs).ravel(), w · r], length Q·K + Q.
        """
        probs = self.probs.astype(np.float64)  # (Q, K)
        if self.row_weights is None:
            return np.concatenate([probs.ravel() * self.weight, [self.weight]])
        rows = self.weight * np.asarray(self.row_weights, dtype=np.float64)  # (Q,)
        return np.concatenate([(rows[:, None] * probs).ravel(), rows])


def summed_length(n_query: int, num_classes: int, per_row_weights: bool) -> int:
    """Length of `Contribution.weighted_vector` for Q queried rows and K classes."""
    return n_query * num_classes + (n_query if per_row_weights else 1)


def split_weighted_vector(
    vector: np.ndarray, num_classes: int, per_row_weights: bool = False
) -> tuple[np.ndarray, np.ndarray | float]:
    """Inverse of `Contribution.weighted_vector` for a (sum of) vector(s).

    Returns ((Q, K) weighted sums, Σw as a float) without row weights, or
    ((Q, K), (Q,) per-row totals) with them.
    """
    width = num_classes + 1 if per_row_weights else num_classes
    tail = 0 if per_row_weights else 1
    if (len(vector) - tail) % width:
        layout = f"Q·{num_classes + 1}" if per_row_weights else f"Q·{num_classes} + 1"
        raise ValueError(f"vector length {len(vector)} is not {layout}")
    if not per_row_weights:
        return vector[:-1].reshape(-1, num_classes), float(vector[-1])
    n_query = len(vector) // width
    return vector[: n_query * num_classes].reshape(n_query, num_classes), vector[-n_query:]


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Named NumPy arrays → ArrayRecord (keys kept, so layouts stay self-describing)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord → named NumPy arrays."""
    return {name: array.numpy() for name, array in record.items()}


def payload_bytes(content: RecordDict) -> int:
    """Bytes of all records in a message's content.

    Arrays and metrics use Flower's own count; config records are counted here (8 bytes per
    number, the length of each str/bytes) because flwr 1.42's count fails on empty lists.
    """
    return sum(
        _config_bytes(record) if isinstance(record, ConfigRecord) else record.count_bytes()
        for record in content.values()
    )


def _config_bytes(record: ConfigRecord) -> int:
    def size(value: object) -> int:
        if isinstance(value, list):
            return sum(size(item) for item in value)
        if isinstance(value, (str, bytes)):
            return len(value)
        return 8

    return sum(len(key) + size(value) for key, value in record.items())
