"""Classification metrics: accuracy, negative log-likelihood and expected calibration error."""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of (N, K) probabilities against (N,) integer labels."""
    return float(np.mean(probs.argmax(axis=1) == labels))


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood (nats) of the true labels under (N, K) probabilities."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, None))))


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (count, mean confidence, accuracy) over `n_bins` equal-width confidence bins.

    Bin b covers (b/n, (b+1)/n]; confidence 0 falls in the first bin. Empty bins have 0 entries.
    """
    confidence = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bin_ids = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(bin_ids, minlength=n_bins).astype(np.float64)
    safe = np.maximum(counts, 1.0)
    mean_conf = np.bincount(bin_ids, weights=confidence, minlength=n_bins) / safe
    mean_acc = np.bincount(bin_ids, weights=correct, minlength=n_bins) / safe
    return counts, mean_conf, mean_acc


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE (Guo et al. 2017): Σ_b (n_b / N) · |acc_b − conf_b| over equal-width bins."""
    counts, mean_conf, mean_acc = reliability_bins(probs, labels, n_bins)
    return float(np.sum(counts / counts.sum() * np.abs(mean_acc - mean_conf)))
