"""Real clients for the attacks: our data split, partitions and teacher code, run in process.

Every teacher here — a target client, the rest of its cohort, or an attacker's shadow — is built
by `client.teacher.new_teacher` and trained by `client.teacher.run_local_round`, the code a real
ClientApp runs, so attacks see the soft labels a deployment would produce. Only the training
data differ: a shadow trains on the attacker's own records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.data_source import PrivateData
from client.teacher import RoundInput, new_teacher, run_local_round
from common.config import RunConfig
from common.data import DatasetSplits, load_splits, partition_indices
from common.protocol import Contribution
from common.training import resolve_device

# The attacker's models get seed indices far from real client indices, so no two models share
# an initialisation or batch order.
TARGET_SHADOW_BASE = 10_000
POPULATION_SHADOW_BASE = 20_000
REFERENCE_INDEX = 30_000
STUDENT_SHADOW_BASE = 40_000


@dataclass(frozen=True)
class Federation:
    """One seed's data: the split every party derives from the config, and the partitions.

    Attributes
    ----------
    config : the run config (its seed fixed the data, the split and the partitions).
    splits : private / public / test pools (`common.data.DatasetSplits`).
    partitions : one int64 index array into `splits.private_y` per client.
    """

    config: RunConfig
    splits: DatasetSplits
    partitions: list[np.ndarray]

    def client_data(self, index: int) -> PrivateData:
        """Client `index`'s private training records, as its ClientApp loads them."""
        part = self.partitions[index]
        return PrivateData(
            x=self.splits.private_x[part],
            y=self.splits.private_y[part],
            label=f"partition-{index}",
            index=index,
        )

    def class_histogram(self, index: int) -> np.ndarray:
        """(K,) true label histogram of client `index`'s partition (sums to 1)."""
        labels = self.splits.private_y[self.partitions[index]]
        counts = np.bincount(labels, minlength=self.splits.num_classes)
        return counts / counts.sum()


def load_federation(config: RunConfig) -> Federation:
    """Split and partition the dataset exactly as the ServerApp and ClientApps do."""
    torch.set_num_threads(config.client_threads)
    splits = load_splits(config)
    return Federation(config, splits, partition_indices(splits.private_y, config))


def test_records(splits: DatasetSplits, indices: np.ndarray, index: int) -> PrivateData:
    """Test-pool records `indices` as a training set with seed index `index` (a shadow's data)."""
    return PrivateData(
        x=splits.test_x[indices], y=splits.test_y[indices], label=f"shadow-{index}", index=index
    )


def draw_with_histogram(
    labels: np.ndarray, pool: np.ndarray, size: int, histogram: np.ndarray, seed: list[int]
) -> np.ndarray:
    """Draw `size` indices from `pool` without replacement with class proportions `histogram`.

    Parameters
    ----------
    labels : (N,) labels of the indexed set.
    pool : (P,) indices into `labels` available to draw from.
    size : number of indices wanted, >= 1.
    histogram : (K,) class proportions (e.g. the target client's label histogram).
    seed : seed parts of the draw.

    Returns
    -------
    (<= size,) int64 indices; a class with fewer records than asked gives all it has.
    """
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(size, histogram)  # (K,)
    pool_labels = labels[pool]
    chosen = [
        rng.choice(pool[pool_labels == k], min(count, int(np.sum(pool_labels == k))), False)
        for k, count in enumerate(counts)
        if count
    ]
    return np.concatenate(chosen).astype(np.int64)


def with_extra(data: PrivateData, splits: DatasetSplits, extra: np.ndarray) -> PrivateData:
    """`data` plus test-pool records `extra` (e.g. a shadow's half of the canaries)."""
    return dataclasses.replace(
        data,
        x=np.concatenate([data.x, splits.test_x[extra]]),
        y=np.concatenate([data.y, splits.test_y[extra]]),
    )


def train_and_report(
    config: RunConfig,
    splits: DatasetSplits,
    data: PrivateData,
    query_indices: np.ndarray,
    round_number: int = 1,
    teacher: torch.nn.Module | None = None,
    digest: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[torch.nn.Module, np.ndarray]:
    """`train_and_contribute`, keeping only the soft labels: (teacher, (Q, K) float32 probs)."""
    model, contribution = train_and_contribute(
        config, splits, data, query_indices, round_number, teacher, digest
    )
    return model, contribution.probs


def train_and_contribute(
    config: RunConfig,
    splits: DatasetSplits,
    data: PrivateData,
    query_indices: np.ndarray,
    round_number: int = 1,
    teacher: torch.nn.Module | None = None,
    digest: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[torch.nn.Module, Contribution]:
    """One client round with the real client code: train on `data`, report soft labels.

    Parameters
    ----------
    config : run config (teacher model, epochs, learning rate, temperature T, seed).
    splits : the split whose `public_x` holds the queried inputs (canaries may be planted there).
    data : the client's training records.
    query_indices : (Q,) rows of `splits.public_x` the server queries.
    round_number : 1-based round (seeds the batch order with the client index).
    teacher : the client's teacher from an earlier round; None = a fresh `new_teacher`.
    digest : (indices, probs) of the previous ensemble to digest first, or None.

    Returns
    -------
    (teacher, contribution): the trained teacher and what it reports for the config's method:
    (Q, K) float32 soft labels at the method's temperature, and per-row weights if it has them.
    """
    fresh = teacher is None
    model = teacher if teacher is not None else new_teacher(config, splits, data.index)
    request = RoundInput(
        round=round_number,
        query_indices=np.asarray(query_indices, dtype=np.int64),
        digest_indices=None if digest is None else digest[0],
        digest_probs=None if digest is None else digest[1].astype(np.float32),
    )
    contribution, _ = run_local_round(
        model, config, splits.public, data, request, resolve_device(config.device), fresh
    )
    return model, contribution


def plant(splits: DatasetSplits, canary_indices: np.ndarray) -> tuple[DatasetSplits, np.ndarray]:
    """Append test-pool records to the public set, as a malicious server plants canaries.

    Returns
    -------
    (planted splits, (C,) row indices of the canaries in the planted public set).
    """
    n_public = len(splits.public_x)
    planted = dataclasses.replace(
        splits,
        public_x=np.concatenate([splits.public_x, splits.test_x[canary_indices]]),
        public_y=np.concatenate(
            [splits.public.labels("planting canaries"), splits.test_y[canary_indices]]
        ),
    )
    return planted, n_public + np.arange(len(canary_indices))


def simulate_run(config: RunConfig, run_dir: Path) -> Path:
    """A real federated run (Flower simulation engine) into `run_dir`; its log goes to
    `run_dir/flower.log`. Returns the run directory (config, metrics.csv, student.pt, …)."""
    from simulations.launcher import simulate  # local: starts processes, imports Flower

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "flower.log", "wb") as log:
        return simulate(config.replace(out_dir=str(run_dir)), stream_to=log.fileno())
