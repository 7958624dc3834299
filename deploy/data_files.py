"""Each party's data files under the three data roles, written from one config for a demo
deployment (`feddistill cluster`, `feddistill deploy data`).

Layout under the output folder, one folder per host:

- `server/public.npz` — the public set (x, and y when it has labels: diagnostics only) and
  `server/test.npz` — the test set; the ServerApp's run config names both
  (`public_dataset`, `test_dataset`), so the server never reads the private pool;
- `node-<i>/private-<i>.npz` — node i's private partition (x, y), and
  `node-<i>/public.npz` — node i's own copy of the public inputs (x only: a node needs no
  public labels); its SuperNode gets `data-path` and `public-path` pointing at them.

No file holds more than one party's private data, and no node is given another's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.config import RunConfig
from common.data import load_splits, partition_indices
from common.files import save_npz


@dataclass(frozen=True)
class DeploymentData:
    """Where each party's files are.

    Attributes
    ----------
    server_public, server_test : the ServerApp host's public and test sets.
    node_private, node_public : per node i, its private partition and its public copy.
    """

    server_public: Path
    server_test: Path
    node_private: tuple[Path, ...]
    node_public: tuple[Path, ...]

    def run_config_changes(self) -> dict[str, str]:
        """The run-config keys that point the ServerApp at its own two files."""
        return {
            "public_dataset": f"npz:{self.server_public}",
            "test_dataset": f"npz:{self.server_test}",
        }

    def node_configs(self) -> list[dict[str, str | int]]:
        """One SuperNode config per node: its index, its private file and its public copy."""
        return [
            {"partition-id": i, "data-path": str(private), "public-path": str(public)}
            for i, (private, public) in enumerate(
                zip(self.node_private, self.node_public, strict=True)
            )
        ]


def write_deployment_data(config: RunConfig, directory: Path, nodes: int) -> DeploymentData:
    """Split `config`'s data into per-party files under `directory` (see module docstring):
    the private pool partitioned over `nodes` with the config's partitioner."""
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    splits = load_splits(config)
    server = directory / "server"
    data = DeploymentData(
        server_public=server / "public.npz",
        server_test=server / "test.npz",
        node_private=tuple(directory / f"node-{i}" / f"private-{i}.npz" for i in range(nodes)),
        node_public=tuple(directory / f"node-{i}" / "public.npz" for i in range(nodes)),
    )
    save_npz(data.server_public, splits.public_x, splits.public_y)
    save_npz(data.server_test, splits.test_x, splits.test_y)
    parts = partition_indices(splits.private_y, config, nodes)
    for part, private, public in zip(parts, data.node_private, data.node_public, strict=True):
        save_npz(private, splits.private_x[part], splits.private_y[part])
        save_npz(public, splits.public_x)
    return data
