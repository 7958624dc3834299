"""Selective-FD: selective knowledge sharing for federated distillation (Shao, Wu & Zhang,
Nature Communications 2024, arXiv:2304.01731).

As published:
- client-side selector: each client estimates the density ratio r(x) = p_local(x) / q(x)
  with KuLSIF and shares its prediction on a public sample only where r is high enough, so
  a client never teaches on inputs unlike its own data (misleading knowledge);
- server-side selector: ensemble rows that stay ambiguous (high entropy) are dropped.

Different here, and why:
- the ratio is estimated on the teacher's penultimate features, against public inputs as the
  reference q; the paper works on raw pixels against a uniform reference, which on MNIST-1D's
  shifted 1-D signals says little about the class;
- the client threshold is not hand-set: a client keeps a public row when its ratio reaches
  the `selective_quantile` quantile of the ratios of its own held-out private samples, so about
  1 − quantile of in-distribution inputs are shared whatever the ratio's scale;
- abstention travels as a per-row weight of 0 inside the secure sum (the server sees how many
  clients kept each row, never which);
- the ambiguity filter reads the ensemble at T = 1 (rows raised to the power T and
  renormalised), since reports here are softened at the run's temperature; a row is dropped
  when its normalised entropy exceeds `ambiguity_threshold`.
"""

from __future__ import annotations

import numpy as np
import torch

from common.config import RunConfig
from common.methods.base import (
    ClientView,
    Ensemble,
    Method,
    configured_temperature,
    normalised_entropy,
    weighted_rows,
)
from common.methods.density import kulsif_ratio, median_width, penultimate_features, standardise

REFERENCE_SAMPLES = 500  # per side: KuLSIF solves an n × n system
HELD_OUT_FRACTION = 0.2


def _subsample(n: int, size: int, generator: torch.Generator) -> np.ndarray:
    return torch.randperm(n, generator=generator)[:size].numpy()


def row_weights(view: ClientView, config: RunConfig) -> np.ndarray:
    """1 where the queried row's density ratio reaches the client's own threshold, else 0."""
    order = torch.randperm(len(view.private_x), generator=view.generator).numpy()
    n_held_out = max(1, int(HELD_OUT_FRACTION * len(order)))
    held_out, fitted = order[:n_held_out], order[n_held_out:][:REFERENCE_SAMPLES]
    public = _subsample(len(view.public_x), REFERENCE_SAMPLES, view.generator)
    features = [
        penultimate_features(view.teacher, x, view.device)
        for x in (view.private_x[fitted], view.public_x[public], view.private_x[held_out])
    ]
    query_features = penultimate_features(view.teacher, view.query_x, view.device)
    private_f, public_f, held_out_f, query_f = standardise(
        np.concatenate(features[:2]), *features, query_features
    )
    width = median_width(private_f, public_f)
    ratios = kulsif_ratio(private_f, public_f, np.concatenate([held_out_f, query_f]), width)
    threshold = np.quantile(ratios[: len(held_out_f)], config.selective_quantile)
    return (ratios[len(held_out_f) :] >= threshold).astype(np.float64)  # (Q,)


def combine(
    weighted_sum: np.ndarray, row_weight: np.ndarray | float, config: RunConfig
) -> Ensemble:
    """Mean over the clients that kept each row; drop rows kept by too few (total weight below
    `min_row_weight`) and rows whose T = 1 ensemble is ambiguous."""
    probs, usable = weighted_rows(weighted_sum, row_weight, config.min_row_weight)
    sharp = probs ** configured_temperature(config)  # back to T = 1, up to normalisation
    sharp /= sharp.sum(axis=1, keepdims=True)
    ambiguous = usable & (normalised_entropy(sharp) > config.ambiguity_threshold)
    return Ensemble(probs=probs, kept=usable & ~ambiguous, low_weight=~usable, ambiguous=ambiguous)


METHOD = Method(
    name="selective",
    citation="Shao, Wu & Zhang 2024, Selective-FD (Nature Communications, arXiv:2304.01731)",
    per_row_weights=True,
    temperature=configured_temperature,
    combine=combine,
    row_weights=row_weights,
)
