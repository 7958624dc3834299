"""Knowledge-distillation losses and the rules that turn client soft labels into a teacher.

Losses are pure functions of tensors, each with its paper: the KD loss (Hinton et al. 2015) and
its cross-entropy twin, the feature-hint loss with its learned adapter (FitNets, Romero et al.
2015), and the relational distance and angle losses (RKD, Park et al. CVPR 2019). The student's
objective in the federated path is chosen by name from `STUDENT_LOSSES` (`student_loss`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Park et al.'s official code distils with dist_ratio 1 and angle_ratio 2 (lenscloth/RKD).
RKD_DISTANCE_WEIGHT = 1.0
RKD_ANGLE_WEIGHT = 2.0


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


def soft_target_cross_entropy(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · H(p_teacher, softmax(z_student / T)), the cross-entropy form of `kd_loss`.

    CE(p_t, p_s) = KL(p_t ‖ p_s) + H(p_t), and H(p_t) does not depend on the student, so this
    loss exceeds `kd_loss` by T² · H(p_t) (batch mean) and has exactly the same gradient
    T · (p_s − p_t) / B with respect to z_s (Hinton et al. 2015, section 2).

    Parameters
    ----------
    student_logits : (B, K) raw student outputs z_s.
    teacher_probs : (B, K) teacher probabilities already softened at temperature T.
    temperature : T > 0.

    Returns
    -------
    Scalar, mean over the batch.
    """
    _check_pair(student_logits, teacher_probs)
    log_p_student = F.log_softmax(student_logits / _positive(temperature), dim=-1)  # (B, K)
    return -(teacher_probs * log_p_student).sum(dim=-1).mean() * temperature**2


def hint_adapter(student_channels: int, teacher_channels: int, rank: int) -> nn.Module:
    """The learned regressor r of FitNets (Romero et al. 2015) for features of one rank.

    rank 2: (B, C_s) -> (B, C_t) linear; rank 3: (B, C_s, L) -> (B, C_t, L) a 1×1 convolution
    (the student and teacher layers must have the same length L, as the cnn1d family at equal
    depth does). It is trained together with the student; the teacher stays fixed.
    """
    if rank == 2:
        return nn.Linear(student_channels, teacher_channels)
    if rank == 3:
        return nn.Conv1d(student_channels, teacher_channels, kernel_size=1)
    raise ValueError(f"hint features must have rank 2 (B, C) or 3 (B, C, L), got rank {rank}")


def hint_loss(
    student_features: torch.Tensor, teacher_features: torch.Tensor, adapter: nn.Module
) -> torch.Tensor:
    """FitNets hint loss (Romero et al. 2015): mean over elements of (r(u_s) − v_t)².

    The paper's ½‖r(u_s) − v_t‖² per sample, divided by the number of feature elements (and
    without the ½), so one weight means the same at layers of different sizes.

    Parameters
    ----------
    student_features : (B, C_s, ...) the student's guided-layer output u_s.
    teacher_features : (B, C_t, ...) the teacher's hint-layer output v_t (no gradient needed).
    adapter : r, mapping (B, C_s, ...) to (B, C_t, ...); see `hint_adapter`.

    Returns
    -------
    Scalar. Its gradient flows into the student and the adapter, never into the teacher.
    """
    regressed = adapter(student_features)  # (B, C_t, ...)
    if regressed.shape != teacher_features.shape:
        raise ValueError(
            f"adapted student features {tuple(regressed.shape)} do not match teacher features "
            f"{tuple(teacher_features.shape)}"
        )
    return ((regressed - teacher_features.detach()) ** 2).mean()


