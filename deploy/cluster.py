"""A real Flower deployment on one machine: a TLS SuperLink, authenticated SuperNodes, one run.

Each process is what would run on its own host in a real deployment: `flower-superlink`
(with TLS and SuperNode authentication), `flower-supernode` per data owner (own key pair, own
FLWR_HOME, own Runtime API port), and the operator's `flwr` CLI (`supernode register`,
`supernode list`, `run`). The SuperNodes run only the app FAB signed by a key they trust,
fetched by the SuperLink from an app registry in this process (`deploy.app_signing`,
`deploy.app_registry`). Ports are free loopback ports, state lives in a private directory,
and every process is stopped by its process group on exit, on failure and on Ctrl-C
(`simulations.processes.owned_processes`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from common.config import RunConfig
from common.secagg.identity import Roster, create_node_identity
from deploy.app_registry import REGISTRY_URL_ENV, AppRegistry
from deploy.app_signing import (
    AppSigningKey,
    build_app,
    generate_app_signing_key,
    load_app_signing_key,
    sign_app,
    write_trusted_entities,
)
from deploy.certs import ServerFiles, generate_deployment_files
from deploy.data_files import write_deployment_data
from simulations.launcher import (
    APP_DIR,
    OFFLINE_ENV,
    run_config_toml,
)
from simulations.processes import (
    console_script,
    free_port,
    owned_processes,
    start_process,
    wait_for_port,
    wait_interruptibly,
    with_scripts_on_path,
)

CONNECTION = "feddistill-cluster"
HOST = "127.0.0.1"
NODE_CONFIG_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
NodeConfigValue = str | int | float | bool
APP_SIGNING_DIR = "app-signing"  # beside the TLS material: the key that signs the app, trust file
TRUSTED_ENTITIES_FILE = "trusted-entities.yaml"


@dataclass(frozen=True)
class SuperNodeSpec:
    """How to start one SuperNode.

    Attributes
    ----------
    name : label for its log file and FLWR_HOME (letters, digits, '_', '.', '-').
    node_config : the node's `--node-config` pairs, e.g. {"partition-id": 0,
        "num-partitions": 3} or {"data-path": "/data/site-a.npz"}.
    private_key : authentication private key (OpenSSH format); None = no authentication.
    root_certificates : CA certificate that signed the SuperLink's certificate; None with
        TLS means the system's CA store (which does not know a private CA).
    trusted_entities : `--trusted-entities` YAML: the node runs only apps signed by one of
        these keys (`deploy.app_signing`); None = any app the SuperLink ships.
    """

    name: str
    node_config: Mapping[str, NodeConfigValue]
    private_key: Path | None = None
    root_certificates: Path | None = None
    trusted_entities: Path | None = None


@dataclass(frozen=True)
class ClusterResult:
    """What `run_cluster` leaves behind.

    Attributes
    ----------
    out_dir : the run directory the ServerApp wrote (config, metrics.csv, summary.json, …).
    logs_dir : SuperLink, SuperNode and `flwr run` logs.
    summary : the parsed summary.json.
    """

    out_dir: Path
    logs_dir: Path
    summary: dict[str, Any]


class LocalCluster:
    """A SuperLink and SuperNodes we started on loopback, and the operator's `flwr` CLI.

    Create it with `local_cluster(...)`, which owns every process it starts.
    """

    def __init__(
        self,
        workdir: Path,
        logs_dir: Path,
        processes: list[subprocess.Popen],
        tls: ServerFiles | None,
        app_registry: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.logs_dir = logs_dir
        self.processes = processes
        self.tls = tls
        self.app_registry = app_registry
        self.port = free_port()  # one port serves the Fleet, Control and Runtime APIs
        self.address = f"{HOST}:{self.port}"
        self.operator_home = workdir / "operator"
        self.superlink: subprocess.Popen | None = None
        self.supernodes: dict[str, subprocess.Popen] = {}

    @property
    def insecure(self) -> bool:
        """True for the plain-text demo (no TLS, no SuperNode authentication)."""
        return self.tls is None

    def env(self, flwr_home: Path) -> dict[str, str]:
        """Environment of a Flower process whose state lives in `flwr_home`."""
        flwr_home.mkdir(parents=True, exist_ok=True)
        return with_scripts_on_path({**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(flwr_home)})

    def start_superlink(self, timeout: float = 120.0) -> None:
        """Start `flower-superlink` (TLS + SuperNode auth unless insecure) and wait for it."""
        state = self.workdir / "superlink"
        command = [
            console_script("flower-superlink"),
            f"--host={HOST}",
            f"--port={self.port}",
            f"--database={state / 'state.db'}",
            "--disable-runtime-dependency-installation",
        ]
        if self.tls is None:
            command.append("--insecure")
        else:
            command += [
                f"--ssl-ca-certfile={self.tls.ca_cert}",
                f"--ssl-certfile={self.tls.server_cert}",
                f"--ssl-keyfile={self.tls.server_key}",
                "--enable-supernode-auth",
            ]
        env = self.env(state / "flwr-home")
        if self.app_registry is not None:
            env[REGISTRY_URL_ENV] = self.app_registry  # where `flwr run @app==x.y.z` is fetched
        self.superlink = start_process(command, self.logs_dir / "superlink.log", env=env)
        self.processes.append(self.superlink)
        self._write_operator_config()
        wait_for_port(HOST, self.port, timeout=timeout, process=self.superlink)

    def register(self, public_keys: Mapping[str, Path]) -> dict[str, int]:
        """Register SuperNode public keys (name → .pub path) with `flwr supernode register`.

        Returns
        -------
        dict[str, int] : name → node id the SuperLink assigned.
        """
        if self.insecure:
            raise ValueError("registering SuperNodes needs TLS; this cluster is insecure")
        # One CLI process per key, run concurrently: each spends seconds importing flwr.
        started = {
            name: self._flwr(["supernode", "register", str(path), CONNECTION, "--name", name])
            for name, path in public_keys.items()
        }
        node_ids = {}
        for name, process in started.items():
            reply = self._reply(process, f"flwr supernode register ({name})")
            node_ids[name] = int(reply["node-id"])
        return node_ids

    def list_nodes(self) -> list[dict[str, Any]]:
        """`flwr supernode list --format json`: one dict per node (node-id, status, …)."""
        reply = self._reply(self._flwr(["supernode", "list", CONNECTION]), "flwr supernode list")
        return list(reply["nodes"])

    def start_supernode(self, spec: SuperNodeSpec) -> subprocess.Popen:
        """Start one `flower-supernode` with its own FLWR_HOME and Runtime API port."""
        if spec.name in self.supernodes:
            raise ValueError(f"a SuperNode named {spec.name!r} was already started")
        command = [
            console_script("flower-supernode"),
            f"--superlink={self.address}",
            f"--host={HOST}",
            f"--port={free_port()}",  # Runtime API for this node's ClientApp processes
            f"--node-config={node_config_arg(spec.node_config)}",
        ]
        if self.insecure:
            command.append("--insecure")
        if spec.root_certificates is not None:
            command.append(f"--root-certificates={spec.root_certificates}")
        if spec.private_key is not None:
            command.append(f"--auth-supernode-private-key={spec.private_key}")
        if spec.trusted_entities is not None:
            command.append(f"--trusted-entities={spec.trusted_entities}")
        home = self.workdir / "supernodes" / spec.name / "flwr-home"
        process = start_process(command, self.logs_dir / f"{spec.name}.log", env=self.env(home))
        self.processes.append(process)
        self.supernodes[spec.name] = process
        return process

    def wait_online(
        self, count: int, node_ids: Sequence[int] = (), timeout: float = 180.0
    ) -> list[dict[str, Any]]:
        """Poll `flwr supernode list` until `count` nodes (or all of `node_ids`) are online."""
        deadline = time.monotonic() + timeout
        while True:
            online = [node for node in self.list_nodes() if node.get("status") == "online"]
            online_ids = {int(node["node-id"]) for node in online}
            if len(online) >= count and set(node_ids) <= online_ids:
                return online
            exited = {
                name: process.returncode
                for name, process in self.supernodes.items()
                if process.poll() is not None
            }
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(online)} of {count} SuperNodes online after {timeout:.0f}s; exited "
                    f"(name: exit code): {exited or 'none'}; see the logs in {self.logs_dir}"
                )
            time.sleep(1.0)

    def run(
        self,
        config: RunConfig,
        app: str,
        stream_to: IO[str] | None = None,
        timeout: float | None = None,
    ) -> int:
        """Submit `config` to `app` and wait for the run to end (see `submit`).

        The streamed log is copied to `logs_dir/flwr-run.log` and to `stream_to` (if given).
        """
        if not config.out_dir or not Path(config.out_dir).is_absolute():
            raise ValueError(f"out_dir must be an absolute path, got {config.out_dir!r}")
        run_config_path = self.operator_home / "run_config.toml"
        run_config_path.write_text(run_config_toml(config))
        return self.submit(app, run_config_path, "flwr-run.log", stream_to, timeout)

    def submit(
        self,
        app: str,
        run_config: Path,
        log_name: str,
        stream_to: IO[str] | None = None,
        timeout: float | None = None,
    ) -> int:
        """`flwr run APP --run-config FILE --stream`; wait for the run to end.

        Parameters
        ----------
        app : an app directory (its FAB goes unsigned) or `@publisher/name==x.y.z` (fetched by
            the SuperLink from its app registry, with the signatures published there).
        run_config : TOML file of run-config overrides.
        log_name : file under `logs_dir` that receives the streamed log.
        stream_to : where the streamed log is echoed too; None = only the file.
        timeout : seconds before the run is abandoned; None = no limit.

        Returns
        -------
        int : exit code of `flwr run`.

        Raises
        ------
        TimeoutError : the run did not end within `timeout` seconds (it is stopped).
        """
        command = [
            console_script("flwr"),
            "run",
            app,
            CONNECTION,
            "--run-config",
            str(run_config),
            "--stream",
        ]
        process = subprocess.Popen(
            command,
            env=self.env(self.operator_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        copier = threading.Thread(
            target=_copy_lines,
            args=(process.stdout, self.logs_dir / log_name, stream_to),
            daemon=True,
        )
        copier.start()
        try:
            returncode = wait_interruptibly(process, timeout)
        except subprocess.TimeoutExpired as error:
            raise TimeoutError(
                f"the run did not finish within {timeout:.0f}s; see {self.logs_dir}"
            ) from error
        copier.join(timeout=10)
        return returncode

    def _write_operator_config(self) -> None:
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
        lines.append(f'address = "{self.address}"')
        if self.tls is None:
            lines.append("insecure = true")
        else:
            lines.append(f"root-certificates = {json.dumps(str(self.tls.ca_cert))}")
        self.operator_home.mkdir(parents=True, exist_ok=True)
        (self.operator_home / "config.toml").write_text("\n".join(lines) + "\n")

    def _flwr(self, arguments: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(
            [console_script("flwr"), *arguments, "--format", "json"],
            env=self.env(self.operator_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def _reply(self, process: subprocess.Popen, what: str) -> dict[str, Any]:
        try:
            return _json_reply(process, what)
        finally:
            if process.poll() is not None:  # reaped: its PID may be reused, never signal it
                self.processes.remove(process)


@contextlib.contextmanager
def local_cluster(
    workdir: Path, logs_dir: Path, tls: ServerFiles | None, app_registry: str | None = None
) -> Iterator[LocalCluster]:
    """A started SuperLink; SuperNodes and runs are added through the yielded object.

    Every process started through it is stopped (process group: SIGTERM, then SIGKILL) when
    the block ends, normally, on an exception or on Ctrl-C. Flower starts some helpers in
    sessions of their own (the SuperLink's `flower-superexec`); those descendants are found
    by parent PID before the groups are stopped and stopped by PID afterwards.

    Parameters
    ----------
    workdir : private directory for the SuperLink database and each process's FLWR_HOME.
    logs_dir : where each process's log goes.
    tls : CA and server certificate for TLS + SuperNode authentication; None = insecure demo.
    app_registry : base URL of the app registry the SuperLink fetches `@publisher/name==x.y.z`
        apps and their signatures from (`deploy.app_registry`); None = Flower's default.
    """
    descendants: list[tuple[int, int]] = []
    try:
        with owned_processes() as processes:
            try:
                cluster = LocalCluster(workdir, logs_dir, processes, tls, app_registry)
                cluster.start_superlink()
                yield cluster
            finally:
                descendants = _descendants([process.pid for process in processes])
    finally:
        _stop_by_pid(descendants)


def run_cluster(
    config: RunConfig,
    nodes: int | Sequence[Mapping[str, NodeConfigValue]] = 3,
    *,
    insecure: bool = False,
    workdir: Path | None = None,
    timeout: float | None = None,
    stream_to: IO[str] | None = None,
    progress: Callable[[str], None] = print,
) -> ClusterResult:
    """Deploy the apps on a SuperLink and SuperNodes on this machine; run `config` once.

    With TLS (the default) it creates a CA, the SuperLink certificate and one key pair per
    SuperNode, registers the public keys, starts the SuperNodes with their private keys and
    the CA, waits until all are online, runs `flwr run --stream`, and stops everything.
    TLS or not, the SuperNodes run only the app signed here: it builds the FAB, signs it with
    an app-signing key (`workdir/certs/app-signing/operator.key`), serves it from a registry
    on loopback, starts every SuperNode with `--trusted-entities` naming only that key, and
    submits `flwr run @feddistill/feddistill==VERSION`.

    Parameters
    ----------
    config : validated run config with an absolute `out_dir`.
    nodes : a number N of SuperNodes, node i serving partition i of N (`num_clients` is set
        to N) from its own files under `workdir/data` (`deploy.data_files`: its private
        partition and its public copy; the ServerApp gets the public and test files), or one
        node-config mapping per SuperNode (e.g. {"data-path": "/d/a.npz", "public-path": ...}).
        Each node also gets its own `state-dir` under `workdir` unless its config sets one.
    insecure : local demo without TLS and without SuperNode authentication.
    workdir : where certificates, keys, FLWR_HOMEs and the SuperLink database go; None = a
        temporary directory removed at the end. Logs go to `<out_dir>/logs/` either way.
    timeout : seconds the run may take before everything is stopped; None = no limit.
    stream_to : where the run's log stream is echoed (e.g. sys.stdout); None = only the file.
    progress : receives one-line progress messages.

    Returns
    -------
    ClusterResult : the run directory, the logs directory and the summary.
    """
    node_configs = [] if isinstance(nodes, int) else [dict(node) for node in nodes]
    count = nodes if isinstance(nodes, int) else len(node_configs)
    if count < 1:
        raise ValueError(f"nodes must be >= 1, got {count}")
    if isinstance(nodes, int) and nodes >= 2:
        config = config.replace(num_clients=nodes)
    if count < config.min_clients:
        raise ValueError(
            f"{count} SuperNode(s) is below min_clients={config.min_clients}: "
            "every round would fail"
        )
    for node_config in node_configs:
        node_config_arg(node_config)  # fail before anything starts
    if not config.out_dir or not Path(config.out_dir).is_absolute():
        raise ValueError(f"out_dir must be an absolute path, got {config.out_dir!r}")
    out_dir = Path(config.out_dir)
    logs_dir = out_dir / "logs"
    started = time.time()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="feddistill-")))
        if isinstance(nodes, int):  # each host gets only its own files (deploy.data_files)
            data = write_deployment_data(config, workdir / "data", nodes)
            progress(f"feddistill: wrote each party's data files under {workdir / 'data'}")
            config = config.replace(**data.run_config_changes())
            node_configs = data.node_configs()
        returncode = _deploy_and_run(
            config, node_configs, insecure, workdir, logs_dir, timeout, stream_to, progress
        )
    summary_path = out_dir / "summary.json"
    if returncode != 0 or not summary_path.exists() or summary_path.stat().st_mtime < started:
        raise RuntimeError(
            f"the deployed run did not finish (flwr run exit code {returncode}); "
            f"see the logs in {logs_dir}"
        )
    summary = json.loads(summary_path.read_text())
    return ClusterResult(out_dir=out_dir, logs_dir=logs_dir, summary=summary)


def _deploy_and_run(
    config: RunConfig,
    node_configs: list[dict[str, NodeConfigValue]],
    insecure: bool,
    workdir: Path,
    logs_dir: Path,
    timeout: float | None,
    stream_to: IO[str] | None,
    progress: Callable[[str], None],
) -> int:
    names = [f"supernode-{i}" for i in range(len(node_configs))]
    tls: ServerFiles | None = None
    private_keys: dict[str, Path] = {}
    public_keys: dict[str, Path] = {}
    if insecure:
        progress("feddistill: INSECURE local demo — no TLS, no SuperNode authentication")
    else:
        files = generate_deployment_files(workdir / "certs", nodes=len(node_configs))
        tls = files.server
        private_keys = {pair.name: pair.private_key for pair in files.nodes}
        public_keys = {pair.name: pair.public_key for pair in files.nodes}
    # SecAgg+ identities as on separate hosts: each node makes its own, the operator builds
    # the roster from the public files, and every node pins the roster's fingerprint.
    identities = {name: _node_identity(workdir / "supernodes" / name, name) for name in names}
    roster_path = workdir / "certs" / "secagg-roster.json"
    roster = Roster.from_public_files([public for _, public in identities.values()])
    roster.save(roster_path)
    signing_key, trusted_entities = _app_signing_files(workdir / "certs" / APP_SIGNING_DIR)
    fab = build_app(APP_DIR)
    registry = AppRegistry()
    spec = registry.publish(fab, [sign_app(fab, signing_key.private_key)])
    progress(
        f"feddistill: signed {spec} (FAB SHA-256 {hashlib.sha256(fab).hexdigest()[:16]}…) "
        f"with {signing_key.key_id}; the SuperNodes run only apps signed by that key"
    )
    with (
        registry.serve(HOST, 0) as registry_url,
        local_cluster(workdir, logs_dir, tls, registry_url) as cluster,
    ):
        progress(f"feddistill: SuperLink on {cluster.address} (logs: {logs_dir})")
        node_ids: dict[str, int] = {}
        if not insecure:
            node_ids = cluster.register(public_keys)
            progress(f"feddistill: registered {len(node_ids)} SuperNode public keys")
        for name, node_config in zip(names, node_configs, strict=True):
            # Like a separate host, each node keeps its teacher between rounds on its own disk.
            state_dir = str(workdir / "supernodes" / name / "state")
            cluster.start_supernode(
                SuperNodeSpec(
                    name=name,
                    node_config={
                        "state-dir": state_dir,
                        "require-secagg": str(config.secagg).lower(),
                        "secagg-roster": str(roster_path),
                        "secagg-roster-sha256": roster.fingerprint(),
                        "secagg-identity": str(identities[name][0]),
                        **node_config,
                    },
                    private_key=private_keys.get(name),
                    root_certificates=None if tls is None else tls.ca_cert,
                    trusted_entities=trusted_entities,
                )
            )
        cluster.wait_online(len(names), list(node_ids.values()))
        progress(f"feddistill: {len(names)} SuperNodes online; running → {config.out_dir}")
        returncode = cluster.run(config, app=spec, stream_to=stream_to, timeout=timeout)
    progress("feddistill: SuperLink and SuperNodes stopped")
    return returncode


def _node_identity(node_dir: Path, name: str) -> tuple[Path, Path]:
    """The node's own SecAgg+ identity under its folder (kept if a --workdir already has it)."""
    directory = node_dir / "identity"
    private, public = directory / f"{name}.secagg.key", directory / f"{name}.secagg.pub"
    if private.exists() and public.exists():
        return private, public
    return create_node_identity(directory, name)


def _app_signing_files(directory: Path) -> tuple[AppSigningKey, Path]:
    """The cluster's app-signing key and the trusted-entities file naming it (kept if present)."""
    key_path = directory / "operator.key"
    if key_path.exists():
        key = load_app_signing_key(key_path)
    else:
        key = generate_app_signing_key(directory, "operator")
    trusted_entities = directory / TRUSTED_ENTITIES_FILE
    if not trusted_entities.exists():
        write_trusted_entities(trusted_entities, [key.public_key])
    return key, trusted_entities


def parse_node_config(text: str) -> dict[str, NodeConfigValue]:
    """Parse a `--node-config` string (`key=value ...`, strings quoted) like flower-supernode."""
    import click
    from flwr.common.config import parse_config_args

    try:
        parsed = parse_config_args([text])
    except click.ClickException as error:
        raise ValueError(f"invalid node config {text!r}: {error.message}") from error
    if not parsed:
        raise ValueError(f"node config {text!r} has no key=value pairs")
    return parsed


def node_config_arg(node_config: Mapping[str, NodeConfigValue]) -> str:
    """Format `--node-config` pairs: `partition-id=0 data-path='/data/a.npz'`.

    Strings become TOML literal strings (no escapes), so they may not contain quotes.
    """
    pairs = []
    for key, value in node_config.items():
        if not NODE_CONFIG_KEY.match(key):
            raise ValueError(f"node-config key must be letters, digits, '_' or '-', got {key!r}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif "'" in value or '"' in value or "\n" in value:
            raise ValueError(f"node-config value for {key!r} may not contain quotes: {value!r}")
        else:
            text = f"'{value}'"
        pairs.append(f"{key}={text}")
    return " ".join(pairs)


def _json_reply(process: subprocess.Popen, what: str, timeout: float = 120.0) -> dict[str, Any]:
    # `flwr ... --format json` exits 0 even on failure; `success` tells.
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{what} did not answer within {timeout:.0f}s") from error
    try:
        reply = json.loads(stdout)
    except json.JSONDecodeError:
        reply = {"success": False, "error-message": (stdout + stderr).strip()[-2000:]}
    if process.returncode != 0 or not reply.get("success"):
        raise RuntimeError(
            f"{what} failed (exit code {process.returncode}): "
            f"{reply.get('error-message', stderr.strip()[-2000:])}"
        )
    return reply


def _copy_lines(source: IO[str] | None, log_path: Path, echo: IO[str] | None) -> None:
    if source is None:
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log_file:
        for line in source:
            log_file.write(line)
            log_file.flush()
            if echo is not None:
                echo.write(line)
                echo.flush()


def _descendants(roots: Sequence[int]) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of `roots`; empty where /proc is missing."""
    children: dict[int, list[int]] = {}
    start_times: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
                ppid, start_time = stat
                children.setdefault(ppid, []).append(int(entry.name))
                start_times[int(entry.name)] = start_time
    found, pending = [], list(roots)
    while pending:
        for child in children.get(pending.pop(), []):
            found.append((child, start_times[child]))
            pending.append(child)
    return found


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live, non-zombie process, else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # fields 3.. of proc(5): state, ppid, …
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _stop_by_pid(processes: Sequence[tuple[int, int]], grace: float = 10.0) -> None:
    """SIGTERM each still-running (pid, start time), then SIGKILL it after `grace` seconds.

    The start time guards against a recycled PID: only the very process found is signalled.
    """

    def alive() -> list[int]:
        return [
            pid
            for pid, start_time in processes
            if (stat := _proc_stat(pid)) is not None and stat[1] == start_time
        ]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
