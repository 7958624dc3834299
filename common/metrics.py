"""Classification metrics: accuracy, NLL, expected calibration error, reliability-diagram
data and temperature scaling (the post-hoc calibration baseline)."""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Reliability:
    """What a reliability diagram draws: per equal-width confidence bin, its count, mean
    confidence and accuracy (empty bins: 0), and the ECE they add up to.

    Attributes
    ----------
    edges : (n_bins + 1,) bin edges 0, 1/n, …, 1.
    counts, confidence, accuracy : (n_bins,) each.
    ece : Σ_b (n_b / N) · |acc_b − conf_b|.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> Reliability:
    """The reliability diagram of (N, K) probabilities against (N,) labels (see `Reliability`)."""
    counts, mean_conf, mean_acc = reliability_bins(probs, labels, n_bins)
    ece = float(np.sum(counts / counts.sum() * np.abs(mean_acc - mean_conf)))
    return Reliability(np.linspace(0.0, 1.0, n_bins + 1), counts, mean_conf, mean_acc, ece)


def softmax_at(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(z / T) of (N, K) logits in float64."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Temperature scaling (Guo et al. 2017): the T in `bounds` minimising the NLL of
    softmax(z / T) on (N, K) logits with (N,) labels.

    The NLL is convex in β = 1/T, so a golden-section search over log β finds the minimum to
    about 1e-9 relative precision (deterministic, no optimiser state).
    """
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"temperature bounds must satisfy 0 < low < high, got {bounds}")
    z = np.asarray(logits, dtype=np.float64)  # (N, K)
    true = z[np.arange(len(labels)), labels]  # (N,)
    peak = z.max(axis=1)

    def loss(log_beta: float) -> float:
        beta = math.exp(log_beta)
        log_norm = beta * peak + np.log(np.exp(beta * (z - peak[:, None])).sum(axis=1))
        return float(np.mean(log_norm - beta * true))

    a, b = math.log(1 / high), math.log(1 / low)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    loss_c, loss_d = loss(c), loss(d)
    for _ in range(60):
        if loss_c < loss_d:
            b, d, loss_d = d, c, loss_c
            c = b - ratio * (b - a)
            loss_c = loss(c)
        else:
            a, c, loss_c = c, d, loss_d
            d = a + ratio * (b - a)
            loss_d = loss(d)
    return 1.0 / math.exp((a + b) / 2)


def cross_fitted_temperature_scaling(
    logits: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """Temperature scaling evaluated on every sample without fitting on it (2-fold cross-fit).

    The samples are split in two random halves (seeded); T fitted on each half scales the other,
    so the returned (N, K) probabilities cover the whole set and are comparable with unscaled
    metrics on the same set. Returns the probabilities and the two fitted temperatures.
    """
    order = np.random.default_rng([seed, 41]).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    probs = np.empty(np.shape(logits), dtype=np.float64)
    temperatures = []
    for fit, apply in (halves, halves[::-1]):
        temperature = fit_temperature(logits[fit], labels[fit])
        probs[apply] = softmax_at(logits[apply], temperature)
        temperatures.append(temperature)
    return probs, (temperatures[0], temperatures[1])
