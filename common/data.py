"""Datasets, the private/public/test split, partitions over clients, and the public-set hash.

The same deterministic split is computed by the server and by every client from the config, so
nothing but the public-set hash has to be agreed on the wire. Inputs are float32 with one leading
sample axis: (N, L) for MNIST-1D signals, (N, F) for flat features, (N, C, H, W) for images.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.files import atomic_write_bytes

log = logging.getLogger(__name__)

HUB_NAMES = {"mnist": "ylecun/mnist", "cifar10": "uoft-cs/cifar10"}
IMAGE_COLUMNS = ("image", "img")


@dataclass(frozen=True)
class DatasetSplits:
    """The three disjoint pools of one dataset.

    Attributes
    ----------
    private_x, private_y : (N_priv, ...) float32, (N_priv,) int64 — partitioned over clients.
    public_x : (N_pub, ...) float32 — distillation inputs, known to every party.
    public_y : (N_pub,) int64 — used only for simulation diagnostics and the ablation term.
    test_x, test_y : (N_test, ...) float32, (N_test,) int64 — held out for evaluation.
    num_classes : K.
    """

    private_x: np.ndarray
    private_y: np.ndarray
    public_x: np.ndarray
    public_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch axis."""
        return tuple(self.public_x.shape[1:])


def cache_dir(config: RunConfig) -> Path:
    """Directory for generated or converted data."""
    path = Path(config.data_dir or "~/.cache/feddistill").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_splits(config: RunConfig) -> DatasetSplits:
    """Load (or generate) the dataset named by `config.dataset` and split it deterministically."""
    return _load_splits_cached(
        config.dataset,
        str(cache_dir(config)),
        config.num_samples,
        config.seed,
        config.public_fraction,
        config.test_fraction,
    )


@functools.lru_cache(maxsize=4)
def _load_splits_cached(
    dataset: str,
    data_dir: str,
    num_samples: int,
    seed: int,
    public_fraction: float,
    test_fraction: float,
) -> DatasetSplits:
    if dataset == "mnist1d":
        x, y = _mnist1d(Path(data_dir), num_samples, seed)
    elif dataset.startswith("npz:"):
        x, y = load_npz(Path(dataset[4:]).expanduser())
    elif dataset.startswith("parquet:"):
        x, y = load_flower_dataset(str(Path(dataset[8:]).expanduser()))
    else:
        x, y = load_flower_dataset(HUB_NAMES[dataset])
    return split_pools(x, y, seed, public_fraction, test_fraction)


def split_pools(
    x: np.ndarray, y: np.ndarray, seed: int, public_fraction: float, test_fraction: float
) -> DatasetSplits:
    """Shuffle once with `seed`, then cut test, public and private pools (in that order)."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    order = np.random.default_rng([seed, 0]).permutation(len(x))
    n_test = round(test_fraction * len(x))
    n_public = round(public_fraction * (len(x) - n_test))
    if n_test == 0 or n_public == 0 or len(x) - n_test - n_public < 2:
        raise ValueError(
            f"{len(x)} samples cannot be split into test ({n_test}), public ({n_public}) "
            "and private pools: every pool must be non-empty"
        )
    test, public, private = np.split(order, [n_test, n_test + n_public])
    classes = np.unique(y)
    if not np.array_equal(classes, np.arange(len(classes))):
        raise ValueError(f"labels must be 0..K-1, got classes {classes.tolist()[:20]}")
    return DatasetSplits(
        private_x=x[private],
        private_y=y[private],
        public_x=x[public],
        public_y=y[public],
        test_x=x[test],
        test_y=y[test],
        num_classes=len(classes),
    )


def public_hash(public_x: np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes of the public inputs: a stable content id."""
    contiguous = np.ascontiguousarray(public_x, dtype=np.float32)
    digest = hashlib.sha256()
    digest.update(f"float32{contiguous.shape}".encode())
    digest.update(contiguous.tobytes())
    return digest.hexdigest()


