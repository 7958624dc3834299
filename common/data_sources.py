"""Where one data role's arrays come from: the source spec, its loader, and the checks every
loaded array passes.

Three roles, each with its own config key: `dataset` (the private pool, partitioned over the
clients in simulation), `public_dataset` (the distillation inputs every party holds its own
copy of; labels optional) and `test_dataset` (the server's evaluation set). A spec is one of

- `mnist1d` — MNIST-1D generated locally (no network); in the public and test roles it takes
  generator settings, `mnist1d:n=3200,seed=5,shift=0.5,scale=0.4,translation=48` (each
  optional: `n` samples, generator `seed`, noise and shear ×(1 + `shift`), `scale` = the
  generator's scale_coeff, `translation` = its max_translation);
- `npz:PATH` — arrays `x` (N, ...) and integer labels `y` (N,); a public set may omit `y`;
- `parquet:DIR` — a local folder of parquet files with an image column and `label` (Flower
  Datasets, offline);
- `mnist` / `cifar10` — a hub dataset through Flower Datasets (online), train and test pooled.

Inputs come back float32 with one leading sample axis: (N, L) for MNIST-1D signals, (N, F) for
flat features, (N, C, H, W) for images; labels int64 or None (an unlabelled public set).
"""

from __future__ import annotations

import functools
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.files import save_npz

log = logging.getLogger(__name__)

ROLES = ("dataset", "public_dataset", "test_dataset")
HUB_NAMES = {"mnist": "ylecun/mnist", "cifar10": "uoft-cs/cifar10"}
IMAGE_COLUMNS = ("image", "img")
PATH_PREFIXES = ("npz:", "parquet:")
MNIST1D_KEYS = ("n", "seed", "shift", "scale", "translation")
# A generated public or test set is a fresh draw: its generator seed is the run's seed plus the
# role's offset unless the spec names one (the private pool is drawn at the run's seed).
ROLE_SEED_OFFSETS = {"public_dataset": 104729, "test_dataset": 130363}
SHIFTED_ARGS = ("corr_noise_scale", "iid_noise_scale", "shear_scale")
SHIFT_SEED_OFFSET = 7919  # shifted samples are new draws, not noisier copies of the originals


@dataclass(frozen=True)
class Mnist1dSettings:
    """One MNIST-1D generator setting (None = the generator's default for that argument).

    Attributes
    ----------
    n : samples to draw (the generator draws n // 10 per class).
    seed : the generator's seed.
    shift : correlated and i.i.d. noise and shear scales ×(1 + shift).
    scale : the generator's `scale_coeff` (random rescaling of each signal).
    translation : the generator's `max_translation` (random shift of each signal).
    """

    n: int
    seed: int
    shift: float = 0.0
    scale: float | None = None
    translation: int | None = None

    def cache_name(self) -> str:
        """The file name of this setting's cached draw."""
        parts = [f"mnist1d-n{self.n}-g{self.seed}", f"shift{self.shift:g}"]
        if self.scale is not None:
            parts.append(f"scale{self.scale:g}")
        if self.translation is not None:
            parts.append(f"tr{self.translation}")
        return "-".join(parts) + ".npz"


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source spec of one role.

    Attributes
    ----------
    kind : 'mnist1d' | 'npz' | 'parquet' | 'hub'.
    location : the file or folder (npz, parquet) or hub name (hub); '' for mnist1d.
    generator : the spec's own MNIST-1D settings, as {key: value} (only keys it names).
    """

    kind: str
    location: str = ""
    generator: tuple[tuple[str, float], ...] = ()


def parse_source(text: str, role: str) -> SourceSpec:
    """Parse the spec `text` of config key `role`; raise ValueError naming the key, the bad
    part and what is allowed."""
    if text.startswith(PATH_PREFIXES):
        prefix, location = text.split(":", 1)
        if not location.strip():
            raise ValueError(f"{role}={text!r} names no path; expected {prefix}:PATH")
        return SourceSpec(kind=prefix, location=str(Path(location).expanduser()))
    if text in HUB_NAMES:
        return SourceSpec(kind="hub", location=HUB_NAMES[text])
    name, _, settings = text.partition(":")
    if name != "mnist1d":
        raise ValueError(
            f"unknown {role} {text!r}; allowed: mnist1d, {', '.join(HUB_NAMES)}, npz:PATH or "
            "parquet:DIR"
        )
    if settings and role == "dataset":
        raise ValueError(
            f"dataset={text!r}: generator settings are for public_dataset and test_dataset; the "
            "private pool is set with num_samples and seed"
        )
    return SourceSpec(kind="mnist1d", generator=_parse_generator(text, settings, role))


def _parse_generator(text: str, settings: str, role: str) -> tuple[tuple[str, float], ...]:
    values: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in settings.split(","))):
        key, equals, value = item.partition("=")
        if not equals or key not in MNIST1D_KEYS:
            raise ValueError(
                f"{role}={text!r}: {item!r} is not a generator setting; allowed keys "
                f"{MNIST1D_KEYS}, as key=value separated by commas"
            )
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{role}={text!r}: {key} must be a number, got {value!r}") from None
        integral = key in ("n", "seed", "translation")
        if integral and not number.is_integer():
            raise ValueError(f"{role}={text!r}: {key} must be an integer, got {value!r}")
        low = {"n": 10, "seed": 0, "shift": 0, "scale": 0, "translation": 0}[key]
        if number < low:
            raise ValueError(f"{role}={text!r}: {key} must be >= {low}, got {value}")
        values[key] = number
    return tuple(sorted(values.items()))


def mnist1d_settings(spec: SourceSpec, default_n: int, default_seed: int) -> Mnist1dSettings:
    """The generator setting of a parsed `mnist1d` spec, with the role's defaults filled in."""
    given = dict(spec.generator)
    translation = given.get("translation")
    return Mnist1dSettings(
        n=int(given.get("n", default_n)),
        seed=int(given.get("seed", default_seed)),
        shift=float(given.get("shift", 0.0)),
        scale=given.get("scale"),
        translation=None if translation is None else int(translation),
    )


