"""Where a node's private data comes from: a partition of a known dataset, or a local file.

Node config keys (set per SuperNode with `--node-config`, or by the simulation engine):
`partition-id` / `num-partitions` select a partition of the configured dataset (demos and
simulation); `data-path` points to the node's own `.npz` (arrays `x`, `y`) or parquet folder;
`data-dir` is the node's own cache for generated/downloaded data (overrides the run config's
`data_dir`, which names a directory on the server's host); `public-path` points to the node's
own copy of the public set (`.npz` with `x`, `y` optional, or a parquet folder), checked
against the server's by hash. Without `public-path` the node loads the run config's
`public_dataset` itself (a generator spec, or a file at the same path on this host), or, when
that is empty, carves the public split out of `dataset` (demos and simulation).

The run config comes from whoever submits the run, i.e. the server's side. Two node-config keys
are the operator's own floor under it: `require-secagg=true` refuses any run (and any round)
that would send this node's soft labels in the clear, and `min-dp-noise-multiplier=z` refuses a
run whose client-level DP noise is below z.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import RunConfig
from common.data import PublicData, load_role, load_splits, partition_of
from common.data_sources import load_flower_dataset, load_npz


def node_run_config(
    run_config: Mapping[str, object], node_config: Mapping[str, object]
) -> RunConfig:
    """The run config as this node applies it: node-local paths replace the server's, and the
    operator's floor (`require-secagg`, `min-dp-noise-multiplier`) refuses weaker settings."""
    config = RunConfig.from_mapping(run_config)
    check_operator_floor(config, node_config)
    if "data-dir" in node_config:
        data_dir = str(node_config["data-dir"]).strip()
        if not data_dir:
            raise ValueError("node config 'data-dir' must be a directory path, got ''")
        config = config.replace(data_dir=str(Path(data_dir).expanduser()))
    return config


def check_operator_floor(config: RunConfig, node_config: Mapping[str, object]) -> None:
    """Raise ValueError if the run's privacy settings are below what this node's operator set."""
    require = str(node_config.get("require-secagg", "false")).strip().lower()
    if require not in ("true", "false"):
        raise ValueError(f"node config 'require-secagg' must be true or false, got {require!r}")
    if require == "true" and not config.secagg:
        raise ValueError(
            "this node requires secure aggregation (node config require-secagg=true); "
            "refusing a run with secagg=false, which would send its soft labels in the clear"
        )
    if "min-dp-noise-multiplier" in node_config:
        try:
            floor = float(str(node_config["min-dp-noise-multiplier"]))
        except ValueError:
            raise ValueError(
                "node config 'min-dp-noise-multiplier' must be a number, got "
                f"{node_config['min-dp-noise-multiplier']!r}"
            ) from None
        if config.dp_noise_multiplier < floor:
            raise ValueError(
                f"this node requires dp_noise_multiplier >= {floor} (node config "
                f"min-dp-noise-multiplier), the run asks for {config.dp_noise_multiplier}"
            )


@dataclass(frozen=True)
class PrivateData:
    """A node's private training set: x (N, ...) float32, y (N,) int64, and its label."""

    x: np.ndarray
    y: np.ndarray
    label: str
    index: int


def load_private_data(config: RunConfig, node_config: Mapping[str, object]) -> PrivateData:
    """Resolve this node's private data from its node config (see module docstring)."""
    if "data-path" in node_config:
        path = Path(str(node_config["data-path"])).expanduser()
        x, y = _load_local(path)
        assert y is not None  # private data requires labels
        index = int(node_config.get("partition-id", 0))  # type: ignore[arg-type]
        return PrivateData(x=x, y=y, label=f"{path.name}", index=index)
    if "partition-id" not in node_config:
        raise ValueError(
            "node config must set either 'data-path' or 'partition-id' (with 'num-partitions'); "
            f"got keys {sorted(node_config)}"
        )
    partition_id = int(node_config["partition-id"])  # type: ignore[arg-type]
    # The node's view wins: the simulation engine sets num-partitions = num-supernodes.
    num_partitions = int(node_config.get("num-partitions", config.num_clients))  # type: ignore[arg-type]
    splits = load_splits(config)
    indices = partition_of(splits.private_y, config, partition_id, num_partitions)
    return PrivateData(
        x=splits.private_x[indices],
        y=splits.private_y[indices],
        label=f"partition-{partition_id}",
        index=partition_id,
    )


def load_node_public(
    config: RunConfig, node_config: Mapping[str, object], num_classes: int
) -> PublicData:
    """This node's own copy of the public set (see module docstring); `num_classes` is the
    run's K as the server announced it."""
    if "public-path" in node_config:
        path = Path(str(node_config["public-path"])).expanduser()
        x, y = _load_local(path, "public-path", labels_required=False)
        return PublicData(x, y, num_classes, f"{path} (node config public-path)")
    if config.public_dataset:
        x, y, source = load_role(config, "public_dataset")
        return PublicData(x, y, num_classes, f"{source} (run config public_dataset)")
    return load_splits(config).public


def check_private_fits(private: PrivateData, public: PublicData) -> None:
    """Raise ValueError unless this node's private data fits the run: the public set's input
    shape and labels within the run's K classes."""
    if private.x.shape[1:] != public.x.shape[1:]:
        raise ValueError(
            f"this node's private data ({private.label}) has inputs of shape "
            f"{tuple(private.x.shape[1:])} per sample, but the public set ({public.source}) has "
            f"{public.input_shape}: every role must have the same input shape"
        )
    if int(private.y.max()) >= public.num_classes:
        raise ValueError(
            f"this node's private data ({private.label}) has label {int(private.y.max())}, but "
            f"the run has K={public.num_classes} classes (0..{public.num_classes - 1})"
        )


def _load_local(
    path: Path, key: str = "data-path", labels_required: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    if path.suffix == ".npz":
        return load_npz(path, labels_required, f"node config {key}")
    if path.is_dir():
        return load_flower_dataset(str(path), labels_required)
    raise ValueError(f"{key} {str(path)!r} must be an .npz file or a parquet folder")
