"""The three data roles: private pool, public set and test set, each from its own source."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image as PILImage

from client.data_source import PrivateData, check_private_fits, load_node_public
from common.config import RunConfig
from common.data import load_server_data, load_splits, public_hash
from common.data_sources import Mnist1dSettings, generate_mnist1d, parse_source
from common.files import save_npz
from deploy.data_files import write_deployment_data
from simulations.bench.plain_loop import run_plain

K = 4
TINY_RUN = {
    "num_clients": 3,
    "rounds": 2,
    "local_epochs": 1,
    "distill_epochs": 2,
    "digest_epochs": 1,
    "teacher_models": "mlp-s",
    "student_model": "mlp-s",
    "device": "cpu",
}


def _blobs(n: int, seed: int, features: int = 6, shift: float = 0.0) -> tuple[np.ndarray, ...]:
    """n samples of K well-separated Gaussian blobs, (n, features) float32 and (n,) int64."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(scale=3.0, size=(K, features))
    y = rng.permutation(np.arange(n) % K).astype(np.int64)
    x = centers[y] + shift + rng.normal(size=(n, features))
    return x.astype(np.float32), y


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A private pool, a labelled and an x-only public set, and a test set, as npz files."""
    paths = {}
    for name, n, seed in (("private", 600, 0), ("public", 200, 1), ("test", 160, 2)):
        paths[name] = tmp_path / f"{name}.npz"
        save_npz(paths[name], *_blobs(n, seed))
    paths["public_x"] = tmp_path / "public_x.npz"
    save_npz(paths["public_x"], _blobs(200, 1)[0])
    return paths


def _config(tmp_path: Path, **values: object) -> RunConfig:
    return RunConfig.from_mapping({"data_dir": str(tmp_path / "cache"), **TINY_RUN, **values})


# --- each role from each source form -----------------------------------------------------------


def test_separate_npz_roles_are_used_whole_and_the_private_pool_keeps_every_sample(tmp_path, files):
    config = _config(
        tmp_path,
        dataset=f"npz:{files['private']}",
        public_dataset=f"npz:{files['public']}",
        test_dataset=f"npz:{files['test']}",
    )

    splits = load_splits(config)

    public_x, public_y = _blobs(200, 1)
    test_x, test_y = _blobs(160, 2)
    np.testing.assert_array_equal(splits.public_x, public_x)
    np.testing.assert_array_equal(splits.public_y, public_y)
    np.testing.assert_array_equal(splits.test_x, test_x)
    np.testing.assert_array_equal(splits.test_y, test_y)
    assert len(splits.private_y) == 600  # nothing carved out of the private pool
    assert splits.num_classes == K
    assert splits.public_source == str(files["public"])


def test_one_separate_role_leaves_the_other_carved_from_the_dataset(tmp_path, files):
    config = _config(tmp_path, dataset=f"npz:{files['private']}", public_fraction=0.25)

    carved = load_splits(config)
    with_test = load_splits(config.replace(test_dataset=f"npz:{files['test']}"))
    with_public = load_splits(config.replace(public_dataset=f"npz:{files['public_x']}"))

    assert (len(carved.test_y), len(carved.public_x), len(carved.private_y)) == (120, 120, 360)
    # Test given: public and private are cut from all 600 (public_fraction of them).
    assert (len(with_test.public_x), len(with_test.private_y)) == (150, 450)
    np.testing.assert_array_equal(with_test.test_y, _blobs(160, 2)[1])
    # Public given: the test split is the same 120 samples, the private pool takes the rest.
    np.testing.assert_array_equal(with_public.test_x, carved.test_x)
    assert len(with_public.private_y) == 480
    assert with_public.public_y is None


def test_a_generated_public_set_is_a_fresh_draw_of_its_own_size_and_setting(tmp_path):
    config = _config(tmp_path, num_samples=1000, public_dataset="mnist1d:n=300,shift=0.5")

    splits = load_splits(config)
    default_draw = load_splits(config.replace(public_dataset="mnist1d"))
    carved = load_splits(config.replace(public_dataset=""))

    assert splits.public_x.shape == (300, 40)
    assert splits.public_source == "mnist1d:n=300,seed=104729,shift=0.5"
    # Unsized, it is drawn at the size it would have been carved at, from another seed.
    assert default_draw.public_x.shape == carved.public_x.shape == (160, 40)
    assert public_hash(default_draw.public_x) != public_hash(carved.public_x)
    assert len(default_draw.private_y) == len(carved.private_y) + 160


def test_a_generated_test_set_and_generator_settings_are_cached_and_deterministic(tmp_path):
    settings = Mnist1dSettings(n=100, seed=3, shift=0.5, scale=0.6, translation=24)

    first = generate_mnist1d(tmp_path, settings)
    again = generate_mnist1d(tmp_path, settings)
    other = generate_mnist1d(tmp_path, Mnist1dSettings(n=100, seed=3))

    np.testing.assert_array_equal(first[0], again[0])
    assert (tmp_path / settings.cache_name()).exists()
    assert not np.array_equal(first[0], other[0])
    splits = load_splits(_config(tmp_path, num_samples=1000, test_dataset="mnist1d:n=200,seed=4"))
    assert splits.test_x.shape == (200, 40)
    assert np.bincount(splits.test_y).tolist() == [20] * 10


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_parquet_folders_serve_as_public_and_test_sets(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    folders = {}
    for name, count, labelled in (("public", 30, False), ("test", 30, True)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        images = rng.integers(0, 256, size=(count, 8, 8), dtype=np.uint8)
        columns = {"image": [{"bytes": _png(image), "path": None} for image in images]}
        if labelled:
            columns["label"] = [i % 3 for i in range(count)]
        chosen = features if labelled else datasets.Features({"image": datasets.Image()})
        datasets.Dataset.from_dict(columns, features=chosen).to_parquet(
            str(folders[name] / "train.parquet")
        )
    private = tmp_path / "private.npz"
    save_npz(private, rng.random((90, 1, 8, 8), dtype=np.float32), np.arange(90) % 3)

    splits = load_splits(
        _config(
            tmp_path,
            dataset=f"npz:{private}",
            public_dataset=f"parquet:{folders['public']}",
            test_dataset=f"parquet:{folders['test']}",
        )
    )

    assert splits.public_x.shape == (30, 1, 8, 8) and splits.public_y is None
    assert splits.test_x.shape == (30, 1, 8, 8)
    assert splits.num_classes == 3


# --- compatibility, checked before anything trains ---------------------------------------------


def test_a_public_set_of_another_input_shape_is_refused_by_name(tmp_path, files):
    wide = tmp_path / "wide.npz"
    save_npz(wide, _blobs(50, 5, features=7)[0])
    config = _config(tmp_path, dataset=f"npz:{files['private']}", public_dataset=f"npz:{wide}")

    with pytest.raises(ValueError) as error:
        load_splits(config)

    assert str(error.value) == (
        f"public_dataset ({wide}) has inputs of shape (7,) per sample, but {files['private']} "
        "has (6,): every role must have the same input shape"
    )


def test_a_test_set_with_a_class_the_private_pool_lacks_is_refused(tmp_path, files):
    x, y = _blobs(160, 2)
    y[0] = K  # class 4: no private sample has it
    extra = tmp_path / "test5.npz"
    save_npz(extra, x, y)
    config = _config(tmp_path, dataset=f"npz:{files['private']}", test_dataset=f"npz:{extra}")

    with pytest.raises(
        ValueError, match=r"private pool of dataset .* no sample of class\(es\) \[4\]"
    ):
        load_splits(config)


def test_public_labels_beyond_the_classes_are_refused_with_the_fix(tmp_path, files):
    x, y = _blobs(100, 3)
    y[5] = 9
    bad = tmp_path / "bad_labels.npz"
    save_npz(bad, x, y)

    with pytest.raises(ValueError) as error:
        load_splits(
            _config(tmp_path, dataset=f"npz:{files['private']}", public_dataset=f"npz:{bad}")
        )

    assert "public_dataset" in str(error.value) and "has label 9" in str(error.value)
    assert "drop 'y' from the public set" in str(error.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"x": np.zeros((0, 6), np.float32)}, r"x must be \(N, ...\) with N >= 1"),
        (
            {"x": np.full((4, 6), np.nan, np.float32)},
            r"x\[0, 0\] is nan; every input must be finite",
        ),
        ({"y": np.arange(4)}, r"must hold arrays 'x' \(and optionally 'y'\); missing \['x'\]"),
    ],
    ids=["empty", "nan", "no-x"],
)
def test_bad_public_files_get_the_dataset_errors(tmp_path, files, values, message):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **values)

    with pytest.raises(ValueError, match=message):
        load_splits(
            _config(tmp_path, dataset=f"npz:{files['private']}", public_dataset=f"npz:{bad}")
        )


def test_a_missing_public_file_is_named_with_its_role(tmp_path, files):
    gone = tmp_path / "gone.npz"

    with pytest.raises(
        ValueError, match=r"public_dataset file .*gone.npz. \(from .npz:.*\) does not exist"
    ):
        load_splits(
            _config(tmp_path, dataset=f"npz:{files['private']}", public_dataset=f"npz:{gone}")
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"public_dataset": "mnist1d:n=5"}, r"n must be >= 10, got 5"),
        ({"public_dataset": "mnist1d:depth=3"}, r"'depth=3' is not a generator setting"),
        ({"test_dataset": "mnist1d:seed=1.5"}, r"seed must be an integer, got '1.5'"),
        ({"public_dataset": "imagenet"}, r"unknown public_dataset 'imagenet'; allowed: mnist1d"),
        ({"public_dataset": "npz:"}, r"public_dataset='npz:' names no path"),
        ({"public_dataset": " npz:a"}, r"must not have surrounding spaces"),
        (
            {"public_dataset": "mnist1d", "public_shift": 1.0},
            r"public_shift=1.0 redraws the carved public split",
        ),
    ],
    ids=["small-n", "unknown-key", "float-seed", "unknown-name", "no-path", "spaces", "shift"],
)
def test_bad_role_specs_are_refused_by_the_config(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_mapping(values)


def test_generator_settings_are_for_the_public_and_test_roles_only():
    with pytest.raises(ValueError, match="generator settings are for public_dataset"):
        parse_source("mnist1d:n=100", "dataset")


# --- unlabelled public sets --------------------------------------------------------------------


def test_options_that_read_public_labels_are_refused_for_an_unlabelled_set(tmp_path, files):
    config = _config(
        tmp_path,
        dataset=f"npz:{files['private']}",
        public_dataset=f"npz:{files['public_x']}",
        allow_public_labels=True,
    )

    with pytest.raises(ValueError) as error:
        load_splits(config)

    assert str(error.value) == (
        "allow_public_labels=true (fedmd's warm-up, the hard-label term) needs the public set's "
        f"labels, but {files['public_x']} has none (an x-only public set); give a labelled "
        "public set or leave the option off"
    )


def test_an_unlabelled_public_set_runs_and_its_label_metrics_are_absent(tmp_path, files):
    config = _config(
        tmp_path, dataset=f"npz:{files['private']}", public_dataset=f"npz:{files['public_x']}"
    )
    labelled = config.replace(public_dataset=f"npz:{files['public']}")

    rows = run_plain(config, load_splits(config))
    with_labels = run_plain(labelled, load_splits(labelled))

    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert not any(key.startswith("ensemble_public_") for row in rows for key in row)
    assert "ensemble_public_accuracy" in with_labels[0]
    # Labels are diagnostics only: the same inputs teach the same student.
    for row, other in zip(rows, with_labels, strict=True):
        assert row["student_accuracy"] == other["student_accuracy"]
        assert row["student_nll"] == other["student_nll"]


# --- what a deployed party loads ---------------------------------------------------------------


def test_the_server_with_both_roles_set_never_reads_the_private_pool(tmp_path, files):
    config = _config(
        tmp_path,
        dataset=f"npz:{tmp_path / 'not-on-this-host.npz'}",
        public_dataset=f"npz:{files['public_x']}",
        test_dataset=f"npz:{files['test']}",
    )

    data = load_server_data(config)

    assert data.num_classes == K and data.public_y is None
    assert len(data.test_y) == 160
    with pytest.raises(ValueError, match="does not exist"):
        load_splits(config)  # a simulation needs the private pool; the server does not


def test_a_node_loads_its_own_public_copy_and_checks_its_private_data_fits(tmp_path, files):
    config = _config(tmp_path, public_dataset="npz:/server/only/public.npz")
    node = {"public-path": str(files["public_x"])}

    public = load_node_public(config, node, num_classes=K)
    x, y = _blobs(20, 9)

    assert public.source == f"{files['public_x']} (node config public-path)"
    assert public_hash(public.x) == public_hash(_blobs(200, 1)[0])
    check_private_fits(PrivateData(x, y, "mine.npz", 0), public)
    with pytest.raises(ValueError, match=r"has label 3, but the run has K=3 classes"):
        check_private_fits(PrivateData(x, y, "mine.npz", 0), load_node_public(config, node, 3))
    with pytest.raises(ValueError, match=r"inputs of shape \(5,\) per sample"):
        check_private_fits(PrivateData(x[:, :5], y, "mine.npz", 0), public)


def test_deployment_files_give_each_party_only_its_own_data(tmp_path):
    config = _config(tmp_path, num_samples=1000)
    splits = load_splits(config)

    data = write_deployment_data(config, tmp_path / "hosts", nodes=3)

    with np.load(data.server_public) as server_public, np.load(data.server_test) as test:
        np.testing.assert_array_equal(server_public["x"], splits.public_x)
        np.testing.assert_array_equal(test["y"], splits.test_y)
    sizes = []
    for private, public in zip(data.node_private, data.node_public, strict=True):
        assert private.parent == public.parent  # one folder per host
        with np.load(public) as copy:
            assert copy.files == ["x"]  # a node gets no public labels
            assert public_hash(copy["x"]) == public_hash(splits.public_x)
        with np.load(private) as own:
            sizes.append(len(own["y"]))
    assert sum(sizes) == len(splits.private_y)
    assert data.node_configs()[2] == {
        "partition-id": 2,
        "data-path": str(data.node_private[2]),
        "public-path": str(data.node_public[2]),
    }


def test_roles_left_empty_carve_exactly_the_pools_of_the_single_dataset_split(tmp_path):
    # Prepare: sample i holds the value i, so each pool shows which samples it took. The digests
    # are of the index order split_pools produced before the roles existed (integer-only: the
    # same on every CPU).
    x = np.arange(1000, dtype=np.float32)[:, None]
    y = (np.arange(1000) * 7) % 10
    path = tmp_path / "indexed.npz"
    save_npz(path, x, y)
    config = RunConfig.from_mapping(
        {"dataset": f"npz:{path}", "seed": 3, "data_dir": str(tmp_path / "cache")}
    )

    # Execute
    splits = load_splits(config)

    # Assert
    def digest(pool: np.ndarray) -> str:
        indices = pool[:, 0].astype(np.int64)
        return hashlib.sha256(indices.tobytes()).hexdigest()[:16]

    assert (digest(splits.public_x), digest(splits.test_x), digest(splits.private_x)) == (
        "d5268818aa094ffc",
        "0f39fed84f1420cf",
        "f1c443a1a618d0b9",
    )
    np.testing.assert_array_equal(splits.public_y, y[splits.public_x[:, 0].astype(np.int64)])
