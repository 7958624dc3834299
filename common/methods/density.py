"""How far a public sample lies from a client's private data, for client-side selectors.

Two estimators on the teacher's penultimate features (the input of its last linear layer),
both fitted on the client's private inputs against public inputs, so the public set plays the
reference distribution q and the private set the numerator p:
- `kulsif_ratio`: the density ratio r(x) = p(x) / q(x) by KuLSIF (Kanamori, Suzuki & Sugiyama,
  Machine Learning 2012), the estimator Selective-FD uses;
- `logistic_certainty`: P(private | x) from an L2-regularised logistic regression with balanced
  classes, FedAUX's certainty score (Sattler et al., IEEE TNNLS 2022).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

KULSIF_LAMBDA = 1e-3  # the Selective-FD reference setting
LOGISTIC_L2 = 1e-2
LOGISTIC_STEPS = 50


@torch.no_grad()
def penultimate_features(
    model: nn.Module, x: np.ndarray, device: torch.device, batch: int = 1024
) -> np.ndarray:
    """The input of `model`'s last nn.Linear for inputs (N, ...): → (N, D) float64."""
    last = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not last:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to read features from")
    captured: list[torch.Tensor] = []
    hook = last[-1].register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    try:
        model.to(device).eval()
        inputs = torch.as_tensor(x)
        for start in range(0, len(inputs), batch):
            model(inputs[start : start + batch].to(device))
    finally:
        hook.remove()
    return torch.cat([c.flatten(1).cpu() for c in captured]).double().numpy()


def standardise(reference: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """Scale every array by `reference`'s per-feature mean and std (std 0 → 1)."""
    mean = reference.mean(axis=0)
    std = reference.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in arrays]


def _gaussian_kernel(a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    """exp(−‖a_i − b_j‖² / (2σ²)): (N, D), (M, D) → (N, M)."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-np.clip(sq, 0.0, None) / (2.0 * width**2))


def median_width(a: np.ndarray, b: np.ndarray) -> float:
    """The median heuristic: median pairwise distance between rows of a and b (> 0)."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    width = float(np.sqrt(np.median(np.clip(sq, 0.0, None))))
    return width if width > 0 else 1.0


def kulsif_ratio(
    numerator: np.ndarray,
    denominator: np.ndarray,
    queries: np.ndarray,
    width: float,
    lam: float = KULSIF_LAMBDA,
) -> np.ndarray:
    """KuLSIF estimate of r(x) = p(x) / q(x) at `queries`.

    Minimises ½·E_q[r²] − E_p[r] + ½λ‖r‖² over a Gaussian RKHS; the minimiser is
    r(x) = Σ_i α_i k(x, y_i) + (1 / (mλ)) Σ_j k(x, x_j) with
    α = −(K_yy / n + λI)⁻¹ K_yx 1 / (n m λ).

    Parameters
    ----------
    numerator : (m, D) samples x_j of p (the client's private features).
    denominator : (n, D) samples y_i of q (public features).
    queries : (Q, D) where to evaluate r.
    width : Gaussian kernel width σ > 0.
    lam : ridge λ > 0.

    Returns
    -------
    (Q,) float64 ratio estimates (may dip below 0 where p has no mass).
    """
    m, n = len(numerator), len(denominator)
    k_yy = _gaussian_kernel(denominator, denominator, width)  # (n, n)
    k_yx = _gaussian_kernel(denominator, numerator, width)  # (n, m)
    rhs = k_yx.sum(axis=1) / (n * m * lam)  # (n,)
    alpha = -np.linalg.solve(k_yy / n + lam * np.eye(n), rhs)  # (n,)
    from_q = _gaussian_kernel(queries, denominator, width) @ alpha  # (Q,)
    from_p = _gaussian_kernel(queries, numerator, width).mean(axis=1) / lam  # (Q,)
    return from_q + from_p


def logistic_certainty(
    positives: np.ndarray, negatives: np.ndarray, queries: np.ndarray
) -> np.ndarray:
    """P(positive | x) at `queries` from a class-balanced, L2-regularised logistic regression.

    Parameters
    ----------
    positives : (m, D) the client's private features (label 1).
    negatives : (n, D) public features (label 0).
    queries : (Q, D).

    Returns
    -------
    (Q,) float64 in (0, 1).
    """
    x = torch.as_tensor(np.concatenate([positives, negatives]), dtype=torch.float64)  # (m+n, D)
    y = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).double()
    sample_weight = torch.where(y > 0, 0.5 / len(positives), 0.5 / len(negatives))
    weights = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=LOGISTIC_STEPS)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weights + bias
        loss = (
            sample_weight
            * torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        ).sum() + LOGISTIC_L2 * (weights**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        query = torch.as_tensor(queries, dtype=torch.float64)
        return torch.sigmoid(query @ weights + bias).numpy()
