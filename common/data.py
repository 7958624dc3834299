"""Datasets, the private/public/test split, partitions over clients, and the public-set hash.

The same deterministic split is computed by the server and by every client from the config, so
nothing but the public-set hash has to be agreed on the wire. Inputs are float32 with one leading
sample axis: (N, L) for MNIST-1D signals, (N, F) for flat features, (N, C, H, W) for images.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.config import RunConfig
from common.files import atomic_write_bytes

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

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
        config.public_shift,
    )


@functools.lru_cache(maxsize=4)
def _load_splits_cached(
    dataset: str,
    data_dir: str,
    num_samples: int,
    seed: int,
    public_fraction: float,
    test_fraction: float,
    public_shift: float = 0.0,
) -> DatasetSplits:
    # Each loader returns arrays that passed `check_samples`, or names the file and the problem.
    if dataset == "mnist1d":
        source = str(_mnist1d_path(Path(data_dir), num_samples, seed))
        x, y = _mnist1d(Path(data_dir), num_samples, seed)
    elif dataset.startswith("npz:"):
        source = str(Path(dataset[4:]).expanduser())
        x, y = load_npz(Path(source))
    elif dataset.startswith("parquet:"):
        source = str(Path(dataset[8:]).expanduser())
        x, y = load_flower_dataset(source)
    else:
        source = HUB_NAMES[dataset]
        x, y = load_flower_dataset(source)
    try:
        splits = split_pools(x, y, seed, public_fraction, test_fraction)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    if public_shift > 0:  # config validation allows it for mnist1d only
        shifted = split_pools(
            *_mnist1d(Path(data_dir), num_samples, seed, public_shift),
            seed,
            public_fraction,
            test_fraction,
        )
        splits = dataclasses.replace(splits, public_x=shifted.public_x, public_y=shifted.public_y)
    return splits


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
        missing = np.setdiff1d(np.arange(classes.max() + 1), classes)
        raise ValueError(
            f"labels must be 0..K-1, got classes {classes.tolist()[:20]}; every class needs a "
            f"sample, and classes {missing.tolist()[:20]} have none"
        )
    for name, pool in (("public", public), ("test", test)):
        _require_every_class(name, y[pool], len(classes))
    return DatasetSplits(
        private_x=x[private],
        private_y=y[private],
        public_x=x[public],
        public_y=y[public],
        test_x=x[test],
        test_y=y[test],
        num_classes=len(classes),
    )


def _require_every_class(pool: str, labels: np.ndarray, num_classes: int) -> None:
    """Raise ValueError unless `labels` (one pool's) hold every class 0..K-1 at least once."""
    missing = np.setdiff1d(np.arange(num_classes), labels)
    if len(missing):
        raise ValueError(
            f"the {pool} split ({len(labels)} samples) has no sample of class(es) "
            f"{missing.tolist()[:20]} of K={num_classes}; every class needs at least one public "
            "and one test sample: add samples of those classes or raise "
            "public_fraction / test_fraction"
        )


def check_samples(x: np.ndarray, y: np.ndarray, source: str) -> None:
    """Raise ValueError naming `source`, the array and the first bad index unless x and y are a
    usable dataset: x (N, ...) with N >= 1 and only finite values, y (N,) integer labels >= 0.

    Whether every class 0..K-1 has a sample is a property of the whole dataset, checked by
    `split_pools`; a node's own file may hold only some classes.
    """
    if x.ndim < 2 or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise ValueError(
            f"{source}: x must be (N, ...) with N >= 1 samples and at least one feature axis, "
            f"got shape {x.shape}"
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{source}: y must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{source}: x has {len(x)} samples but y has {len(y)}")
    not_finite = ~np.isfinite(x)
    if not_finite.any():
        first = np.unravel_index(np.argmax(not_finite), x.shape)
        raise ValueError(
            f"{source}: x{list(map(int, first))} is {x[first]}; every input must be finite "
            f"({int(not_finite.sum())} value(s) are NaN or ±Inf)"
        )
    if (y < 0).any():
        first = int(np.argmax(y < 0))
        raise ValueError(f"{source}: y[{first}] is {y[first]}; labels must be integers 0..K-1")


def public_hash(public_x: np.ndarray) -> str:
    """SHA-256 over dtype, shape and bytes of the public inputs: a stable content id."""
    contiguous = np.ascontiguousarray(public_x, dtype=np.float32)
    digest = hashlib.sha256()
    digest.update(f"float32{contiguous.shape}".encode())
    digest.update(contiguous.tobytes())
    return digest.hexdigest()


def _mnist1d_path(data_dir: Path, num_samples: int, seed: int, shift: float = 0.0) -> Path:
    """The cache file of one generated MNIST-1D dataset."""
    suffix = f"-shift{shift:g}" if shift > 0 else ""
    return data_dir / f"mnist1d-n{num_samples}-seed{seed}{suffix}.npz"


SHIFTED_ARGS = ("corr_noise_scale", "iid_noise_scale", "shear_scale")
SHIFT_SEED_OFFSET = 7919  # shifted samples are new draws, not noisier copies of the originals


def _mnist1d(
    data_dir: Path, num_samples: int, seed: int, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate MNIST-1D locally (no network), cache it as npz, and load the checked cache.

    `shift` > 0 draws from another distribution: the generator's correlated and i.i.d. noise
    scales and its shear scale are multiplied by (1 + shift) (the `public_shift` setting).
    """
    path = _mnist1d_path(data_dir, num_samples, seed, shift)
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        log.info("generating MNIST-1D (%d samples, shift %g) into %s", num_samples, shift, path)
        args = get_dataset_args()
        args.num_samples = num_samples
        args.train_split = 1.0 - 1.0 / num_samples  # we do our own split; keep one in 'test'
        args.seed = seed + SHIFT_SEED_OFFSET if shift > 0 else seed
        for name in SHIFTED_ARGS:
            setattr(args, name, getattr(args, name) * (1.0 + shift))
        raw = make_dataset(args)
        x = np.concatenate([raw["x"], raw["x_test"]]).astype(np.float32)
        y = np.concatenate([raw["y"], raw["y_test"]]).astype(np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, x=x, y=y)
        atomic_write_bytes(path, buffer.getvalue())  # concurrent generators cannot collide
    return load_npz(path)


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Bring-your-own data: an .npz with arrays `x` (N, ...) and integer labels `y` (N,).

    Returns x as float32 and y as int64 after `check_samples`; raises ValueError naming the
    file for a missing, unreadable or malformed file.
    """
    if not path.exists():
        raise ValueError(f"npz dataset {str(path)!r} does not exist")
    x, y = read_npz_arrays(path)
    check_samples(x, y, str(path))
    return x, y.astype(np.int64)


def read_npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `x` (as float32) and `y` of an .npz archive, never unpickling anything.

    Raises ValueError "not a valid .npz archive" naming the file when it is not a zip of .npy
    arrays (or holds object arrays), and names the missing array when `x` or `y` is absent.
    """
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(_not_npz(path, _reason(error))) from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise ValueError(_not_npz(path, "it is a single .npy array"))
    with arrays:
        missing = {"x", "y"} - set(arrays.files)
        if missing:
            raise ValueError(f"{path} must hold arrays 'x' and 'y'; missing {sorted(missing)}")
        try:
            x, y = arrays["x"], arrays["y"]
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(_not_npz(path, _reason(error))) from None
    for name, array in (("x", x), ("y", y)):
        if not isinstance(array, np.ndarray):
            raise ValueError(_not_npz(path, f"member {name!r} is not an .npy array"))
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"{path}: x must hold numbers, got dtype {x.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become ±inf, refused by name
        return x.astype(np.float32), y


def _not_npz(path: Path, why: str) -> str:
    return f"{str(path)!r} is not a valid .npz archive ({why}); expected arrays x and y"


def _reason(error: Exception) -> str:
    """numpy's error in our words: its pickle hints would invite loading untrusted code."""
    text = str(error)
    if "Object arrays" in text:
        return "an array holds Python objects; only plain numeric arrays are read"
    if "pickled" in text:
        return "neither a zip of .npy arrays nor an .npy file"
    return f"{type(error).__name__}: {text}"


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
    x, y = np.concatenate(xs), np.concatenate(ys)
    check_samples(x, y, name_or_dir)
    return x, y


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
