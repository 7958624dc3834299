"""The launcher's private SuperLink: it must be ours that answers on the configured port."""

from __future__ import annotations

import os
import socket

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
