"""Names and payload layouts shared by the ServerApp and the ClientApp (the wire contract).

One round, plain aggregation: the server sends `train` with a `round` ConfigRecord (round number,
public-set hash, secagg flag) and an `arrays` ArrayRecord (`query_indices` (Q,) int64, optional
`digest_probs` (Q', K) float32 with `digest_indices` (Q',) int64); the client answers with a
`contribution` ArrayRecord (`probs` (Q, K) float32) and a `contribution` ConfigRecord (`weight`).
Under secure aggregation the same `train` message starts the protocol; see `server.secure`.
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
    probs : (Q, K) float32 temperature-softened probabilities on the queried public samples.
    weight : the client's ensemble weight (1.0 for the uniform rule, its private sample count
        for the weighted rule); the server receives Σ w_i · probs_i and Σ w_i.
    """

    probs: np.ndarray
    weight: float

    def weighted_vector(self) -> np.ndarray:
        """Flat float64 vector [w · probs.ravel(), w] of length Q·K + 1: what gets summed."""
        flat = self.probs.astype(np.float64).ravel() * self.weight
        return np.concatenate([flat, [self.weight]])


def split_weighted_vector(vector: np.ndarray, num_classes: int) -> tuple[np.ndarray, float]:
    """Inverse of `Contribution.weighted_vector` for a (sum of) vector(s): → ((Q, K), Σw)."""
    if (len(vector) - 1) % num_classes:
        raise ValueError(f"vector length {len(vector)} is not Q·{num_classes} + 1")
    return vector[:-1].reshape(-1, num_classes), float(vector[-1])


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
