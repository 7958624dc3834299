"""Attack scores: LiRA membership inference and label-distribution inference from soft labels.

Membership scores follow Carlini et al. 2022, "Membership Inference Attacks From First
Principles" (LiRA). Larger scores mean "more likely a member", as `metrics` expects.
Label-distribution inference estimates a client's class histogram from the soft labels it
reports on the public set.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

# Keeps the Gaussian fits finite when every shadow confidence saturates to the same value.
_MIN_STD = 1e-8


def true_label_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Probability a model assigns to each example's true label.

    Parameters
    ----------
    probs : (n, K) probabilities, rows on the simplex.
    labels : (n,) integer labels in [0, K).

    Returns
    -------
    (n,) float64 confidences p_y(x) in [0, 1].
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"probs must be (n, K) and labels (n,), got {probs.shape} and {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    n_classes = probs.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must lie in [0, {n_classes}), got range [{labels.min()}, {labels.max()}]"
        )
    return probs[np.arange(labels.size), labels]


def logit_scale(confidences: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """LiRA's logit scaling φ(p) = log(p / (1 − p)), after clipping p to [eps, 1 − eps].

    The scaled confidences of a fixed example across shadow models are close to Gaussian
    (Carlini et al. 2022, Sec. IV-B); clipping keeps saturated confidences (0 or 1) finite.

    Parameters
    ----------
    confidences : array of any shape, values in [0, 1]; NaN passes through as NaN.
    eps : clipping margin in (0, 0.5).

    Returns
    -------
    float64 array shaped like `confidences`.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    confidences = np.asarray(confidences, dtype=np.float64)
    if ((confidences < 0) | (confidences > 1)).any():
        raise ValueError("confidences must lie in [0, 1]")
    clipped = np.clip(confidences, eps, 1.0 - eps)
    return np.log(clipped) - np.log1p(-clipped)


def lira_offline_score(
    target_conf: np.ndarray, shadow_out_confs: np.ndarray, *, fixed_variance: bool = False
) -> np.ndarray:
    """Offline LiRA: how far the target's confidence lies in the upper tail of the OUT fit.

    Fits N(μ_out, σ_out²) per canary to φ of shadow-model confidences on runs that excluded it,
    and returns z = (φ(target) − μ_out) / σ_out. Carlini et al.'s one-sided test statistic is
    Λ = Pr[Z ≤ φ(target)] = Φ(z); z ranks canaries identically without saturating at 1.

    Parameters
    ----------
    target_conf : (n_canaries,) confidence of the attacked model on each canary's true label.
    shadow_out_confs : (n_shadows, n_canaries) confidences of shadow models trained without the
        canary; NaN marks a missing observation. Each canary needs >= 2 observations.
    fixed_variance : use one pooled σ_out for all canaries, which Carlini et al. recommend when
        shadow models are few (here each shadow is a whole federated run).

    Returns
    -------
    (n_canaries,) float64 scores, larger = more likely a member.
    """
    target_logit = _target_logit(target_conf, shadow_out_confs)
    mean_out, std_out = _gaussian_fit(logit_scale(shadow_out_confs), fixed_variance)
    return (target_logit - mean_out) / std_out


def lira_online_score(
    target_conf: np.ndarray,
    shadow_in_confs: np.ndarray,
    shadow_out_confs: np.ndarray,
    *,
    fixed_variance: bool = False,
) -> np.ndarray:
    """Online LiRA: log likelihood ratio of the target's confidence under IN vs OUT fits.

    Returns log N(φ(target); μ_in, σ_in²) − log N(φ(target); μ_out, σ_out²) per canary, with
    both Gaussians fitted per canary to φ of shadow confidences (Carlini et al. 2022, Alg. 1).

    Parameters
    ----------
    target_conf : (n_canaries,) confidence of the attacked model on each canary's true label.
    shadow_in_confs : (n_shadows_in, n_canaries) confidences of shadow models trained with the
        canary; NaN marks a missing observation (e.g. each shadow includes a random half).
    shadow_out_confs : (n_shadows_out, n_canaries) likewise, trained without the canary.
    fixed_variance : pool σ_in and σ_out over canaries (see `lira_offline_score`).

    Returns
    -------
    (n_canaries,) float64 log likelihood ratios, larger = more likely a member.
    """
    target_logit = _target_logit(target_conf, shadow_in_confs, shadow_out_confs)
    mean_in, std_in = _gaussian_fit(logit_scale(shadow_in_confs), fixed_variance)
    mean_out, std_out = _gaussian_fit(logit_scale(shadow_out_confs), fixed_variance)
    log_in = stats.norm.logpdf(target_logit, mean_in, std_in)
    log_out = stats.norm.logpdf(target_logit, mean_out, std_out)
    return log_in - log_out