def pairwise_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances between the rows of (B, D) embeddings: (B, B), zero diagonal.

    From the Gram matrix (‖e_i‖² + ‖e_j‖² − 2⟨e_i, e_j⟩, no (B, B, D) tensor); the squared
    distances are clamped at `eps` before the square root so the gradient stays finite for
    coincident rows.
    """
    gram = embeddings @ embeddings.T  # (B, B)
    norms = gram.diagonal()
    squared = norms[:, None] + norms[None, :] - 2 * gram
    off_diagonal = ~torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
    return squared.clamp_min(eps).sqrt() * off_diagonal


def rkd_distance_loss(
    student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor
) -> torch.Tensor:
    """RKD distance loss (Park et al., CVPR 2019, eq. 4–5).

    ψ_D(e_i, e_j) = ‖e_i − e_j‖ / μ with μ the mean distance over the batch's pairs i ≠ j (one
    μ per embedding space), compared with the Huber loss (δ = 1) and averaged over the ordered
    pairs i ≠ j. Invariant to the scale of either embedding, so D_s and D_t may differ.

    Parameters
    ----------
    student_embeddings : (B, D_s).
    teacher_embeddings : (B, D_t), treated as constant.

    Returns
    -------
    Scalar; 0 (still differentiable) for B < 2.
    """
    _check_batches(student_embeddings, teacher_embeddings)
    batch = len(student_embeddings)
    if batch < 2:
        return student_embeddings.sum() * 0.0
    pairs = ~torch.eye(batch, dtype=torch.bool, device=student_embeddings.device)
    student = pairwise_distances(student_embeddings)[pairs]  # (B(B−1),)
    teacher = pairwise_distances(teacher_embeddings.detach())[pairs]
    student = student / student.mean().clamp_min(1e-12)
    teacher = teacher / teacher.mean().clamp_min(1e-12)
    return F.smooth_l1_loss(student, teacher, beta=1.0)


def rkd_angle_loss(
    student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor
) -> torch.Tensor:
    """RKD angle loss (Park et al., CVPR 2019, eq. 6–7).

    ψ_A(e_i, e_j, e_k) = cos ∠e_i e_j e_k = ⟨(e_i − e_j)/‖e_i − e_j‖, (e_k − e_j)/‖e_k − e_j‖⟩,
    compared with the Huber loss (δ = 1) and averaged over the ordered triples of distinct
    indices (vertex j; B(B−1)(B−2) of them).

    Parameters
    ----------
    student_embeddings : (B, D_s).
    teacher_embeddings : (B, D_t), treated as constant.

    Returns
    -------
    Scalar; 0 (still differentiable) for B < 3.
    """
    _check_batches(student_embeddings, teacher_embeddings)
    batch = len(student_embeddings)
    if batch < 3:
        return student_embeddings.sum() * 0.0
    # Triples with a repeated index contribute 0: a zero difference has cosine 0 and i = k has
    # cosine 1, in both spaces alike. So the sum over all B³ entries is the sum over distinct ones.
    student = _cosines(student_embeddings)  # (B, B, B)
    teacher = _cosines(teacher_embeddings.detach())
    distinct = batch * (batch - 1) * (batch - 2)
    return F.smooth_l1_loss(student, teacher, beta=1.0, reduction="sum") / distinct


def _cosines(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B, B): entry [j, i, k] is the cosine of the angle at e_j between e_i, e_k
    (0 where e_i = e_j or e_k = e_j)."""
    batch, dim = embeddings.shape
    if dim <= batch:  # explicit differences are cheaper while (B, B, D) is small
        differences = embeddings.unsqueeze(0) - embeddings.unsqueeze(1)  # [j, i] = e_i − e_j
        unit = F.normalize(differences, p=2, dim=-1)  # (B, B, D)
        return torch.bmm(unit, unit.transpose(1, 2))
    # ⟨e_i − e_j, e_k − e_j⟩ = G_ik − G_ji − G_jk + G_jj from the Gram matrix G (B, B).
    gram = embeddings @ embeddings.T
    norms = gram.diagonal()
    lengths = (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(1e-24).sqrt()  # [j, i]
    inner = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + norms[:, None, None]
    apart = (~torch.eye(batch, dtype=torch.bool, device=embeddings.device)).to(gram.dtype)
    # Clamped: rounding in nearly coincident rows must not leave [−1, 1].
    cosines = (inner / (lengths[:, :, None] * lengths[:, None, :])).clamp(-1.0, 1.0)
    return cosines * apart[:, :, None] * apart[:, None, :]  # i = j or k = j: 0, as above


def kd_rkd_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """`kd_loss` plus RKD on the outputs: λ_D · distance + λ_A · angle loss (Park et al. 2019).

    The embeddings are the softened output distributions, softmax(z_s / T) (B, K) against the
    teacher's (B, K): in the federated path the server holds only the ensemble's probabilities,
    so the geometry of the outputs is the relation it can transfer. λ_D = 1, λ_A = 2 as in the
    authors' code (`RKD_DISTANCE_WEIGHT`, `RKD_ANGLE_WEIGHT`).
    """
    student_probs = F.softmax(student_logits / _positive(temperature), dim=-1)  # (B, K)
    return (
        kd_loss(student_logits, teacher_probs, temperature)
        + RKD_DISTANCE_WEIGHT * rkd_distance_loss(student_probs, teacher_probs)
        + RKD_ANGLE_WEIGHT * rkd_angle_loss(student_probs, teacher_probs)
    )


# The student's objective in the federated path, by its `student_loss` name.
STUDENT_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "kd": lambda student_logits, teacher_probs, temperature: kd_loss(
        student_logits, teacher_probs, temperature
    ),
    "kd+rkd": lambda student_logits, teacher_probs, temperature: kd_rkd_loss(
        student_logits, teacher_probs, temperature
    ),
}


def _positive(temperature: float) -> float:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature


def _check_pair(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> None:
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher probs "
            f"{tuple(teacher_probs.shape)} must have the same shape"
        )


def _check_batches(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 2 or teacher.dim() != 2 or len(student) != len(teacher):
        raise ValueError(
            f"RKD needs (B, D_s) and (B, D_t) embeddings of one batch, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


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


def at_unit_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Read T-softened (Q, K) probabilities at T = 1: p^T renormalised per row.

    softmax(z / T)^T ∝ softmax(z), so for one teacher this recovers its T = 1 prediction
    exactly; for an ensemble it is what a student matching the ensemble exactly at T would
    predict at T = 1 (the student's test-time reading).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logs = temperature * np.log(np.clip(probs, 1e-300, None))  # (Q, K)
    logs -= logs.max(axis=1, keepdims=True)
    exp = np.exp(logs) * (probs > 0)
    return exp / exp.sum(axis=1, keepdims=True)


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
