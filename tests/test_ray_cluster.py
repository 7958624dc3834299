"""A simulation attached to an existing two-node Ray cluster (`feddistill run --ray-address`).

The cluster is two `ray start --block` processes on this machine (a head and a worker node, one
CPU each, own temp dir and ports), so every Ray process is a descendant of one of them and is
stopped by PID. One client actor fits per node, so the client messages must spread over both.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.placement import messages_per_ray_node, read_placement
from simulations.cli import main
from simulations.launcher import check_ray_address
from simulations.processes import (
    console_script,
    descendants,
    free_port,
    start_process,
    stop_process,
    wait_for_log_line,
)

RAY_STARTED = "Ray runtime started."
NODE_ID = re.compile(r"Setting node ID node_id=([0-9a-f]{56})")


@dataclass(frozen=True)
class RayCluster:
    """A running local cluster: its head's address, its processes and its temp dir."""

    address: str
    processes: tuple[subprocess.Popen, ...]
    temp_dir: Path

    def node_ids(self) -> set[str]:
        """Ids of the raylets this cluster started, from their own log lines."""
        found = set()
        for log in (self.temp_dir / "session_latest" / "logs").glob("raylet*.out"):
            match = NODE_ID.search(log.read_text())
            if match:
                found.add(match.group(1))
        return found


def _ray_start(arguments: list[str], log: Path) -> subprocess.Popen:
    """`ray start --block` with every port we know of set to a free one (the defaults, e.g.
    10001 and 52365, are fixed and would clash with other Ray instances on this machine)."""
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
    }
    command = [
        console_script("ray"),
        "start",
        "--block",
        "--num-cpus=1",
        "--num-gpus=0",
        "--node-ip-address=127.0.0.1",
        "--disable-usage-stats",
        *(f"{flag}={port}" for flag, port in ports.items()),
        *arguments,
    ]
    process = start_process(command, log)
    wait_for_log_line(log, RAY_STARTED, 0, timeout=90, process=process)
    return process


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    # Short root: Ray's unix socket paths under it must stay below 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="fdray-", dir="/tmp"))
    port = free_port()
    processes: list[subprocess.Popen] = []
    try:
        processes.append(
            _ray_start(
                [
                    "--head",
                    f"--port={port}",
                    f"--temp-dir={temp_dir}",
                    "--include-dashboard=false",
                    f"--dashboard-port={free_port()}",
                    f"--ray-client-server-port={free_port()}",
                ],
                temp_dir / "head.log",
            )
        )
        processes.append(_ray_start([f"--address=127.0.0.1:{port}"], temp_dir / "worker.log"))
        yield RayCluster(f"127.0.0.1:{port}", tuple(processes), temp_dir)
    finally:
        for process in reversed(processes):
            stop_process(process)
        shutil.rmtree(temp_dir, ignore_errors=True)  # Ray's session logs and sockets


@pytest.fixture(scope="module")
def cluster_run(ray_cluster: RayCluster, tmp_path_factory) -> Path:
    """`feddistill run --ray-address` with the smallest setting that runs a round."""
    out = tmp_path_factory.mktemp("ray-cluster-run")
    settings = {
        "num_clients": 4,
        "rounds": 1,
        "num_samples": 1200,
        "teacher_models": "cnn1d-s",
        "student_model": "cnn1d-s",
        "local_epochs": 1,
        "distill_epochs": 1,
        "partitioner": "iid",
        "secagg": "false",  # one message stage: the cluster, not the protocol, is under test
        "data_dir": str(out / "data"),
    }
    overrides = [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]
    arguments = ["run", *overrides, "--out", str(out / "run"), "--client-cpus", "1"]
    assert main([*arguments, "--ray-address", ray_cluster.address]) == 0
    return out / "run"


def test_cluster_has_two_nodes(ray_cluster):
    assert len(ray_cluster.node_ids()) == 2


def test_client_messages_ran_on_both_nodes_of_the_cluster(ray_cluster, cluster_run):
    rows = read_placement(cluster_run)
    # Each client's describe and train message recorded once, and only by the cluster's two
    # nodes (a private local Ray instance would have a node id of its own).
    handled = sorted((row["message_type"], row["partition_id"]) for row in rows)
    assert handled == [(kind, i) for kind in ("query.describe", "train") for i in range(4)]
    assert {row["ray_node_id"] for row in rows} == ray_cluster.node_ids()
    assert sum(messages_per_ray_node(cluster_run).values()) == 8
    assert all(row["seconds"] > 0 for row in rows)


def test_run_on_the_cluster_completes_its_round(cluster_run):
    summary = json.loads((cluster_run / "summary.json").read_text())
    assert summary["rounds_completed"] == 1
    assert summary["rounds_failed"] == 0


def test_stopping_the_cluster_leaves_no_process(ray_cluster, cluster_run):
    # Runs last in this module: it stops the shared cluster (the fixture's stop is then a no-op).
    tree = [pid for process in ray_cluster.processes for pid in descendants(process.pid)]
    assert len(tree) >= 4  # at least gcs_server and a raylet per node
    for process in reversed(ray_cluster.processes):
        stop_process(process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running([*tree, *_mentioning(ray_cluster.temp_dir)]):
        time.sleep(0.2)
    assert _running([*tree, *_mentioning(ray_cluster.temp_dir)]) == []


def _running(pids: list[int]) -> list[int]:
    """The PIDs among `pids` that still exist and are not zombies."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _mentioning(temp_dir: Path) -> list[int]:
    """PIDs whose command line names `temp_dir` (every Ray process of the cluster does)."""
    needle = str(temp_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize(
    "address", ["ray://10.0.0.5:10001", "10.0.0.5", "10.0.0.5:port", ":6379", "h:70000"]
)
def test_bad_ray_address_is_refused_with_the_allowed_forms(address):
    with pytest.raises(ValueError, match="HOST:PORT of the cluster's head node"):
        check_ray_address(address)


def test_feddistill_run_refuses_a_bad_ray_address_before_preparing_data(tmp_path, capsys):
    arguments = ["run", "--out", str(tmp_path / "run"), "--ray-address", "ray://head:10001"]

    assert main(arguments) == 2

    err = capsys.readouterr().err
    assert "feddistill: error: ray address must be HOST:PORT" in err
    assert "got 'ray://head:10001'" in err
    assert not (tmp_path / "run").exists()