def abstention_class_histogram(
    row_weights: np.ndarray, public_labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """Class-histogram estimate from per-row weights (Selective-FD's abstentions, or their
    secure per-row totals): the share of public rows of each class that were kept, normalised.

    Parameters
    ----------
    row_weights : (Q,) one client's weights in [0, 1], or the secure totals Σ_i r_ij (any
        positive scale: the estimate is normalised).
    public_labels : (Q,) the attacker's labels of the public rows (its own model's argmax;
        the public inputs are known to the server).
    num_classes : K.

    Returns
    -------
    (K,) float64 distribution (uniform when nothing was kept). A client that keeps the rows of
    the classes it holds reveals its class support, though not the counts within it.
    """
    weights = np.asarray(row_weights, dtype=np.float64)
    kept = np.array(
        [
            weights[public_labels == k].mean() if np.any(public_labels == k) else 0.0
            for k in range(num_classes)
        ]
    )  # (K,)
    kept = np.clip(kept, 0.0, None)
    total = kept.sum()
    return kept / total if total > 0 else np.full(num_classes, 1.0 / num_classes)


def estimate_class_histogram(probs: np.ndarray) -> np.ndarray:
    """Naive label-distribution estimate: a client's mean soft label over the public set.

    Parameters
    ----------
    probs : (Q, K) the client's soft labels on the public set. Noisy estimates of them (e.g. the
        difference of two aggregates whose cohorts differ by this client) are accepted: the mean
        averages the noise down and negative class means are clipped to 0.

    Returns
    -------
    (K,) float64 distribution (sums to 1). Biased toward the public set's own label mix,
    since a teacher's posterior on public inputs mixes its prior with the evidence in x;
    `calibrated_class_histogram` removes that bias.
    """
    probs = _soft_labels("probs", probs)
    mean = np.clip(probs.mean(axis=0), 0.0, None)  # (K,)
    if mean.sum() <= 0:
        raise ValueError("probs must have a positive mean in at least one class")
    return mean / mean.sum()


def calibrated_class_histogram(
    probs: np.ndarray,
    reference_probs: np.ndarray,
    reference_prior: np.ndarray | None = None,
    temperature: float = 1.0,
    eps: float = 1e-12,
) -> np.ndarray:
    """Label-distribution estimate corrected by a reference model's soft labels (prior shift).

    Model: a Bayes-optimal teacher trained under class prior π differs from a reference under
    prior π_ref only by the prior (label shift, Saerens et al. 2002), so per public input x
    log p(y|x) − log r(y|x) = log(π(y) / π_ref(y)) / T − c(x) for soft labels at temperature T.
    Averaging over the public set removes the per-input constant's dependence on y, hence

        π(y) ∝ π_ref(y) · exp(T · mean_x[log p(y|x) − log r(y|x)]).

    With the ensemble's soft labels as the reference and a uniform prior (or the public set's
    label mix, if known) this is exact under label shift and approximate otherwise.

    Parameters
    ----------
    probs : (Q, K) the client's soft labels on the public set.
    reference_probs : (Q, K) the reference's soft labels on the same inputs, same temperature.
    reference_prior : (K,) class prior of the reference; None = uniform.
    temperature : T > 0 at which both sets of soft labels were produced.
    eps : floor in (0, 1) on probabilities before taking logs (noisy negatives are floored too).

    Returns
    -------
    (K,) float64 distribution (sums to 1).
    """
    probs = _soft_labels("probs", probs)
    reference_probs = _soft_labels("reference_probs", reference_probs)
    if probs.shape != reference_probs.shape:
        raise ValueError(
            f"probs and reference_probs must have the same shape, got {probs.shape} and "
            f"{reference_probs.shape}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    n_classes = probs.shape[1]
    if reference_prior is None:
        reference_prior = np.full(n_classes, 1.0 / n_classes)
    reference_prior = _distribution("reference_prior", reference_prior)
    if reference_prior.shape != (n_classes,):
        raise ValueError(
            f"reference_prior must have shape ({n_classes},), got {reference_prior.shape}"
        )
    log_ratio = np.log(np.maximum(probs, eps)) - np.log(np.maximum(reference_probs, eps))
    log_histogram = np.log(np.maximum(reference_prior, eps)) + temperature * log_ratio.mean(axis=0)
    log_histogram -= log_histogram.max()  # (K,), shifted so exp cannot overflow
    histogram = np.exp(log_histogram)
    return histogram / histogram.sum()


def l1_error(p: np.ndarray, q: np.ndarray) -> float:
    """L1 distance Σ_k |p_k − q_k| between two (K,) distributions; in [0, 2]."""
    p, q = _distribution_pair(p, q)
    return float(np.abs(p - q).sum())


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    """KL(p ‖ q) in nats between two (K,) distributions, q smoothed so it stays finite.

    Parameters
    ----------
    p : (K,) true distribution.
    q : (K,) estimate; smoothed to (q + eps) / (1 + K·eps) so classes it misses cost a finite
        amount (about log(1 / eps) per unit of p).
    eps : smoothing mass per class, >= 0.

    Returns
    -------
    KL >= 0; terms with p_k = 0 contribute 0.
    """
    p, q = _distribution_pair(p, q)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    q_smoothed = (q + eps) / (1.0 + q.size * eps)
    support = p > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(p[support] * (np.log(p[support]) - np.log(q_smoothed[support]))))


def _target_logit(target_conf: np.ndarray, *shadow_confs: np.ndarray) -> np.ndarray:
    """φ(target_conf), after checking it against each (n_shadows, n_canaries) shadow array."""
    target_conf = np.asarray(target_conf, dtype=np.float64)
    if target_conf.ndim != 1 or np.isnan(target_conf).any():
        raise ValueError(f"target_conf must be (n_canaries,) without NaN, got {target_conf.shape}")
    for shadow in shadow_confs:
        shape = np.shape(shadow)
        if len(shape) != 2 or shape[1] != target_conf.size:
            raise ValueError(
                f"shadow confidences must be (n_shadows, {target_conf.size}), got {shape}"
            )
    return logit_scale(target_conf)


def _gaussian_fit(shadow_logits: np.ndarray, fixed_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-canary mean and std of (n_shadows, n_canaries) logits, NaN = missing."""
    observed = ~np.isnan(shadow_logits)
    counts = observed.sum(axis=0)  # (n_canaries,)
    if (counts < 2).any():
        raise ValueError(
            f"each canary needs >= 2 shadow observations; canaries "
            f"{np.flatnonzero(counts < 2).tolist()} have fewer"
        )
    mean = np.nanmean(shadow_logits, axis=0)  # (n_canaries,)
    squared_deviation = np.nansum((shadow_logits - mean) ** 2, axis=0)  # (n_canaries,)
    if fixed_variance:
        pooled = np.sqrt(squared_deviation.sum() / (counts.sum() - counts.size))
        std = np.full_like(mean, pooled)
    else:
        std = np.sqrt(squared_deviation / (counts - 1))
    return mean, np.maximum(std, _MIN_STD)


def _soft_labels(name: str, probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f"{name} must be (Q, K) with Q >= 1 and K >= 2, got {probs.shape}")
    if not np.isfinite(probs).all():
        raise ValueError(f"{name} must be finite")
    return probs


def _distribution(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"{name} must be a 1-D finite non-negative array, got {values!r}")
    if not np.isclose(values.sum(), 1.0, atol=1e-6):
        raise ValueError(f"{name} must sum to 1, got {values.sum()}")
    return values


def _distribution_pair(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, q = _distribution("p", p), _distribution("q", q)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    return p, q
