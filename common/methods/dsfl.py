"""DS-FL: distillation-based semi-supervised federated learning (Itahara et al., IEEE
Transactions on Mobile Computing 2021, arXiv:2008.06180).

As published (their open-set protocol): every round each client trains on its private data,
predicts on an unlabelled open set shared by everyone, the server averages the predictions and
sharpens the average with entropy reduction aggregation (ERA),
    p_j ← softmax(p̄_j / T_era), T_era = 0.1 (the paper's default),
and clients and the global model train on the sharpened labels, clients at the start of the
next round. Predictions are plain softmax outputs (T = 1), and so is the training target.

Different here, and why:
- the run's `temperature` is not used: reports, digest and student all work at T = 1 as in
  the paper, because ERA already sets the targets' sharpness;
- the student is distilled with KL (equal to the paper's cross-entropy up to the target's
  entropy, so the same gradients);
- the open set is this run's public set, queried `public_query_size` rows per round.
"""

from __future__ import annotations

import numpy as np

from common.config import RunConfig
from common.kd import era_sharpen
from common.methods.base import Ensemble, Method, mean_ensemble

PAPER_TEMPERATURE = 1.0


def temperature(config: RunConfig) -> float:
    """DS-FL works with softmax outputs at T = 1 throughout."""
    return PAPER_TEMPERATURE


def combine(
    weighted_sum: np.ndarray, row_weight: np.ndarray | float, config: RunConfig
) -> Ensemble:
    """ERA: the mean of the clients' rows, sharpened by softmax(p̄ / era_temperature)."""
    mean = mean_ensemble(weighted_sum, row_weight, config)
    sharpened = era_sharpen(mean.probs, config.era_temperature)  # (Q, K)
    return Ensemble(
        probs=sharpened, kept=mean.kept, low_weight=mean.low_weight, ambiguous=mean.ambiguous
    )


METHOD = Method(
    name="dsfl",
    citation="Itahara et al. 2021, DS-FL (IEEE TMC, arXiv:2008.06180)",
    per_row_weights=False,
    temperature=temperature,
    combine=combine,
)