def _mnist1d(data_dir: Path, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate MNIST-1D locally (no network) and cache it as npz."""
    path = data_dir / f"mnist1d-n{num_samples}-seed{seed}.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        log.info("generating MNIST-1D (%d samples) into %s", num_samples, path)
        args = get_dataset_args()
        args.num_samples = num_samples
        args.train_split = 1.0 - 1.0 / num_samples  # we do our own split; keep one in 'test'
        args.seed = seed
        raw = make_dataset(args)
        x = np.concatenate([raw["x"], raw["x_test"]]).astype(np.float32)
        y = np.concatenate([raw["y"], raw["y_test"]]).astype(np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, x=x, y=y)
        atomic_write_bytes(path, buffer.getvalue())  # concurrent generators cannot collide
    with np.load(path) as arrays:
        return arrays["x"], arrays["y"]


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Bring-your-own data: an .npz with arrays `x` (N, ...) and integer labels `y` (N,)."""
    if not path.exists():
        raise ValueError(f"npz dataset {str(path)!r} does not exist")
    with np.load(path) as arrays:
        missing = {"x", "y"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path} must hold arrays 'x' and 'y'; missing {sorted(missing)}")
        x, y = arrays["x"].astype(np.float32), arrays["y"]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: y must be a 1-D integer array, got {y.dtype} {y.shape}")
    return x, y.astype(np.int64)


def load_flower_dataset(name_or_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Image datasets through Flower Datasets: a hub name (online) or a local parquet folder.

    Train and test splits are pooled; our own seeded split re-cuts them.
    """
    from datasets import get_dataset_split_names
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import IidPartitioner

    fds = FederatedDataset(dataset=name_or_dir, partitioners={"train": IidPartitioner(1)})
    xs, ys = [], []
    for split in get_dataset_split_names(name_or_dir):  # FederatedDataset does not list splits
        table = fds.load_split(split)
        image_column = next((c for c in IMAGE_COLUMNS if c in table.column_names), None)
        if image_column is None or "label" not in table.column_names:
            raise ValueError(
                f"{name_or_dir}: expected an image column {IMAGE_COLUMNS} and 'label', "
                f"got columns {table.column_names}"
            )
        images = table.with_format("numpy")[:][image_column]
        xs.append(_images_to_nchw(np.asarray(images)))
        ys.append(np.asarray(table.with_format("numpy")[:]["label"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _images_to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 → (N, C, H, W) float32 in [0, 1]."""
    images = images.astype(np.float32) / 255.0
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        return np.transpose(images, (0, 3, 1, 2)).copy()
    raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {images.shape}")


def partition_indices(
    labels: np.ndarray, config: RunConfig, num_partitions: int | None = None
) -> list[np.ndarray]:
    """Split private-pool indices into `num_partitions` (default `config.num_clients`) parts
    with a Flower Datasets partitioner.

    Returns
    -------
    One sorted int64 index array per client; the arrays are disjoint and cover the pool.
    """
    return _partition_cached(
        labels.tobytes(),
        num_partitions or config.num_clients,
        config.partitioner,
        config.dirichlet_alpha,
        config.classes_per_client,
        config.seed,
    )


@functools.lru_cache(maxsize=8)
def _partition_cached(
    label_bytes: bytes,
    num_clients: int,
    partitioner_name: str,
    alpha: float,
    classes_per_client: int,
    seed: int,
) -> list[np.ndarray]:
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    labels = np.frombuffer(label_bytes, dtype=np.int64)
    if len(labels) < num_clients:
        raise ValueError(
            f"{len(labels)} private samples cannot be split over {num_clients} clients"
        )
    # IidPartitioner has no seed: shuffle rows first so the IID split still follows our seed.
    order = np.random.default_rng([seed, 1]).permutation(len(labels))
    table = Dataset.from_dict({"label": labels[order], "index": order})
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
    return [
        np.sort(np.asarray(partitioner.load_partition(i).with_format("numpy")[:]["index"]))
        for i in range(num_clients)
    ]
