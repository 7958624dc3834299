"""Tests for common.data: pools, partitions, the public-set hash and the dataset loaders."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
from PIL import Image as PILImage

from common import data
from common.config import RunConfig
from common.data import (
    load_splits,
    partition_indices,
    partition_of,
    public_hash,
    split_pools,
)
from common.data_sources import load_flower_dataset, load_npz

NUM_CLASSES = 10
# 1000 private labels, 100 per class, in shuffled order.
PRIVATE_LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(NUM_CLASSES), 100))

PARTITIONER_SETTINGS = [
    {"partitioner": "iid"},
    {"partitioner": "dirichlet", "dirichlet_alpha": 0.1},
    {"partitioner": "dirichlet", "dirichlet_alpha": 0.5},
    {"partitioner": "pathological", "classes_per_client": 2},
]


def _partition(seed: int, num_clients: int = 10, **settings: object) -> list[np.ndarray]:
    """Partition PRIVATE_LABELS from scratch (the result cache would hide nondeterminism).

    Ten clients for ten classes: with fewer clients than classes the pathological partitioner
    leaves whole classes unassigned (Flower warns), so it could not cover the pool.
    """
    _clear_partition_caches()
    config = RunConfig.from_mapping({"seed": seed, "num_clients": num_clients, **settings})
    return partition_indices(PRIVATE_LABELS, config)


def _clear_partition_caches() -> None:
    data._partition_cached.cache_clear()
    data._partitioner_cached.cache_clear()


def _label_entropy(labels: np.ndarray) -> float:
    shares = np.bincount(labels, minlength=NUM_CLASSES) / len(labels)
    shares = shares[shares > 0]
    return float(-np.sum(shares * np.log(shares)))


# --- partitions ------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", PARTITIONER_SETTINGS, ids=lambda s: str(s))
def test_partitions_are_disjoint_sorted_and_cover_the_private_pool(settings):
    # Execute
    parts = _partition(seed=0, **settings)

    # Assert
    assert len(parts) == 10
    assert all(len(part) > 0 for part in parts)
    assert all(part.dtype == np.int64 and np.all(np.diff(part) > 0) for part in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(PRIVATE_LABELS)))


@pytest.mark.parametrize("settings", PARTITIONER_SETTINGS, ids=lambda s: str(s))
def test_partitions_are_deterministic_per_seed_and_differ_across_seeds(settings):
    # Execute
    first = _partition(seed=3, **settings)
    again = _partition(seed=3, **settings)
    other = _partition(seed=4, **settings)

    # Assert
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_partitions_have_equal_sizes():
    parts = _partition(seed=0, partitioner="iid")

    assert [len(part) for part in parts] == [100] * 10


def test_pathological_partitions_hold_at_most_classes_per_client_classes():
    for classes_per_client in (1, 2, 3):
        parts = _partition(
            seed=0, partitioner="pathological", classes_per_client=classes_per_client
        )

        for part in parts:
            assert 1 <= len(np.unique(PRIVATE_LABELS[part])) <= classes_per_client


def test_smaller_dirichlet_alpha_gives_more_skewed_label_distributions():
    # Mean per-client label entropy: uniform over 10 classes would be ln 10 = 2.303.
    entropy = {
        alpha: np.mean(
            [
                _label_entropy(PRIVATE_LABELS[part])
                for part in _partition(seed=0, partitioner="dirichlet", dirichlet_alpha=alpha)
            ]
        )
        for alpha in (0.1, 0.5, 100.0)
    }

    assert entropy[0.1] < entropy[0.5] < entropy[100.0]
    assert entropy[100.0] > 0.95 * np.log(NUM_CLASSES)


def test_partition_count_follows_num_partitions_argument():
    _clear_partition_caches()
    config = RunConfig.from_mapping({"partitioner": "iid", "num_clients": 5})

    parts = partition_indices(PRIVATE_LABELS, config, num_partitions=4)

    assert [len(part) for part in parts] == [250] * 4


def test_too_few_private_samples_for_the_clients_is_an_error():
    _clear_partition_caches()
    config = RunConfig.from_mapping({"partitioner": "iid", "num_clients": 5})

    with pytest.raises(ValueError, match=r"3 private samples cannot be split over 5 clients"):
        partition_indices(np.array([0, 1, 0], dtype=np.int64), config)


@pytest.mark.parametrize("settings", PARTITIONER_SETTINGS, ids=lambda s: str(s))
def test_one_partition_is_cut_without_the_others_and_equals_the_full_split(settings):
    # Prepare
    config = RunConfig.from_mapping({"seed": 4, "num_clients": 10, **settings})
    full = _partition(seed=4, **settings)
    _clear_partition_caches()

    # Execute
    part = partition_of(PRIVATE_LABELS.copy(), config, 7)

    # Assert: equal to the full split's part 7, and no other part was cut.
    np.testing.assert_array_equal(part, full[7])
    assert part.dtype == np.int64
    assert data._partition_cached.cache_info().currsize == 1
    assert data._partitioner_cached.cache_info().currsize == 1


def test_partition_of_keeps_the_partitioner_for_later_parts():
    _clear_partition_caches()
    config = RunConfig.from_mapping({"partitioner": "dirichlet", "num_clients": 10})

    for partition_id in range(3):
        partition_of(PRIVATE_LABELS, config, partition_id)

    assert data._partitioner_cached.cache_info().misses == 1
    assert data._partition_cached.cache_info().currsize == 3


@pytest.mark.parametrize("partition_id", [-1, 10])
def test_partition_id_outside_the_partitions_is_an_error(partition_id):
    config = RunConfig.from_mapping({"partitioner": "iid", "num_clients": 10})

    with pytest.raises(ValueError, match=rf"partition-id must be in \[0, 10\), got {partition_id}"):
        partition_of(PRIVATE_LABELS, config, partition_id)


# --- public_hash -----------------------------------------------------------------------------


def test_public_hash_is_stable_across_copies_layouts_and_releases():
    # Prepare
    public_x = np.arange(12, dtype=np.float32).reshape(3, 4)
    fortran_copy = np.asfortranarray(public_x)
    as_float64 = public_x.astype(np.float64)

    # Execute
    digest = public_hash(public_x)

    # Assert: the digest is a content id; it must not change between releases either.
    assert digest == "f8d59934b76a483e903f880e7ad7dcdd9bdbc0227011bf58707284cd00f90e9f"
    assert public_hash(public_x.copy()) == digest
    assert public_hash(fortran_copy) == digest
    assert public_hash(as_float64) == digest


def test_public_hash_changes_with_one_value_or_the_shape():
    public_x = np.arange(12, dtype=np.float32).reshape(3, 4)
    one_changed = public_x.copy()
    one_changed[2, 3] = np.nextafter(one_changed[2, 3], np.float32(np.inf))

    assert public_hash(one_changed) != public_hash(public_x)
    assert public_hash(public_x.reshape(4, 3)) != public_hash(public_x)


# --- split_pools -----------------------------------------------------------------------------


def test_split_pools_are_disjoint_cover_the_data_and_have_the_right_sizes():
    # Prepare: feature value = sample id, so the pools can be traced back.
    x = np.arange(200, dtype=np.float32)[:, None]
    y = np.arange(200) % 4

    # Execute
    splits = split_pools(x, y, seed=0, public_fraction=0.25, test_fraction=0.2)

    # Assert: test = round(0.2·200) = 40, public = round(0.25·160) = 40, private = 120.
    ids = [pool[:, 0].astype(int) for pool in (splits.test_x, splits.public_x, splits.private_x)]
    assert [len(pool) for pool in ids] == [40, 40, 120]
    np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(200))
    for pool_ids, pool_y in zip(
        ids, (splits.test_y, splits.public_y, splits.private_y), strict=True
    ):
        np.testing.assert_array_equal(pool_y, pool_ids % 4)
    assert splits.num_classes == 4
    assert splits.input_shape == (1,)


def test_split_pools_is_deterministic_per_seed():
    x = np.arange(200, dtype=np.float32)[:, None]
    y = np.arange(200) % 4

    first = split_pools(x, y, seed=5, public_fraction=0.25, test_fraction=0.2)
    again = split_pools(x, y, seed=5, public_fraction=0.25, test_fraction=0.2)
    other = split_pools(x, y, seed=6, public_fraction=0.25, test_fraction=0.2)

    np.testing.assert_array_equal(first.public_x, again.public_x)
    np.testing.assert_array_equal(first.test_x, again.test_x)
    assert not np.array_equal(first.public_x, other.public_x)


def test_split_pools_rejects_mismatched_lengths_and_gapped_labels():
    x = np.zeros((50, 2), dtype=np.float32)

    with pytest.raises(ValueError, match=r"x has 50 samples but y has 49"):
        split_pools(x, np.zeros(49, dtype=np.int64), 0, 0.2, 0.2)
    with pytest.raises(ValueError, match=r"labels must be 0..K-1, got classes \[0, 2\]"):
        split_pools(x, np.arange(50) % 2 * 2, 0, 0.2, 0.2)


# --- npz -------------------------------------------------------------------------------------


def test_npz_with_flat_features_loads_and_splits(tmp_path):
    # Prepare: 100 samples of 7 float64 features, int32 labels 0..2.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 7))
    y = (np.arange(100) % 3).astype(np.int32)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    config = RunConfig.from_mapping({"dataset": f"npz:{path}", "data_dir": str(tmp_path)})

    # Execute
    loaded_x, loaded_y = load_npz(path)
    splits = load_splits(config)

    # Assert
    assert loaded_x.dtype == np.float32 and loaded_x.shape == (100, 7)
    assert loaded_y.dtype == np.int64
    np.testing.assert_array_equal(loaded_x, x.astype(np.float32))
    np.testing.assert_array_equal(loaded_y, y)
    assert splits.input_shape == (7,)
    assert splits.num_classes == 3
    assert (len(splits.test_x), len(splits.public_x), len(splits.private_x)) == (20, 16, 64)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 2))}, r"must hold arrays 'x' and 'y'; missing \['y'\]"),
        ({"features": np.zeros((4, 2)), "y": np.arange(4)}, r"missing \['x'\]"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, r"y must be a 1-D integer array, got float64"),
        ({"x": np.zeros((4, 2)), "y": np.zeros((4, 1), dtype=int)}, r"1-D integer .* \(4, 1\)"),
    ],
    ids=["missing-y", "missing-x", "float-y", "2d-y"],
)
def test_bad_npz_files_are_rejected_with_the_reason(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)

    with pytest.raises(ValueError, match=message):
        load_npz(path)


def test_missing_npz_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"npz dataset '.*gone.npz' does not exist"):
        load_npz(tmp_path / "gone.npz")


# --- MNIST-1D --------------------------------------------------------------------------------


def test_mnist1d_is_generated_cached_and_split(tmp_path):
    # Prepare
    config = RunConfig.from_mapping({"num_samples": 600, "data_dir": str(tmp_path)})

    # Execute
    splits = load_splits(config)

    # Assert: 600 = test 120 + public round(0.2·480) = 96 + private 384; signals of length 40.
    assert (tmp_path / "mnist1d-n600-seed0.npz").exists()
    assert splits.input_shape == (40,)
    assert splits.num_classes == 10
    assert (len(splits.test_x), len(splits.public_x), len(splits.private_x)) == (120, 96, 384)
    assert splits.private_x.dtype == np.float32 and splits.private_y.dtype == np.int64
    with np.load(tmp_path / "mnist1d-n600-seed0.npz") as cached:
        assert cached["x"].shape == (600, 40)
        assert sorted(set(cached["y"].tolist())) == list(range(10))


def test_public_shift_redraws_only_the_public_inputs_from_a_noisier_generator(tmp_path):
    config = RunConfig.from_mapping({"num_samples": 600, "data_dir": str(tmp_path)})
    plain = load_splits(config)

    shifted = load_splits(config.replace(public_shift=1.0))

    assert (tmp_path / "mnist1d-n600-seed0-shift1.npz").exists()
    np.testing.assert_array_equal(shifted.private_x, plain.private_x)
    np.testing.assert_array_equal(shifted.test_x, plain.test_x)
    assert shifted.public_x.shape == plain.public_x.shape
    assert not np.allclose(shifted.public_x, plain.public_x)
    assert set(shifted.public_y.tolist()) == set(range(10))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"public_shift": -0.5}, "public_shift must be >= 0 (0 = off), got -0.5"),
        (
            {"public_shift": 1.0, "dataset": "mnist"},
            "public_shift=1.0 needs dataset=mnist1d (it regenerates the public inputs), "
            "got dataset='mnist'",
        ),
    ],
)
def test_public_shift_is_refused_where_it_cannot_apply(values, message):
    with pytest.raises(ValueError) as error:
        RunConfig.from_mapping(values)
    assert str(error.value) == message


# --- Flower Datasets (local parquet) ---------------------------------------------------------


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_parquet_dir(tmp_path, monkeypatch):
    """60 random 8×8 grayscale PNGs (40 train, 20 test); pixel (0, 0) holds the image id 0..59,
    label = id mod 3. Pixel (0, 1) is 0 and (0, 2) is 255 in every image."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 8, 8), dtype=np.uint8)
    images[:, 0, 0] = np.arange(60)
    images[:, 0, 1] = 0
    images[:, 0, 2] = 255
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    folder = tmp_path / "images"
    folder.mkdir()
    for split, ids in (("train", range(40)), ("test", range(40, 60))):
        table = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": _png(images[i]), "path": None} for i in ids],
                "label": [i % 3 for i in ids],
            },
            features=features,
        )
        table.to_parquet(str(folder / f"{split}.parquet"))
    return folder, images