@functools.lru_cache(maxsize=16)
def load_source(
    spec_text: str, role: str, data_dir: str, default_n: int, default_seed: int
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Load one role's arrays from its spec.

    Parameters
    ----------
    spec_text : the role's config value (see the module docstring).
    role : 'dataset' | 'public_dataset' | 'test_dataset'; only the public role may be unlabelled.
    data_dir : cache for generated and converted data.
    default_n, default_seed : a generated set's size and generator seed when the spec names none.

    Returns
    -------
    x (N, ...) float32, y (N,) int64 or None, and the source's name for messages (its file, or
    the resolved generator setting).
    """
    spec = parse_source(spec_text, role)
    labels_required = role != "public_dataset"
    if spec.kind == "mnist1d":
        settings = mnist1d_settings(spec, default_n, default_seed)
        x, y = generate_mnist1d(Path(data_dir), settings)
        name = (
            f"mnist1d:n={settings.n},seed={settings.seed},shift={settings.shift:g}"
            + ("" if settings.scale is None else f",scale={settings.scale:g}")
            + ("" if settings.translation is None else f",translation={settings.translation}")
        )
        return x, y, name
    if spec.kind in ("npz", "parquet") and not Path(spec.location).exists():
        raise ValueError(f"{role} file {spec.location!r} (from {spec_text!r}) does not exist")
    if spec.kind == "npz":
        x, y = load_npz(Path(spec.location), labels_required, role)
    else:
        x, y = load_flower_dataset(spec.location, labels_required)
    return x, y, spec.location


def generate_mnist1d(data_dir: Path, settings: Mnist1dSettings) -> tuple[np.ndarray, np.ndarray]:
    """One MNIST-1D generator setting, drawn locally and cached as npz under `data_dir`."""
    overrides: dict[str, float] = {
        name: (1.0 + settings.shift) for name in SHIFTED_ARGS if settings.shift
    }
    absolute: dict[str, float] = {}
    if settings.scale is not None:
        absolute["scale_coeff"] = settings.scale
    if settings.translation is not None:
        absolute["max_translation"] = settings.translation
    return _generate(
        data_dir / settings.cache_name(), settings.n, settings.seed, overrides, absolute
    )


def mnist1d_pool(
    data_dir: Path, num_samples: int, seed: int, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The `dataset=mnist1d` pool (and, with `shift` > 0, the `public_shift` redraw of it):
    `num_samples` samples at `seed` (the redraw at seed + SHIFT_SEED_OFFSET), cached as npz."""
    suffix = f"-shift{shift:g}" if shift > 0 else ""
    path = data_dir / f"mnist1d-n{num_samples}-seed{seed}{suffix}.npz"
    generator_seed = seed + SHIFT_SEED_OFFSET if shift > 0 else seed
    factors = {name: 1.0 + shift for name in SHIFTED_ARGS} if shift > 0 else {}
    return _generate(path, num_samples, generator_seed, factors, {})


