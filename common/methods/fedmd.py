"""FedMD: heterogeneous federated learning via model distillation (Li & Wang, NeurIPS 2019 FL
workshop, arXiv:1910.03581). The default method, and the recipe this project ran before methods
existed.

As published:
- transfer learning first: each party trains on the labelled public set, then on its private
  set (in that order; run here once per fresh teacher, only with allow_public_labels=true, for
  `public_warmup_epochs`);
- each round: communicate scores on the public samples, aggregate them into a consensus by
  averaging, *digest* (each party trains toward the consensus, `digest_epochs`), *revisit*
  (each party trains on its private data, `local_epochs`).

Different here, and why:
- parties report softmax(z / T) at the run's temperature, not raw logits: probabilities are
  bounded, which the fixed-point secure sum and the DP sensitivity need, and the server
  distils a global student from them (FedMD has no server model);
- the digest and the student minimise T²·KL to the consensus instead of FedMD's L1 on scores;
- `ensemble=weighted` weights each party by its private sample count (FedMD averages
  uniformly, the default here too).
"""

from __future__ import annotations

import numpy as np
import torch

from common.config import RunConfig
from common.methods.base import Method, configured_temperature, mean_ensemble
from common.training import train_supervised


def warm_up(
    teacher: torch.nn.Module,
    public_x: np.ndarray,
    public_y: np.ndarray,
    config: RunConfig,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """FedMD's transfer-learning step: `public_warmup_epochs` of the clients' supervised recipe
    on the labelled public set (P, ...), (P,), before the first private training."""
    train_supervised(
        teacher,
        public_x,
        public_y,
        epochs=config.public_warmup_epochs,
        lr=config.local_lr,
        batch_size=config.local_batch_size,
        optimizer=config.local_optimizer,
        generator=generator,
        device=device,
    )


METHOD = Method(
    name="fedmd",
    citation="Li & Wang 2019, FedMD (arXiv:1910.03581)",
    per_row_weights=False,
    temperature=configured_temperature,
    combine=mean_ensemble,
    warm_up=warm_up,
)
