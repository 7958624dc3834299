"""The launcher's private SuperLink: it must be ours that answers on the configured port."""

from __future__ import annotations

import os
import re
import socket

import pytest

from common.config import RunConfig
from simulations import launcher
from simulations.processes import free_port, owned_processes


def test_superlink_start_retries_on_new_ports_when_its_port_was_taken(tmp_path, monkeypatch):
    # Prepare: another process binds the first port the launcher will pick (as Ray or another
    # run may between free_port() and the SuperLink's bind).
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    out.mkdir()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken, free_port(), free_port(), free_port()])
        monkeypatch.setattr(launcher, "free_port", lambda: next(picks))
        env = {**os.environ, **launcher.OFFLINE_ENV, "FLWR_HOME": str(home)}

        # Execute
        with owned_processes() as procs:
            port = launcher._start_superlink(home, out, env, procs)

            # Assert: the first SuperLink gave up on the taken port; the second one runs.
            assert port != taken
            assert len(procs) == 1 and procs[0].poll() is None
            assert f'address = "127.0.0.1:{port}"' in (home / "config.toml").read_text()
            log = (out / "superlink.log").read_text()
            assert "address already in use" in log
            assert f"Uvicorn running on http://127.0.0.1:{port}" in log


def test_simulation_env_sets_ray_address_only_when_a_cluster_is_asked_for(monkeypatch):
    # Prepare: an inherited RAY_ADDRESS must not silently send a local run to a cluster.
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")

    # Execute
    local = launcher.simulation_env(None, "/tmp/home")
    cluster = launcher.simulation_env(" 10.0.0.5:6379 ", "/tmp/home")

    # Assert
    assert "RAY_ADDRESS" not in local
    assert cluster["RAY_ADDRESS"] == "10.0.0.5:6379"
    assert local["FLWR_HOME"] == cluster["FLWR_HOME"] == "/tmp/home"
    assert cluster["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def test_simulate_refuses_a_bad_ray_address_before_starting_anything(tmp_path):
    config = RunConfig.from_mapping({"out_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="got 'ray://head:10001'"):
        launcher.simulate(config, ray_address="ray://head:10001")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_supernodes": 0}, "num_supernodes must be >= 1, got 0"),
        ({"num_supernodes": 2, "client_cpus": 0}, "client CPUs must be an integer >= 1, got 0"),
        ({"num_supernodes": 2, "client_gpus": -0.5}, "client GPUs must be >= 0"),
    ],
    ids=["no-nodes", "no-cpus", "negative-gpus"],
)
def test_bad_simulation_resources_are_refused(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        launcher.SimulationResources(**fields)