def test_flower_dataset_from_local_parquet_gives_nchw_images_in_unit_range(image_parquet_dir):
    # Prepare
    folder, images = image_parquet_dir

    # Execute
    x, y = load_flower_dataset(str(folder))

    # Assert: both splits are pooled, as (N, 1, 8, 8) float32 in [0, 1], labels kept per image.
    assert x.shape == (60, 1, 8, 8) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    image_ids = np.rint(x[:, 0, 0, 0] * 255).astype(int)
    np.testing.assert_array_equal(np.sort(image_ids), np.arange(60))
    np.testing.assert_array_equal(y, image_ids % 3)
    np.testing.assert_allclose(x[:, 0], images[image_ids] / 255.0, atol=1e-7)


def test_parquet_dataset_through_load_splits(image_parquet_dir, tmp_path):
    folder, _ = image_parquet_dir
    config = RunConfig.from_mapping(
        {"dataset": f"parquet:{folder}", "data_dir": str(tmp_path), "student_model": "cnn2d-s"}
    )

    splits = load_splits(config)

    assert splits.input_shape == (1, 8, 8)
    assert splits.num_classes == 3
    assert (len(splits.test_x), len(splits.public_x), len(splits.private_x)) == (12, 10, 38)


def test_rgb_images_from_local_parquet_become_channels_first(tmp_path, monkeypatch):
    # Prepare: 6 RGB 4×4 images, each colour channel a constant, so (C, H, W) order is visible.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    images = np.zeros((6, 4, 4, 3), dtype=np.uint8)
    images[..., 0] = np.arange(6)[:, None, None] * 10  # red = 10 · image id
    images[..., 1] = 128
    images[..., 2] = 255
    folder = tmp_path / "rgb"
    folder.mkdir()
    datasets.Dataset.from_dict(
        {"img": [PILImage.fromarray(image, mode="RGB") for image in images], "label": [0, 1] * 3},
        features=datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")}),
    ).to_parquet(str(folder / "train.parquet"))

    # Execute
    x, y = load_flower_dataset(str(folder))

    # Assert: (N, 3, 4, 4); red identifies the image, green and blue are constant planes.
    assert x.shape == (6, 3, 4, 4)
    image_ids = np.rint(x[:, 0, 0, 0] * 255 / 10).astype(int)
    np.testing.assert_array_equal(np.sort(image_ids), np.arange(6))
    np.testing.assert_array_equal(y, image_ids % 2)
    np.testing.assert_allclose(x[:, 0], (image_ids * 10 / 255.0)[:, None, None] * np.ones((4, 4)))
    np.testing.assert_allclose(x[:, 1], 128 / 255.0)
    np.testing.assert_allclose(x[:, 2], 1.0)


def test_parquet_without_image_column_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "tabular"
    folder.mkdir()
    datasets.Dataset.from_dict({"value": [1.0, 2.0], "label": [0, 1]}).to_parquet(
        str(folder / "train.parquet")
    )

    with pytest.raises(ValueError, match=r"expected an image column .* got columns"):
        load_flower_dataset(str(folder))
