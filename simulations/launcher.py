"""Run the ServerApp/ClientApp in Flower's simulation engine, on a SuperLink we own.

`flwr run .` against the `:local:` connection starts a shared SuperLink on fixed ports that
outlives the command. We instead start a private simulation SuperLink on free ports with its own
FLWR_HOME, submit the run with `flwr run`, stream its logs, and stop the SuperLink by PID — so
runs and tests can run side by side and leave nothing behind.

By default the simulation engine starts its own single-machine Ray instance. With a Ray address
(`host:port` of a running cluster's head, as `ray start --head` prints it) the SuperLink is
started with `RAY_ADDRESS` set, which Flower's Ray backend passes on to `ray.init`: the client
actors are then scheduled across the cluster's nodes and nothing Ray-side is started here.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.config import RunConfig
from common.secagg.identity import ensure_identities
from simulations.processes import (
    console_script,
    free_port,
    kill_tree,
    owned_processes,
    start_process,
    stop_process,
    wait_for_log_line,
    wait_for_port,
    wait_interruptibly,
    with_scripts_on_path,
)

APP_DIR = Path(__file__).resolve().parents[1]
SECAGG_IDENTITIES = "secagg-identities"  # under out_dir: roster.json and partition-N.key
CONNECTION = "feddistill-sim"
PID_FILE = "superlink.pid"
OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}
RAY_ADDRESS_ENV = "RAY_ADDRESS"


@dataclass(frozen=True)
class SimulationResources:
    """Per-client resources for the simulation engine.

    Attributes
    ----------
    num_supernodes : simulated clients (default: the config's num_clients).
    client_cpus : CPUs reserved per client actor (1 lets two clients train at once on 2 cores).
    client_gpus : GPU fraction per client (e.g. 0.25 → four clients share one GPU); 0 = none.
    """

    num_supernodes: int
    client_cpus: int = 1
    client_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {self.num_supernodes}")
        if self.client_cpus < 1:
            raise ValueError(f"client CPUs must be an integer >= 1, got {self.client_cpus}")
        if self.client_gpus < 0:
            raise ValueError(
                f"client GPUs must be >= 0 (a fraction shares one), got {self.client_gpus}"
            )

    def federation_config(self) -> str:
        """The `--federation-config` string for `flwr run`."""
        text = f"num-supernodes={self.num_supernodes} client-resources-num-cpus={self.client_cpus}"
        if self.client_gpus > 0:
            text += f" client-resources-num-gpus={self.client_gpus}"
        return text


def default_resources(config: RunConfig) -> SimulationResources:
    """One CPU per client; a quarter GPU per client when CUDA is there and allowed."""
    gpus = 0.0
    if config.device != "cpu":
        import torch

        gpus = 0.25 if torch.cuda.is_available() else 0.0
    return SimulationResources(num_supernodes=config.num_clients, client_gpus=gpus)


def run_config_toml(config: RunConfig) -> str:
    """The whole config as a TOML table body (the format `flwr run --run-config FILE` takes)."""
    lines = []
    for key, value in config.to_dict().items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value!r}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def check_ray_address(address: str) -> str:
    """`address` stripped if it names a running Ray cluster's head as `host:port` (or `auto`,
    Ray's own lookup of a cluster started on this machine); ValueError otherwise.

    Ray Client addresses (`ray://…`) are refused: Flower's Ray backend needs a driver that is
    part of the cluster, not a remote client.
    """
    address = address.strip()
    if address == "auto":
        return address
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"ray address must be HOST:PORT of the cluster's head node (the GCS port that "
            f"`ray start --head` prints, e.g. 10.0.0.5:6379) or 'auto', got {address!r}"
        )
    return address


def simulation_env(ray_address: str | None, home: str) -> dict[str, str]:
    """The environment of the SuperLink and `flwr run`: offline Flower settings, our
    FLWR_HOME, and RAY_ADDRESS exactly when a cluster was asked for (an inherited one is
    dropped, so a run without `ray_address` always gets a private local Ray instance)."""
    env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": home}
    env.pop(RAY_ADDRESS_ENV, None)
    if ray_address is not None:
        env[RAY_ADDRESS_ENV] = check_ray_address(ray_address)
    return env


def simulate(
    config: RunConfig,
    resources: SimulationResources | None = None,
    stream_to: int | None = None,
    timeout: float | None = None,
    app_dir: Path = APP_DIR,
    ray_address: str | None = None,
) -> Path:
    """Run one simulation to completion and return its results directory.

    Parameters
    ----------
    config : validated run config; `out_dir` must be set (absolute after resolving).
    resources : per-client resources; default `default_resources(config)`.
    stream_to : file descriptor for the run's log stream (default: this process's stdout).
    timeout : seconds before the run is abandoned (everything is stopped either way).
    app_dir : the Flower app to run (default: this repository).
    ray_address : HOST:PORT of an existing Ray cluster to run the client actors on (see
        `check_ray_address`); None starts a private local Ray instance.
    """
    if not config.out_dir:
        raise ValueError("simulate() needs config.out_dir; the CLI picks runs/<timestamp>")
    out_dir = Path(config.out_dir).expanduser().resolve()
    config = config.replace(out_dir=str(out_dir))
    resources = resources or default_resources(config)
    if ray_address is not None:
        check_ray_address(ray_address)  # refuse before any process starts or file is written
    if config.secagg and not config.secagg_roster:  # node identities for SecAgg+, kept on resume
        names = [f"partition-{i}" for i in range(resources.num_supernodes)]
        roster = ensure_identities(out_dir / SECAGG_IDENTITIES, names)
        config = config.replace(secagg_roster=str(roster))
    with tempfile.TemporaryDirectory(prefix="feddistill-flwr-") as home, owned_processes() as procs:
        home_path = Path(home)
        env = simulation_env(ray_address, home)
        run_config_path = home_path / "run_config.toml"
        run_config_path.write_text(run_config_toml(config))
        stop_stale_superlink(out_dir)
        _start_superlink(home_path, out_dir, env, procs)
        command = [
            console_script("flwr"),
            "run",
            str(app_dir),
            CONNECTION,
            "--run-config",
            str(run_config_path),
            "--federation-config",
            resources.federation_config(),
            "--stream",
        ]
        run = subprocess.Popen(
            command, env=with_scripts_on_path(env), stdout=stream_to, stderr=subprocess.STDOUT
        )
        procs.append(run)
        returncode = wait_interruptibly(run, timeout)
    (out_dir / PID_FILE).unlink(missing_ok=True)  # the SuperLink is stopped by now
    summary = out_dir / "summary.json"
    if returncode != 0 or not summary.exists():
        raise RuntimeError(
            f"simulation did not finish (flwr run exit code {returncode}); "
            f"see {out_dir / 'superlink.log'} and the log above"
        )
    return out_dir


SUPERLINK_READY = "Uvicorn running on"  # logged once the SuperLink's port is bound, by it
START_ATTEMPTS = 3


def _start_superlink(home: Path, out_dir: Path, env: dict[str, str], procs: list) -> int:
    """Start a private simulation SuperLink on free ports and point `home`'s config at it.

    A port picked by `free_port` is only free a moment: on a busy machine (Ray, other runs)
    another process may bind it first, and the SuperLink then exits with "address already in
    use" while the squatter answers on the port. So readiness is the SuperLink's own log line,
    and a SuperLink that exits before it is restarted on new ports. Returns the port.
    """
    log_path = out_dir / "superlink.log"
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()  # one HTTP port serves the Control, Fleet and Runtime APIs
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        superlink = start_process(
            [
                console_script("flower-superlink"),
                "--insecure",
                "--simulation",
                "--isolation=subprocess",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--health-server-address=127.0.0.1:{free_port()}",
                f"--database={home / f'state-{attempt}.db'}",
                "--disable-runtime-dependency-installation",
            ],
            log_path,
            env=with_scripts_on_path(env),
        )
        procs.append(superlink)
        (out_dir / PID_FILE).write_text(str(superlink.pid))
        try:
            wait_for_log_line(log_path, SUPERLINK_READY, log_offset, timeout=60, process=superlink)
        except RuntimeError:
            if attempt == START_ATTEMPTS:
                raise
            stop_process(superlink)  # whatever it started in its group goes with it
            procs.remove(superlink)
            continue  # it exited, most likely on a port taken since it was picked
        wait_for_port("127.0.0.1", port, timeout=60, process=superlink)
        return port
    raise AssertionError("unreachable")


def stop_stale_superlink(out_dir: Path) -> None:
    """Kill the process group of a SuperLink an earlier, killed launcher left for this run.

    A launcher stopped by SIGKILL cannot stop its SuperLink (its own session); a resumed run
    must not share the run directory with that orphan, so it is killed first.
    """
    pid_file = out_dir / PID_FILE
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().strip() or 0)
    cmdline = Path(f"/proc/{pid}/cmdline")
    if pid > 0 and cmdline.exists() and b"flower-superlink" in cmdline.read_bytes():
        kill_tree(pid)  # its ServerApp runs in another session and would keep writing here
    pid_file.unlink(missing_ok=True)
