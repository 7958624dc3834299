"""Certainty-weighted ensembles in the style of FedAUX (Sattler, Korjakow, Rischke & Samek,
IEEE TNNLS 2022, arXiv:2102.02514).

As published: each client fits a logistic-regression scorer that separates its private data
(label 1) from the public distillation data (label 0) on a feature representation, and the
server averages the clients' predictions on each public sample weighted by their scores,
p_j = Σ_i s_i(x_j) p_ij / Σ_i s_i(x_j), so a client counts where the sample looks like its data.

Different here, and why:
- features are the client's own teacher's penultimate activations; FedAUX pretrains one shared
  feature extractor on the public data with self-supervision, which this project does not ship;
- the scorer is not trained with differential privacy (FedAUX's DP scorer guards the score
  model, which never leaves the client here: only Σ_i s_ij · p_ij and Σ_i s_ij are released,
  through the secure sum);
- rows whose total certainty Σ_i s_ij falls below `min_row_weight` are left out.
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
    weighted_rows,
)
from common.methods.density import logistic_certainty, penultimate_features, standardise

REFERENCE_SAMPLES = 2000  # per side; logistic regression is cheap


def row_weights(view: ClientView, config: RunConfig) -> np.ndarray:
    """s_i(x_j) = P(private | x_j) on the queried rows, (Q,) in (0, 1)."""
    private = torch.randperm(len(view.private_x), generator=view.generator)[:REFERENCE_SAMPLES]
    public = torch.randperm(len(view.public_x), generator=view.generator)[:REFERENCE_SAMPLES]
    private_f, public_f, query_f = (
        penultimate_features(view.teacher, x, view.device)
        for x in (view.private_x[private.numpy()], view.public_x[public.numpy()], view.query_x)
    )
    private_f, public_f, query_f = standardise(
        np.concatenate([private_f, public_f]), private_f, public_f, query_f
    )
    return logistic_certainty(private_f, public_f, query_f)


def combine(
    weighted_sum: np.ndarray, row_weight: np.ndarray | float, config: RunConfig
) -> Ensemble:
    """Certainty-weighted mean per row; rows below `min_row_weight` total certainty dropped."""
    probs, usable = weighted_rows(weighted_sum, row_weight, config.min_row_weight)
    nothing = np.zeros(len(probs), dtype=bool)
    return Ensemble(probs=probs, kept=usable, low_weight=~usable, ambiguous=nothing)


METHOD = Method(
    name="certainty",
    citation="Sattler et al. 2022, FedAUX (IEEE TNNLS, arXiv:2102.02514)",
    per_row_weights=True,
    temperature=configured_temperature,
    combine=combine,
    row_weights=row_weights,
)
