"""In-process secure aggregation of soft labels, through the clients' real noise and encoding path.

The attacker in these experiments is the server, so it sees exactly what our ServerApp sees: the
decoded SecAgg+ sum. Each client here runs the same steps as `client.secagg_handlers`: add its
distributed-DP noise share (`client.privacy.add_dp_noise_share`), encode the contribution,
then answer the four SecAgg+ stages (`client.secagg.SecAggClient`) driven by
`server.secagg.SecAggServer`. Only the Flower transport is skipped; the protocol and the
arithmetic are the real ones.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from client.privacy import add_dp_noise_share
from client.secagg import SecAggClient
from common.config import RunConfig
from common.protocol import Contribution, split_weighted_vector, summed_length
from common.quantise import quantise_contribution, rounding_generator
from common.secure_codec import (
    client_policy,
    decode_aggregate,
    dp_noise_share_std,
    encode_contribution,
    value_bound,
)
from server.secagg import SecAggServer


@dataclass(frozen=True)
class SecureSum:
    """What the server learns from one secure-aggregation round, plus the simulation's ground truth.

    Attributes
    ----------
    weighted_sum : (Q, K) float64, the decoded Σ_i w_i·P_i (DP noise included) — the server's view.
    total_weight : Σ_i w_i as decoded; with per-row weights the (Q,) totals Σ_i w_i·r_ij, which
        tell the server how many clients kept each public row.
    clean_sum : (Q, K) float64, Σ_i w_i·P_i without noise or quantisation (ground truth only).
    noise_std : per-client std of the DP noise share on each entry (0 when DP is off).
    quantisation_bound : n·2^-(f+1), the largest |decoded − noised float sum| fixed point allows.
    quantisation_error : the largest |decoded − noised float sum| observed (must not exceed it).
    """

    weighted_sum: np.ndarray
    total_weight: float | np.ndarray
    clean_sum: np.ndarray
    noise_std: float
    quantisation_bound: float
    quantisation_error: float


def secure_sum(contributions: list[Contribution], config: RunConfig) -> SecureSum:
    """Sum the cohort's soft labels with SecAgg+ and the clients' DP noise shares, in process.

    Parameters
    ----------
    contributions : one per cohort member, each `probs` (Q, K) with the same shape; all with
        per-row weights (a method such as selective) or none.
    config : run config: `secagg_*` settings, `ensemble`, and the `dp_*` keys that size each
        client's noise share exactly as `client.secagg_handlers.start_secure_round` does.

    Returns
    -------
    The decoded sum (what the server sees) with the clean sum and quantisation check. Reports
    are quantised at `label_bits` first, as clients do (`common.quantise`), so without noise
    the decoded sum equals their float sum exactly.

    Raises
    ------
    ValueError
        If the decoded sum differs from the noised float sum by more than the fixed-point bound
        (the secure aggregation would be broken), or the cohort is below `secagg_min_cohort`.
    """
    n_clients = len(contributions)
    n_query, n_classes = contributions[0].probs.shape
    noise_std = dp_noise_share_std(config, n_query, n_clients)
    params = client_policy(config).validate(n_clients, value_bound(config, noise_std))
    nodes = _node_ids(n_clients)
    quantised = [  # as each client reports: at label_bits, its own seeded rounding offsets
        quantise_contribution(
            contribution, config.label_bits, rounding_generator(config.seed, 1, i)
        )[0]
        for i, contribution in enumerate(contributions)
    ]
    noised = {
        node: add_dp_noise_share(contribution, noise_std)
        for node, contribution in zip(nodes, quantised, strict=True)
    }
    vectors = {
        node: encode_contribution(noised[node], params, value_bound(config, noise_std))
        for node in nodes
    }
    per_row = contributions[0].row_weights is not None
    length = summed_length(n_query, n_classes, per_row)
    server = SecAggServer(1, nodes, params, length, graph_seed=secrets.randbits(63))
    clients = {node: SecAggClient(node, client_policy(config)) for node in nodes}
    while server.stage != "done":
        stage = server.stage
        server.receive(
            {
                node: clients[node].respond(stage, request, vectors[node])
                for node, request in server.requests().items()
            }
        )
    weighted_sum, total_weight = decode_aggregate(server.result().total, params, n_classes, per_row)
    noised_float = sum(c.weighted_vector() for c in noised.values())  # (length,)
    decoded = np.append(weighted_sum.ravel(), total_weight)
    error = float(np.max(np.abs(decoded - noised_float)))
    bound = n_clients * 2.0 ** -(params.frac_bits + 1)
    if error > bound * (1 + 1e-9):
        raise ValueError(
            f"secure sum differs from the plain sum by {error:.3g} > quantisation bound {bound:.3g}"
        )
    clean_vector = sum(c.weighted_vector() for c in contributions)
    clean = split_weighted_vector(clean_vector, n_classes, per_row)[0]
    return SecureSum(weighted_sum, total_weight, clean, noise_std, bound, error)


def _node_ids(n_clients: int) -> list[int]:
    """Distinct random 64-bit node ids, sorted, as Flower assigns them."""
    ids: set[int] = set()
    while len(ids) < n_clients:
        ids.add(secrets.randbits(64))
    return sorted(ids)
