"""Client-side distributed differential privacy: this client's share of the Gaussian noise."""

from __future__ import annotations

import numpy as np

from common.dp import add_noise_share
from common.protocol import Contribution
from common.secure_codec import NOISE_CLIP_SIGMAS


def add_dp_noise_share(contribution: Contribution, noise_std: float) -> Contribution:
    """Add N(0, noise_std²) to every soft-label entry (the weight stays exact).

    The noise comes from OS entropy, never from the run seed: a seed the server could guess
    would let it subtract the noise. Each entry's noise is clipped at NOISE_CLIP_SIGMAS·std so
    the fixed-point encoding's bound holds (the clip has probability ~1e-15 per entry).
    """
    if noise_std == 0:
        return contribution
    clean = contribution.probs.astype(np.float64)  # (Q, K)
    noise = add_noise_share(np.zeros_like(clean), noise_std, np.random.default_rng())
    limit = NOISE_CLIP_SIGMAS * noise_std
    noisy = clean + np.clip(noise, -limit, limit)
    return Contribution(
        probs=noisy, weight=contribution.weight, row_weights=contribution.row_weights
    )
