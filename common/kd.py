"""Knowledge-distillation losses and the rules that turn client soft labels into a teacher."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def soft_labels(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-softened probabilities softmax(z / T): (B, K) -> (B, K)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.softmax(logits / temperature, dim=-1)


def kd_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Hinton et al. 2015 distillation loss T² · KL(p_teacher ‖ softmax(z_student / T)).

    Parameters
    ----------
    student_logits : (B, K) raw student outputs z_s.
    teacher_probs : (B, K) teacher probabilities already softened at temperature T.
    temperature : T > 0; the T² factor keeps gradient magnitudes comparable across T.

    Returns
    -------
    Scalar, mean over the batch. Its gradient with respect to z_s is T · (p_s − p_t) / B.
    """
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher probs "
            f"{tuple(teacher_probs.shape)} must have the same shape"
        )
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)  # (B, K)
    kl = F.kl_div(log_p_student, teacher_probs, reduction="batchmean")
    return kl * temperature**2


def ensemble_mean(weighted_sum: np.ndarray, total_weight: float) -> np.ndarray:
    """Ensemble teacher from an aggregate: S / Σw, rows renormalised onto the simplex.

    Parameters
    ----------
    weighted_sum : (Q, K) Σ_i w_i · P_i (possibly quantised or noised by secure aggregation/DP).
    total_weight : Σ_i w_i > 0.

    Returns
    -------
    (Q, K) float64 probabilities; negative entries (DP noise) are clipped to 0 first.
    """
    if total_weight <= 0:
        raise ValueError(f"total weight of the aggregate must be > 0, got {total_weight}")
    mean = np.clip(weighted_sum / total_weight, 0.0, None)  # (Q, K)
    row_sums = mean.sum(axis=1, keepdims=True)
    uniform = np.full_like(mean, 1.0 / mean.shape[1])
    return np.where(row_sums > 0, mean / np.where(row_sums > 0, row_sums, 1.0), uniform)


def era_sharpen(probs: np.ndarray, era_temperature: float) -> np.ndarray:
    """Entropy-reduction aggregation (Itahara et al., DS-FL 2021): softmax(P̄ / T_era) per row.

    A small T_era (e.g. 0.1) sharpens the averaged non-IID soft labels; (Q, K) -> (Q, K).
    """
    if era_temperature <= 0:
        raise ValueError(f"era_temperature must be > 0, got {era_temperature}")
    scaled = probs / era_temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)