def _generate(
    path: Path,
    num_samples: int,
    seed: int,
    factors: dict[str, float],
    absolute: dict[str, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Generate into `path` unless cached, then load the checked cache. `factors` multiply
    generator arguments, `absolute` set them."""
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        log.info("generating MNIST-1D (%d samples, seed %d) into %s", num_samples, seed, path)
        args = get_dataset_args()
        args.num_samples = num_samples
        args.train_split = 1.0 - 1.0 / num_samples  # we do our own split; keep one in 'test'
        args.seed = seed
        for name, factor in factors.items():
            setattr(args, name, getattr(args, name) * factor)
        for name, value in absolute.items():
            setattr(args, name, type(getattr(args, name))(value))
        raw = make_dataset(args)
        x = np.concatenate([raw["x"], raw["x_test"]]).astype(np.float32)
        y = np.concatenate([raw["y"], raw["y_test"]]).astype(np.int64)
        save_npz(path, x, y)  # atomic: concurrent generators cannot collide
    x, y = load_npz(path)
    assert y is not None  # generated sets carry labels; load_npz required them
    return x, y


def check_samples(x: np.ndarray, y: np.ndarray | None, source: str) -> None:
    """Raise ValueError naming `source`, the array and the first bad index unless x and y are a
    usable dataset: x (N, ...) with N >= 1 and only finite values, y (N,) integer labels >= 0
    (or None: an unlabelled public set).

    Whether every class 0..K-1 has a sample is a property of the whole federation, checked
    when the roles are put together (`common.data`); a node's own file may hold some classes.
    """
    if x.ndim < 2 or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise ValueError(
            f"{source}: x must be (N, ...) with N >= 1 samples and at least one feature axis, "
            f"got shape {x.shape}"
        )
    not_finite = ~np.isfinite(x)
    if not_finite.any():
        first = np.unravel_index(np.argmax(not_finite), x.shape)
        raise ValueError(
            f"{source}: x{list(map(int, first))} is {x[first]}; every input must be finite "
            f"({int(not_finite.sum())} value(s) are NaN or ±Inf)"
        )
    if y is None:
        return
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{source}: y must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{source}: x has {len(x)} samples but y has {len(y)}")
    if (y < 0).any():
        first = int(np.argmax(y < 0))
        raise ValueError(f"{source}: y[{first}] is {y[first]}; labels must be integers 0..K-1")


def load_npz(
    path: Path, labels_required: bool = True, role: str = "npz dataset"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Bring-your-own data: an .npz with arrays `x` (N, ...) and integer labels `y` (N,); `y`
    may be absent when `labels_required` is False (an unlabelled public set).

    Returns x as float32 and y as int64 (or None) after `check_samples`; raises ValueError
    naming the file for a missing, unreadable or malformed file.
    """
    if not path.exists():
        raise ValueError(f"{role} {str(path)!r} does not exist")
    x, y = read_npz_arrays(path, labels_required)
    check_samples(x, y, str(path))
    return x, None if y is None else y.astype(np.int64)


def read_npz_arrays(
    path: Path, labels_required: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrays `x` (as float32) and `y` (None when absent and not required) of an .npz archive,
    never unpickling anything.

    Raises ValueError "not a valid .npz archive" naming the file when it is not a zip of .npy
    arrays (or holds object arrays), and names the missing array when `x` (or a required `y`)
    is absent.
    """
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(_not_npz(path, _reason(error))) from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise ValueError(_not_npz(path, "it is a single .npy array"))
    with arrays:
        needed = {"x", "y"} if labels_required else {"x"}
        missing = needed - set(arrays.files)
        if missing:
            expected = "'x' and 'y'" if labels_required else "'x' (and optionally 'y')"
            raise ValueError(f"{path} must hold arrays {expected}; missing {sorted(missing)}")
        try:
            x = arrays["x"]
            y = arrays["y"] if "y" in arrays.files else None
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(_not_npz(path, _reason(error))) from None
    for name, array in (("x", x), ("y", y)):
        if array is not None and not isinstance(array, np.ndarray):
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


def load_flower_dataset(
    name_or_dir: str, labels_required: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Image datasets through Flower Datasets: a hub name (online) or a local parquet folder.

    Train and test splits are pooled; our own seeded split re-cuts them. Without a `label`
    column the labels are None, allowed only when `labels_required` is False.
    """
    from datasets import get_dataset_split_names
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import IidPartitioner

    fds = FederatedDataset(dataset=name_or_dir, partitioners={"train": IidPartitioner(1)})
    xs, ys = [], []
    for split in get_dataset_split_names(name_or_dir):  # FederatedDataset does not list splits
        table = fds.load_split(split)
        image_column = next((c for c in IMAGE_COLUMNS if c in table.column_names), None)
        has_labels = "label" in table.column_names
        if image_column is None or (labels_required and not has_labels):
            raise ValueError(
                f"{name_or_dir}: expected an image column {IMAGE_COLUMNS} and 'label', "
                f"got columns {table.column_names}"
            )
        columns = table.with_format("numpy")[:]
        xs.append(_images_to_nchw(np.asarray(columns[image_column])))
        if has_labels:
            ys.append(np.asarray(columns["label"], dtype=np.int64))
    x = np.concatenate(xs)
    y = np.concatenate(ys) if len(ys) == len(xs) else None
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
