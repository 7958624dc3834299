"""Deployment tests: a real TLS SuperLink and authenticated SuperNodes as separate processes.

No mocks: `flower-superlink`, `flower-supernode` and the `flwr` CLI run as processes on free
loopback ports, each test with its own FLWR_HOMEs under its own directory. After each cluster
the tests look through /proc for any process that still carries one of those FLWR_HOMEs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from cryptography.x509 import DNSName, IPAddress, SubjectAlternativeName, load_pem_x509_certificate
from flwr.cli.supernode.register import try_load_public_key
from flwr.common.config import parse_config_args
from flwr.supercore.fab import Fab
from flwr.supercore.utils import request_download_link
from flwr.supernode.start_client_internal import _verify_fab as verify_fab

from common.config import RunConfig
from common.data import load_splits
from common.files import save_npz
from common.secagg.identity import Roster
from deploy import cli as deploy_cli
from deploy.app_registry import AppRegistry
from deploy.app_signing import (
    AppSignature,
    build_app,
    generate_app_signing_key,
    sign_app,
    write_trusted_entities,
)
from deploy.certs import generate_deployment_files, generate_node_key, san_entries
from deploy.cluster import (
    ClusterResult,
    SuperNodeSpec,
    local_cluster,
    node_config_arg,
    run_cluster,
)
from deploy.data_files import write_deployment_data
from simulations.cli import resolve_config
from simulations.launcher import APP_DIR

PROBE_APP = Path(__file__).parent / "apps" / "signed_probe"
RUN_TIMEOUT = 1800.0  # generous: on a loaded 2-core machine each ClientApp start takes seconds
CHANCE = 0.1
# The smoke config with less compute: what is under test is the deployment, not accuracy.
DEPLOYMENT_OVERRIDES = ["device=cpu", "round_timeout=600", "local_epochs=3", "distill_epochs=10"]


def _leftover_processes(workdir: Path) -> list[str]:
    """Processes whose environment or command line points into `workdir` (ours, if any)."""
    marker = str(workdir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if marker in cmdline or marker in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command[:200]}")
    return found


def _smoke_config(root: Path) -> RunConfig:
    return resolve_config(
        "smoke", [f"data_dir={root / 'data'}", *DEPLOYMENT_OVERRIDES], str(root / "run")
    )


def _probe_app_variant(directory: Path, version: str, client_app_name: str) -> Path:
    """A copy of the probe app with another version whose ClientApp answers another name."""
    shutil.copytree(PROBE_APP, directory, ignore=shutil.ignore_patterns("__pycache__"))
    for name, old, new in (
        ("pyproject.toml", 'version = "1.0.0"', f'version = "{version}"'),
        ("probe_app.py", 'CLIENT_APP_NAME = "honest"', f'CLIENT_APP_NAME = "{client_app_name}"'),
    ):
        path = directory / name
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
    return directory


# --- certificates and keys (no processes) ------------------------------------------------------


def test_certificates_cover_the_sans_and_private_files_are_0600(tmp_path: Path) -> None:
    files = generate_deployment_files(tmp_path, ["10.20.0.1", "superlink.example.org"], nodes=2)

    cert = load_pem_x509_certificate(files.server.server_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(IPAddress)}
    assert ips == {"127.0.0.1", "::1", "10.20.0.1"}
    assert set(sans.get_values_for_type(DNSName)) == {"localhost", "superlink.example.org"}
    ca = load_pem_x509_certificate(files.server.ca_cert.read_bytes())
    ca.public_key().verify(  # the CA signed the server certificate
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    for private in (files.server.ca_key, files.server.server_key):
        assert private.stat().st_mode & 0o777 == 0o600
        assert isinstance(
            load_pem_private_key(private.read_bytes(), None), ec.EllipticCurvePrivateKey
        )
    for pair in files.nodes:
        assert pair.private_key.stat().st_mode & 0o777 == 0o600
        key = load_ssh_private_key(pair.private_key.read_bytes(), None)  # as flower-supernode
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert try_load_public_key(pair.public_key)  # as `flwr supernode register`
        assert b"PRIVATE" not in pair.public_key.read_bytes()


def test_existing_keys_are_never_overwritten_and_bad_sans_are_named(tmp_path: Path) -> None:
    generate_node_key(tmp_path, "site-a")
    before = (tmp_path / "site-a.key").read_bytes()

    with pytest.raises(ValueError, match="refusing to overwrite"):
        generate_node_key(tmp_path, "site-a")
    with pytest.raises(ValueError, match="'https://host:9092'"):
        san_entries(["https://host:9092"])
    with pytest.raises(ValueError, match="node name"):
        generate_node_key(tmp_path, "../escape")
    assert (tmp_path / "site-a.key").read_bytes() == before


def test_node_config_argument_round_trips_through_flowers_parser() -> None:
    node_config = {"partition-id": 2, "num-partitions": 3, "data-path": "/data/site a.npz"}

    parsed = parse_config_args([node_config_arg(node_config)])

    assert parsed == node_config
    with pytest.raises(ValueError, match="quotes"):
        node_config_arg({"data-path": "/data/it's.npz"})


def test_signed_app_files_reach_flowers_verifier_through_the_registry(tmp_path: Path) -> None:
    keys, signed = tmp_path / "keys", tmp_path / "signed"
    for command in (
        f"app-key --out {keys} --name owner",
        f"trusted-entities --out {keys / 'trusted.yaml'} {keys / 'owner.pub'}",
        f"sign-app --key {keys / 'owner.key'} --out {signed} --app {PROBE_APP}",
    ):
        assert deploy_cli.main(["deploy", *command.split()]) == 0
    (fab_path,) = signed.glob("*.fab")
    (sig_path,) = signed.glob("*.sig.json")
    signature = AppSignature.from_json(sig_path.read_text())
    trusted = yaml.safe_load((keys / "trusted.yaml").read_text())
    registry = AppRegistry()
    spec = registry.publish(fab_path.read_bytes(), [signature])

    with registry.serve("127.0.0.1", 0) as url:  # queried as the SuperLink queries Flower Hub
        fab_url, verifications, _ = request_download_link(
            "@feddistill-test/signed-probe", "1.0.0", f"{url}/hub/fetch-fab", "fab_url"
        )
        fab = requests.get(fab_url, timeout=10).content
        with pytest.raises(ValueError, match=r"Available app versions .*: 1\.0\.0"):
            request_download_link(
                "@feddistill-test/signed-probe", "2.0.0", f"{url}/hub/fetch-fab", "fab_url"
            )

    assert spec == "@feddistill-test/signed-probe==1.0.0"
    assert fab == fab_path.read_bytes() == build_app(PROBE_APP)  # deterministic build
    assert list(trusted) == [signature.public_key_id]
    verification = {"valid_license": "Valid"}  # what Flower's SuperLink adds to Hub answers
    verification |= {
        item["public_key_id"]: json.dumps({k: v for k, v in item.items() if k != "public_key_id"})
        for item in verifications
    }
    assert verify_fab(Fab(hashlib.sha256(fab).hexdigest(), fab, verification), trusted)
    tampered = fab[:-1] + bytes([fab[-1] ^ 1])
    assert not verify_fab(
        Fab(hashlib.sha256(tampered).hexdigest(), tampered, verification), trusted
    )


def test_app_signing_refuses_bad_keys_and_signature_files(tmp_path: Path) -> None:
    node = generate_node_key(tmp_path, "node")  # ECDSA: Flower verifies apps with Ed25519 only
    key = generate_app_signing_key(tmp_path, "owner")

    with pytest.raises(ValueError, match="must be ssh-ed25519"):
        write_trusted_entities(tmp_path / "trusted.yaml", [node.public_key])
    with pytest.raises(ValueError, match="at least one"):
        write_trusted_entities(tmp_path / "trusted.yaml", [])
    with pytest.raises(ValueError, match="must be Ed25519"):
        sign_app(b"fab", node.private_key)
    with pytest.raises(ValueError, match="empty FAB"):
        sign_app(b"", key.private_key)
    with pytest.raises(ValueError, match=r"exactly the keys .*got \['public_key_id'\]"):
        AppSignature.from_json('{"public_key_id": "fpk_1"}')
    with pytest.raises(ValueError, match="'signed_at' must be int, got '1'"):
        AppSignature.from_json('{"public_key_id": "k", "signature": "s", "signed_at": "1"}')
    with pytest.raises(ValueError, match="refusing to overwrite"):
        generate_app_signing_key(tmp_path, "owner")
    assert key.private_key.stat().st_mode & 0o777 == 0o600


# --- a deployed run ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClusterResult, Path, Path]:
    """Two rounds on a TLS SuperLink with 3 honest SuperNodes and 1 whose public copy differs.

    Data roles as on separate hosts: each node holds only its private file and its own public
    copy, the ServerApp only the public and test files. The generated dataset they were cut
    from is deleted before anything starts, so a party that reached for it would have to
    regenerate it into the (checked) data_dir.
    """
    root = tmp_path_factory.mktemp("deployed")
    config = _smoke_config(root)
    data = write_deployment_data(config, root / "hosts", nodes=3)
    shutil.rmtree(config.data_dir)
    tampered_public = root / "hosts" / "tampered" / "public.npz"
    with np.load(data.node_public[0]) as arrays:
        save_npz(tampered_public, arrays["x"] + np.float32(1e-3))  # same shape, another set
    nodes = [
        *data.node_configs(),
        {
            "partition-id": 0,
            "data-path": str(data.node_private[0]),
            "public-path": str(tampered_public),
        },
    ]
    workdir = root / "work"
    result = run_cluster(
        config.replace(**data.run_config_changes()),
        nodes,
        workdir=workdir,
        timeout=RUN_TIMEOUT,
        progress=print,
    )
    return result, workdir, Path(config.data_dir)


class TestDeployedRun:
    """One TLS deployment, asserted three ways (one xdist scope: see conftest.py)."""

    def test_two_rounds_complete_over_tls_with_authenticated_supernodes(
        self,
        deployed_run: tuple[ClusterResult, Path, Path],
    ) -> None:
        result, _, _ = deployed_run
        metrics = pd.read_csv(result.out_dir / "metrics.csv")
        summary = json.loads((result.out_dir / "summary.json").read_text())

        assert summary["rounds_completed"] == 2
        assert list(metrics["status"]) == ["ok", "ok"]
        assert list(metrics["clients"]) == [3, 3]  # the honest nodes only
        assert summary["student_accuracy"] > CHANCE + 0.1

    def test_node_with_a_different_public_set_refuses_to_take_part(
        self,
        deployed_run: tuple[ClusterResult, Path, Path],
    ) -> None:
        result, _, _ = deployed_run
        tampered_log = (result.logs_dir / "supernode-3.log").read_text()
        run_log = (result.logs_dir / "flwr-run.log").read_text()

        assert "PublicSetMismatch" in tampered_log or "public-set hash mismatch" in tampered_log
        assert "refused to describe itself" in run_log
        assert "public-set hash mismatch: the server's public set (public_dataset='npz:" in run_log
        assert "tampered/public.npz (node config public-path)" in run_log

    def test_no_party_reads_a_dataset_beyond_its_own_files(
        self, deployed_run: tuple[ClusterResult, Path, Path]
    ) -> None:
        _, _, data_dir = deployed_run

        assert not data_dir.exists() or list(data_dir.iterdir()) == []

    def test_no_process_outlives_the_deployed_run(
        self, deployed_run: tuple[ClusterResult, Path, Path]
    ) -> None:
        _, workdir, _ = deployed_run

        assert _leftover_processes(workdir) == []


# --- refusals ----------------------------------------------------------------------------------


def test_unregistered_or_untrusting_supernodes_are_refused(tmp_path: Path) -> None:
    files = generate_deployment_files(tmp_path / "certs", nodes=3)
    good, unregistered, untrusting = files.nodes
    ca = files.server.ca_cert
    workdir, logs = tmp_path / "work", tmp_path / "logs"
    node_config = {"partition-id": 0, "num-partitions": 3}

    with local_cluster(workdir, logs, files.server) as cluster:
        node_ids = cluster.register({"good": good.public_key, "untrusting": untrusting.public_key})
        cluster.start_supernode(SuperNodeSpec("good", node_config, good.private_key, ca))
        rogue = cluster.start_supernode(
            SuperNodeSpec("unregistered", node_config, unregistered.private_key, ca)
        )
        blind = cluster.start_supernode(  # registered key, but no CA to verify the SuperLink
            SuperNodeSpec("untrusting", node_config, untrusting.private_key, None)
        )
        cluster.wait_online(1, [node_ids["good"]])
        deadline = time.monotonic() + 120
        while (rogue.poll() is None or blind.poll() is None) and time.monotonic() < deadline:
            time.sleep(0.5)
        listed = {int(node["node-id"]): node["status"] for node in cluster.list_nodes()}

    assert rogue.returncode not in (None, 0)
    assert "2004" in (logs / "unregistered.log").read_text()  # SuperLink: key not registered
    assert blind.returncode not in (None, 0)
    assert "CERTIFICATE_VERIFY_FAILED" in (logs / "untrusting.log").read_text()
    assert set(listed) == set(node_ids.values())  # the unregistered key never became a node
    assert listed[node_ids["good"]] == "online"
    assert listed[node_ids["untrusting"]] != "online"
    assert _leftover_processes(workdir) == []


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_a_run_stops_every_process(tmp_path: Path) -> None:
    config = _smoke_config(tmp_path)
    load_splits(config)
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "deploy.cli", "cluster", "--config", "smoke", "--nodes", "3"]
    command += [f"--set=data_dir={config.data_dir}", "--out", config.out_dir]
    command += ["--workdir", str(workdir)]
    cli = subprocess.Popen(
        command,
        cwd=APP_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As from a terminal: SIGINT at its default, whatever this worker inherited or was left
        # with (an ignored SIGINT is inherited, and the CLI would then ignore Ctrl-C).
        preexec_fn=_default_sigint,
    )
    under_way = False
    try:
        for line in cli.stdout:  # wait until the run is under way
            if "SuperNodes online" in line:
                under_way = True
                break
        time.sleep(2)
        cli.send_signal(signal.SIGINT)
        cli.communicate(timeout=180)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()

    assert under_way
    assert cli.returncode != 0
    # The run did not finish: no summary, or (when the ServerApp saw its nodes vanish before it
    # was stopped, as happens on a loaded machine) one that counts fewer completed rounds.
    summary = Path(config.out_dir) / "summary.json"
    if summary.exists():
        assert json.loads(summary.read_text())["rounds_completed"] < config.rounds
    assert _leftover_processes(workdir) == []


def test_supernode_runs_only_apps_signed_by_a_key_it_trusts(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    owner = generate_app_signing_key(keys, "data-owner")  # the node operator trusts this key
    server = generate_app_signing_key(keys, "server")  # a key the node operator never listed
    trusted = write_trusted_entities(keys / "trusted-entities.yaml", [owner.public_key])
    honest = build_app(PROBE_APP)
    exfiltrating_1 = build_app(_probe_app_variant(tmp_path / "app-1", "1.0.1", "exfiltrating"))
    exfiltrating_2 = build_app(_probe_app_variant(tmp_path / "app-2", "1.0.2", "exfiltrating"))
    owners_signature = sign_app(honest, owner.private_key)
    registry = AppRegistry()
    submissions = {
        "unsigned": str(PROBE_APP),  # FAB built from the directory: no signatures attached
        "signed-by-server": registry.publish(
            exfiltrating_1, [sign_app(exfiltrating_1, server.private_key)]
        ),
        # the owner's signature on the honest FAB, replayed on another one
        "replayed-signature": registry.publish(exfiltrating_2, [owners_signature]),
        "signed-by-owner": registry.publish(honest, [owners_signature]),
    }
    workdir, logs = tmp_path / "work", tmp_path / "logs"
    answers = {}
    with (
        registry.serve("127.0.0.1", 0) as registry_url,
        local_cluster(workdir, logs, None, registry_url) as cluster,
    ):
        cluster.start_supernode(
            SuperNodeSpec("node", {"partition-id": 0}, trusted_entities=trusted)
        )
        cluster.wait_online(1)
        for case, app in submissions.items():
            result = tmp_path / f"{case}.json"
            run_config = tmp_path / f"{case}.toml"
            run_config.write_text(f"result-path = {json.dumps(str(result))}\n")
            assert cluster.submit(app, run_config, f"{case}.log", timeout=300) == 0
            answers[case] = list(json.loads(result.read_text()).values())
    supernode_log = (logs / "node.log").read_text()

    refused = [{"error_code": 7, "reason": "The FAB could not be verified."}]  # INVALID_FAB
    assert answers == {
        "unsigned": refused,
        "signed-by-server": refused,
        "replayed-signature": refused,
        "signed-by-owner": [{"app": "honest"}],
    }
    assert "App verification is not supported by the connected SuperLink" in supernode_log
    assert supernode_log.count("FAB verification failed") == 2
    assert _leftover_processes(workdir) == []


def test_node_identities_roster_and_per_host_data_through_the_cli(tmp_path: Path, capsys) -> None:
    # Execute: two nodes make their identities, the operator builds the roster and the data.
    for name in ("site-a", "site-b"):
        assert (
            deploy_cli.main(
                ["deploy", "node-identity", "--out", str(tmp_path / name), "--name", name]
            )
            == 0
        )
    publics = [str(tmp_path / n / f"{n}.secagg.pub") for n in ("site-a", "site-b")]
    roster = tmp_path / "roster.json"
    assert deploy_cli.main(["deploy", "roster", "--out", str(roster), *publics]) == 0
    again = deploy_cli.main(["deploy", "roster", "--out", str(roster), *publics])
    data_args = ["--config", "smoke", "--set", f"data_dir={tmp_path / 'cache'}", "--nodes", "2"]
    assert deploy_cli.main(["deploy", "data", *data_args, "--out", str(tmp_path / "hosts")]) == 0

    # Assert
    output = capsys.readouterr()
    fingerprint = Roster.load(roster).fingerprint()
    assert f"secagg-roster-sha256={fingerprint}" in output.out
    assert again == 2 and "refusing to overwrite" in output.err
    assert "public-path='" in output.out and "test_dataset='npz:" in output.out
    assert sorted(p.name for p in (tmp_path / "hosts").iterdir()) == ["node-0", "node-1", "server"]
