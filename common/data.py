"""The three data roles put together: private pool, public set and test set, partitions over
clients, and the public-set hash.

Each role has its own source (`common.data_sources`): `dataset` (private), `public_dataset`
and `test_dataset`. A role left empty is carved from `dataset` by one seeded shuffle (test
first, then public, the rest private), exactly as before the roles existed. The same
deterministic split is computed by every party from the config, so nothing but the public-set
hash (and the class count) has to be agreed on the wire. Inputs are float32 with one leading
sample axis: (N, L) for MNIST-1D signals, (N, F) for flat features, (N, C, H, W) for images.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.config import RunConfig
from common.data_sources import ROLE_SEED_OFFSETS, load_source, mnist1d_pool

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


@dataclass(frozen=True)
class PublicData:
    """The public set as one party holds it.

    Attributes
    ----------
    x : (P, ...) float32 — the distillation inputs.
    y : (P,) int64, or None for an unlabelled public set (simulation diagnostics only).
    num_classes : K, from the private and test labels (a node learns it from the server).
    source : the file or generator setting it came from, for messages.
    """

    x: np.ndarray
    y: np.ndarray | None
    num_classes: int
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch axis."""
        return tuple(self.x.shape[1:])

    def labels(self, needed_by: str) -> np.ndarray:
        """The public labels (P,); ValueError naming `needed_by` when the set has none."""
        if self.y is None:
            raise ValueError(
                f"{needed_by} needs the public set's labels, but {self.source} has none "
                "(an x-only public set); give a labelled public set or leave the option off"
            )
        return self.y


@dataclass(frozen=True)
class ServerData:
    """What the server holds: the public set and the test set.

    Attributes
    ----------
    public_x : (N_pub, ...) float32 — distillation inputs, known to every party.
    public_y : (N_pub,) int64 or None — simulation diagnostics and the ablation term only.
    test_x, test_y : (N_test, ...) float32, (N_test,) int64 — held out for evaluation.
    num_classes : K.
    public_source : where the public set came from (a file, a generator setting, or the
        `dataset` it was carved from).
    """

    public_x: np.ndarray
    public_y: np.ndarray | None
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    public_source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch axis."""
        return tuple(self.public_x.shape[1:])

    @property
    def public(self) -> PublicData:
        """The public set as a `PublicData`."""
        return PublicData(self.public_x, self.public_y, self.num_classes, self.public_source)


@dataclass(frozen=True)
class DatasetSplits(ServerData):
    """All three roles of a simulated federation: the server's data plus the private pool.

    Attributes
    ----------
    private_x, private_y : (N_priv, ...) float32, (N_priv,) int64 — partitioned over clients.
    """

    private_x: np.ndarray
    private_y: np.ndarray


def cache_dir(config: RunConfig) -> Path:
    """Directory for generated or converted data."""
    path = Path(config.data_dir or "~/.cache/feddistill").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_splits(config: RunConfig) -> DatasetSplits:
    """Load (or generate) every role's source, carve the roles left empty out of `dataset`, and
    check that they fit together (input shapes, classes, label options)."""
    splits = _load_splits_cached(
        config.dataset,
        config.public_dataset,
        config.test_dataset,
        str(cache_dir(config)),
        config.num_samples,
        config.seed,
        config.public_fraction,
        config.test_fraction,
        config.public_shift,
    )
    check_label_options(config, splits.public)
    return splits


def load_server_data(config: RunConfig) -> ServerData:
    """The server's roles only. With both `public_dataset` and `test_dataset` set the private
    pool is never read (a deployment's server holds no client's data); otherwise the roles are
    carved from `dataset` as in `load_splits`."""
    if not (config.public_dataset and config.test_dataset):
        return load_splits(config)
    data_dir = str(cache_dir(config))
    test_x, test_y, test_source = load_role(config, "test_dataset", data_dir)
    assert test_y is not None  # the test role requires labels
    num_classes = int(test_y.max()) + 1
    _require_every_class(f"test_dataset ({test_source})", test_y, num_classes)
    public_x, public_y, public_source = load_role(config, "public_dataset", data_dir)
    _check_public(public_x, public_y, public_source, test_x.shape[1:], test_source, num_classes)
    data = ServerData(public_x, public_y, test_x, test_y, num_classes, public_source)
    check_label_options(config, data.public)
    return data


def check_label_options(config: RunConfig, public: PublicData) -> None:
    """Raise ValueError when an option that reads public labels meets an unlabelled set."""
    if config.allow_public_labels:
        public.labels("allow_public_labels=true (fedmd's warm-up, the hard-label term)")


def carved_sizes(config: RunConfig, pool_size: int) -> tuple[int, int]:
    """(test, public) pool sizes carved from `pool_size` samples at the config's fractions."""
    n_test = round(config.test_fraction * pool_size)
    return n_test, round(config.public_fraction * (pool_size - n_test))


