"""One-shot client-level release: one round of the in-process engine, its reports noised per z.

In a one-round run (`rounds == 1`) no teacher digests an ensemble, so what every client reports
does not depend on the DP noise multiplier z: the noise enters at the secure sum only. This
module trains the round's cohort once and then, for every z, replays the rest of the round as
`simulations.bench.plain_loop.run_plain` does it — each client's Gaussian noise share, the sum,
the method's combine, the student's distillation and evaluation. It is the same computation as
one `run_plain` per z (bit for bit without noise; the noise comes from OS entropy), at one
cohort's teacher cost instead of one per z, and every z is measured on the same teachers, so the
frontier's differences are the noise's alone.

The sum is taken in the clear (`plain_sum`): SecAgg+ returns the same sum — bit for bit without
noise, to its fixed point's rounding with it — and on the 2-core machine one secure sum over 500
clients of 4000 rows took ~100 s, more than training the cohort. What the server sees is the
secure sum; its value is what this computes.

Gaussian mechanisms compose exactly: R releases of Q rows at noise multiplier z are as private
as one release of R·Q rows at z/sqrt(R), and the per-entry noise z·sqrt(2Q)/m of a cohort of m
is the same in both. Without secret sampling (the server picks cohorts) spreading the rows over
rounds buys no privacy; it buys teachers that digest earlier ensembles, at R times the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from client.privacy import add_dp_noise_share
from client.teacher import RoundInput, new_teacher, run_local_round
from common.config import RunConfig
from common.data import DatasetSplits
from common.methods import get_method
from common.metrics import accuracy
from common.protocol import Contribution
from common.quantise import quantise_contribution, rounding_generator
from common.secure_codec import dp_noise_share_std
from common.training import resolve_device
from server.cohort import NodeInfo, sample_cohort
from server.queries import choose_queries
from server.student import Student
from simulations.bench.baselines import client_data
from simulations.bench.plain_loop import plain_sum


@dataclass(frozen=True)
class CohortReports:
    """Round 1's quantised, noise-free reports of a sampled cohort.

    Attributes
    ----------
    query : (Q,) int64 public rows queried.
    reports : node id → its `Contribution` ((Q, K) soft labels at `label_bits`), cohort order.
    """

    query: np.ndarray
    reports: dict[int, Contribution]


def cohort_reports(config: RunConfig, splits: DatasetSplits) -> CohortReports:
    """Train round 1's cohort of `config` (its DP noise is ignored) and collect its reports.

    The cohort, query, teachers, batch order and rounding are `run_plain`'s for round 1.
    """
    if config.rounds != 1:
        raise ValueError(f"a one-shot release has rounds == 1, got rounds={config.rounds}")
    if config.dp_mode == "record":
        raise ValueError("a one-shot release noises the sum (dp_mode off or client), got record")
    device = resolve_device(config.device)
    clients = client_data(config, splits)
    nodes = [NodeInfo(node_id=p.index + 1, index=p.index, label=p.label) for p in clients]
    cohort = sample_cohort(nodes, config.fraction, config.min_clients, config.seed, 1)
    query = choose_queries(config, len(splits.public_x), 1, None)
    request = RoundInput(round=1, query_indices=query, digest_indices=None, digest_probs=None)
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(config.client_threads)
    try:
        reports = {}
        for node in cohort:
            teacher = new_teacher(config, splits, node.index)
            contribution, _ = run_local_round(
                teacher, config, splits.public, clients[node.index], request, device, True
            )
            rounding = rounding_generator(config.seed, 1, node.index)
            reports[node.node_id] = quantise_contribution(
                contribution, config.label_bits, rounding
            )[0]
    finally:
        torch.set_num_threads(caller_threads)
    return CohortReports(query=query, reports=reports)


def release(config: RunConfig, splits: DatasetSplits, cohort: CohortReports) -> dict[str, float]:
    """The rest of round 1 for `config`'s DP noise: noise shares, sum, combine, distil, evaluate.

    Returns
    -------
    `run_plain`'s metrics row of round 1 (``status``, ``student_accuracy``,
    ``ensemble_public_accuracy``, …) without its timing and byte columns.
    """
    query, num_classes = cohort.query, splits.num_classes
    noise_std = dp_noise_share_std(config, len(query), len(cohort.reports))
    noisy = {node: add_dp_noise_share(c, noise_std) for node, c in cohort.reports.items()}
    method = get_method(config.method)
    weighted_sum, total = plain_sum(noisy, num_classes, method.per_row_weights)
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(config.server_threads)
    try:
        combined = method.combine(weighted_sum, total, config)
        if not combined.kept.any():
            return {"round": 1, "status": "failed: no ensemble row kept", "rows_kept": 0}
        kept, ensemble = query[combined.kept], combined.probs[combined.kept]  # (Q',), (Q', K)
        student = Student(config, splits, resolve_device(config.device))
        student.distill(
            1,
            splits.public_x[kept],
            ensemble,
            splits.public.labels("the one-shot leak experiment")[kept],
        )
        return {
            "round": 1,
            "status": "ok",
            **student.evaluate(splits.test_x, splits.test_y),
            "ensemble_public_accuracy": accuracy(
                ensemble, splits.public.labels("the one-shot leak experiment")[kept]
            ),
            "clients": len(cohort.reports),
            "rows_kept": int(combined.kept.sum()),
        }
    finally:
        torch.set_num_threads(caller_threads)