def load_role(
    config: RunConfig, role: str, data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """One separately sourced role (x, y or None, source name); a generated one defaults to
    the size it would be carved at and to a fresh generator seed."""
    n_test, n_public = carved_sizes(config, config.num_samples)
    return load_source(
        getattr(config, role),
        role,
        data_dir or str(cache_dir(config)),
        n_public if role == "public_dataset" else n_test,
        config.seed + ROLE_SEED_OFFSETS[role],
    )


@functools.lru_cache(maxsize=4)
def _load_splits_cached(
    dataset: str,
    public_dataset: str,
    test_dataset: str,
    data_dir: str,
    num_samples: int,
    seed: int,
    public_fraction: float,
    test_fraction: float,
    public_shift: float = 0.0,
) -> DatasetSplits:
    # Each loader returns arrays that passed `check_samples`, or names the file and the problem.
    if dataset == "mnist1d":
        x, y = mnist1d_pool(Path(data_dir), num_samples, seed)
        source = f"{data_dir}/mnist1d-n{num_samples}-seed{seed}.npz"
    else:
        x, y, source = load_source(dataset, "dataset", data_dir, num_samples, seed)
    assert y is not None  # the private role requires labels
    fractions = (public_fraction, test_fraction)
    if not (public_dataset or test_dataset):
        try:
            splits = split_pools(x, y, seed, *fractions)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        splits = dataclasses.replace(splits, public_source=f"the public split of {source}")
        if public_shift > 0:  # config validation allows it for mnist1d only
            shifted = split_pools(
                *mnist1d_pool(Path(data_dir), num_samples, seed, public_shift), seed, *fractions
            )
            splits = dataclasses.replace(
                splits,
                public_x=shifted.public_x,
                public_y=shifted.public_y,
                public_source=f"the public split of {source} at public_shift={public_shift:g}",
            )
        return splits
    config = RunConfig.from_mapping(
        {
            "dataset": dataset,
            "public_dataset": public_dataset,
            "test_dataset": test_dataset,
            "data_dir": data_dir,
            "num_samples": num_samples,
            "seed": seed,
            "public_fraction": public_fraction,
            "test_fraction": test_fraction,
        }
    )
    return _join_roles(config, x, y, source, data_dir)


def _join_roles(
    config: RunConfig, x: np.ndarray, y: np.ndarray, source: str, data_dir: str
) -> DatasetSplits:
    """Carve the roles left empty out of (x, y), load the others, and check they fit."""
    try:
        pools = cut_pools(
            y,
            config.seed,
            0.0 if config.public_dataset else config.public_fraction,
            0.0 if config.test_dataset else config.test_fraction,
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    private = pools["private"]
    if config.test_dataset:
        test_x, test_y, test_source = load_role(config, "test_dataset", data_dir)
        assert test_y is not None
        _check_shape("test_dataset", test_source, test_x.shape[1:], x.shape[1:], source)
    else:
        test_x, test_y, test_source = (
            x[pools["test"]],
            y[pools["test"]],
            f"the test split of {source}",
        )
    num_classes = int(max(y[private].max(), test_y.max())) + 1
    _require_every_class(f"private pool of dataset ({source})", y[private], num_classes)
    _require_every_class(f"test set ({test_source})", test_y, num_classes)
    if config.public_dataset:
        public_x, public_y, public_source = load_role(config, "public_dataset", data_dir)
        _check_public(public_x, public_y, public_source, x.shape[1:], source, num_classes)
    else:
        public_x, public_y = x[pools["public"]], y[pools["public"]]
        public_source = f"the public split of {source}"
        _require_every_class(public_source, public_y, num_classes, CARVED_HINT)
    return DatasetSplits(
        public_x=public_x,
        public_y=public_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        public_source=public_source,
        private_x=x[private],
        private_y=y[private],
    )


def _check_public(
    public_x: np.ndarray,
    public_y: np.ndarray | None,
    public_source: str,
    input_shape: tuple[int, ...],
    other_source: str,
    num_classes: int,
) -> None:
    """A separately sourced public set: same input shape as `other_source`, labels (if any)
    within the K classes."""
    _check_shape("public_dataset", public_source, public_x.shape[1:], input_shape, other_source)
    if public_y is not None and public_y.max() >= num_classes:
        raise ValueError(
            f"public_dataset ({public_source}) has label {int(public_y.max())}, but the private "
            f"and test labels have K={num_classes} classes (0..{num_classes - 1}); fix the "
            "labels or drop 'y' from the public set (labels are optional there)"
        )


def _check_shape(
    role: str, source: str, shape: tuple[int, ...], expected: tuple[int, ...], other: str
) -> None:
    if tuple(shape) != tuple(expected):
        raise ValueError(
            f"{role} ({source}) has inputs of shape {tuple(shape)} per sample, but {other} has "
            f"{tuple(expected)}: every role must have the same input shape"
        )


def cut_pools(
    y: np.ndarray, seed: int, public_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Index arrays 'test', 'public', 'private' into the N samples with labels `y`: one
    shuffle with `seed`, then test, public and private cut in that order (a fraction of 0 cuts
    an empty pool: that role has its own source). Labels must be 0..K-1 with no gap."""
    order = np.random.default_rng([seed, 0]).permutation(len(y))
    n_test = round(test_fraction * len(y))
    n_public = round(public_fraction * (len(y) - n_test))
    carved = [
        n for n, fraction in ((n_test, test_fraction), (n_public, public_fraction)) if fraction
    ]
    if 0 in carved or len(y) - n_test - n_public < 2:
        raise ValueError(
            f"{len(y)} samples cannot be split into test ({n_test}), public ({n_public}) "
            "and private pools: every pool must be non-empty"
        )
    classes = np.unique(y)
    if not np.array_equal(classes, np.arange(len(classes))):
        missing = np.setdiff1d(np.arange(classes.max() + 1), classes)
        raise ValueError(
            f"labels must be 0..K-1, got classes {classes.tolist()[:20]}; every class needs a "
            f"sample, and classes {missing.tolist()[:20]} have none"
        )
    test, public, private = np.split(order, [n_test, n_test + n_public])
    return {"test": test, "public": public, "private": private}


def split_pools(
    x: np.ndarray, y: np.ndarray, seed: int, public_fraction: float, test_fraction: float
) -> DatasetSplits:
    """Shuffle once with `seed`, then cut test, public and private pools (in that order);
    every class must reach the public and the test pool."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    pools = cut_pools(y, seed, public_fraction, test_fraction)
    num_classes = int(y.max()) + 1
    for name in ("public", "test"):
        _require_every_class(f"the {name} split", y[pools[name]], num_classes, CARVED_HINT)
    return DatasetSplits(
        public_x=x[pools["public"]],
        public_y=y[pools["public"]],
        test_x=x[pools["test"]],
        test_y=y[pools["test"]],
        num_classes=num_classes,
        public_source="",
        private_x=x[pools["private"]],
        private_y=y[pools["private"]],
    )


CARVED_HINT = (
    "every class needs at least one public and one test sample: add samples of those classes "
    "or raise public_fraction / test_fraction"
)
ROLES_HINT = (
    "every class needs at least one private and one test sample: add samples of those classes "
    "or give a test_dataset that covers them"
)


def _require_every_class(
    pool: str, labels: np.ndarray, num_classes: int, hint: str = ROLES_HINT
) -> None:
    """Raise ValueError unless `labels` (one pool's) hold every class 0..K-1 at least once."""
    missing = np.setdiff1d(np.arange(num_classes), labels)
    if len(missing):
        raise ValueError(
            f"{pool} ({len(labels)} samples) has no sample of class(es) "
            f"{missing.tolist()[:20]} of K={num_classes}; {hint}"
        )


def public_hash(public_x: np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes of the public inputs: a stable content id."""
    contiguous = np.ascontiguousarray(public_x, dtype=np.float32)
    digest = hashlib.sha256()
    digest.update(f"float32{contiguous.shape}".encode())
    digest.update(contiguous.tobytes())
    return digest.hexdigest()


def partition_indices(
    labels: np.ndarray, config: RunConfig, num_partitions: int | None = None
) -> list[np.ndarray]:
    """Split private-pool indices into `num_partitions` (default `config.num_clients`) parts
    with a Flower Datasets partitioner.

    Returns
    -------
    One sorted int64 index array per client; the arrays are disjoint and cover the pool.
    """
    count = num_partitions or config.num_clients
    return [partition_of(labels, config, i, count) for i in range(count)]


def partition_of(
    labels: np.ndarray, config: RunConfig, partition_id: int, num_partitions: int | None = None
) -> np.ndarray:
    """One client's part, `partition_indices(labels, config, num_partitions)[partition_id]`,
    computed without the other clients' parts.

    A node needs only its own partition: the partitioner (for Dirichlet and pathological
    splits, one assignment pass over the pool) is built once per process and kept, and each
    part is cut from it when first asked for and kept too, so a simulated federation of many
    clients never materialises every client's part in one process.

    Returns
    -------
    (n_i,) int64 sorted indices into `labels`.
    """
    count = num_partitions or config.num_clients
    if not 0 <= partition_id < count:
        raise ValueError(f"partition-id must be in [0, {count}), got {partition_id}")
    settings = (
        count,
        config.partitioner,
        config.dirichlet_alpha,
        config.classes_per_client,
        config.seed,
    )
    return _partition_cached(_Labels(labels), *settings, partition_id)


class _Labels:
    """A label array as a cache key: equal by content digest, so the caches hold one digest
    and a reference per entry instead of a copy of the labels."""

    def __init__(self, labels: np.ndarray) -> None:
        self.array = np.ascontiguousarray(labels, dtype=np.int64)
        self.digest = hashlib.blake2b(self.array.data, digest_size=16).digest()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Labels) and other.digest == self.digest


@functools.lru_cache(maxsize=16384)  # index arrays of every part this process served
def _partition_cached(
    labels: _Labels,
    num_clients: int,
    partitioner_name: str,
    alpha: float,
    classes_per_client: int,
    seed: int,
    partition_id: int,
) -> np.ndarray:
    partitioner = _partitioner_cached(
        labels, num_clients, partitioner_name, alpha, classes_per_client, seed
    )
    partition = partitioner.load_partition(partition_id)
    return np.sort(np.asarray(partition.with_format("numpy")[:]["index"]))


@functools.lru_cache(maxsize=8)
def _partitioner_cached(
    labels_key: _Labels,
    num_clients: int,
    partitioner_name: str,
    alpha: float,
    classes_per_client: int,
    seed: int,
) -> Partitioner:
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    labels = labels_key.array
    if len(labels) < num_clients:
        raise ValueError(
            f"{len(labels)} private samples cannot be split over {num_clients} clients"
        )
    # IidPartitioner has no seed: shuffle rows first so the IID split still follows our seed.
    order = np.random.default_rng([seed, 1]).permutation(len(labels))
    table = Dataset.from_dict({"label": labels[order], "index": order})
    partitioner: Partitioner
    if partitioner_name == "iid":
        partitioner = IidPartitioner(num_partitions=num_clients)
    elif partitioner_name == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=max(1, min(10, len(labels) // (4 * num_clients))),
            seed=seed,
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    partitioner.dataset = table
    return partitioner
