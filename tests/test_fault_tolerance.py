"""Fault tolerance on the real Flower runtime: malformed replies, crashing clients, kill -9."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from common.config import RunConfig
from common.data import load_splits
from simulations.cli import load_named_config, resolve_config
from simulations.launcher import APP_DIR, SimulationResources, simulate, stop_stale_superlink
from simulations.processes import descendants, kill_tree

TIMING = ["seconds", "aggregate_seconds", "distill_seconds"]


def _smoke(tmp_path: Path, **changes: object) -> RunConfig:
    values = {**load_named_config("smoke"), "data_dir": str(tmp_path / "data"), **changes}
    return RunConfig.from_mapping(values)


def _faulty_app(tmp_path: Path) -> Path:
    """A copy of our app whose ClientApp is tests/apps/faulty_clientapp.py."""
    app = tmp_path / "faulty_app"
    for package in ("common", "client", "server"):
        shutil.copytree(
            APP_DIR / package, app / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(Path(__file__).parent / "apps" / "faulty_clientapp.py", app)
    pyproject = (APP_DIR / "pyproject.toml").read_text()
    (app / "pyproject.toml").write_text(
        pyproject.replace('clientapp = "client.app:app"', 'clientapp = "faulty_clientapp:app"')
    )
    return app


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    tmp_path = tmp_path_factory.mktemp("faulty")
    config = _smoke(
        tmp_path,
        num_clients=9,
        rounds=3,
        secagg=False,
        min_clients=2,
        local_epochs=2,  # the outcome of each reply matters here, not accuracy
        distill_epochs=5,
        round_timeout=1800.0,  # an honest client must never miss the round on a busy machine
        out_dir=str(tmp_path / "run"),
    )
    out = simulate(config, SimulationResources(num_supernodes=9), app_dir=_faulty_app(tmp_path))
    return pd.read_csv(out / "metrics.csv")


class TestMalformedReplies:
    """One simulation, a faulty client per kind of bad reply (one xdist scope: see conftest.py)."""

    def test_malformed_replies_are_left_out_with_their_reason(
        self, faulty_run: pd.DataFrame
    ) -> None:
        first = faulty_run.iloc[0]
        assert first["status"] == "ok"
        assert first["clients"] == 2
        assert first["clients_failed"] == 7
        failures = first["failures"]
        assert "\n" not in failures and "Traceback" not in failures  # one line per client
        for partition, reason in {
            2: "coded counts do not decompress",
            3: "coded counts hold 69084 bytes, expected 69120",
            4: "counts outside [0, 2^16]",
            5: "injected crash",
            6: "label_bits=15, expected 16",
            7: "coded counts hold 69121+ bytes, expected 69120",
            8: "public-set hash",
        }.items():
            assert f"partition-{partition}: " in failures
            entry = failures.split(f"partition-{partition}: ")[1].split(";")[0]
            assert reason in entry, (partition, entry)

    def test_round_below_minimum_is_skipped_and_the_next_round_proceeds(
        self,
        faulty_run: pd.DataFrame,
    ) -> None:
        second, third = faulty_run.iloc[1], faulty_run.iloc[2]
        assert second["status"].startswith("failed:")
        assert "1 valid contributions < min_clients=2" in second["status"]
        assert pd.isna(second["student_accuracy"])
        assert third["status"] == "ok"
        assert third["clients"] == 9


def _wait_for_rows(metrics: Path, rows: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(pd.read_csv(metrics)) >= rows:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{metrics} did not reach {rows} rows in {timeout}s")


def _interrupt(process: subprocess.Popen) -> None:
    """Stop a launcher that still runs with SIGINT, which lets it stop its SuperLink."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    # The smoke config with less compute: under test is the resume, not accuracy. One SecAgg+
    # key set-up per round: round 2 then starts with advertise, so the kill (within 0.05 s of
    # round 1's row) lands two message stages before any masked input of round 2 leaves and the
    # resumed round 2 re-runs. In a steady round of a longer key epoch the masked input is the
    # training reply, and a crash after it left makes the resumed round fail (the ledger refuses
    # a second sum): `test_secagg_handlers.py` covers both sides at the handler level.
    settings = [
        "rounds=3",
        "num_samples=3000",
        "local_epochs=3",
        "distill_epochs=5",
        "secagg_epoch_rounds=1",
    ]
    common = ["--config", "smoke", "--set", f"data_dir={tmp_path / 'data'}"]
    for setting in settings:
        common += ["--set", setting]
    cli = [sys.executable, "-m", "simulations.cli", "run", *common]
    # The uninterrupted reference runs alongside the victim and its resume: each run spends much
    # of its time waiting (start-up, 3 s polls). They share only the data cache, written first.
    data = [f"data_dir={tmp_path / 'data'}", *settings]
    load_splits(resolve_config("smoke", data, str(tmp_path / "reference")))
    killed_dir = tmp_path / "killed"
    with open(tmp_path / "reference.log", "wb") as reference_log:
        reference = subprocess.Popen(
            [*cli, "--out", str(tmp_path / "reference")],
            stdout=reference_log,
            stderr=subprocess.STDOUT,
        )
    try:
        victim = subprocess.Popen(
            [*cli, "--out", str(killed_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait_for_rows(killed_dir / "metrics.csv", rows=1, timeout=900)
        finally:
            # A crash takes the SuperLink and its ServerApp (other sessions) first: they run
            # round 2, whose masked inputs must not leave before the kill (see above).
            superlink = killed_dir / "superlink.pid"
            if superlink.exists():
                kill_tree(int(superlink.read_text()))
            os.killpg(victim.pid, signal.SIGKILL)  # the launcher, as a crash would take it
            victim.wait()
        assert not (killed_dir / "summary.json").exists()

        resumed = subprocess.run(
            [*cli[:4], "--resume", str(killed_dir)], capture_output=True, timeout=1200
        )
        assert resumed.returncode == 0, resumed.stdout.decode()[-2000:]
        reference.wait(timeout=1200)
    finally:
        _interrupt(reference)  # only if something above failed while it still ran
    assert reference.returncode == 0, (tmp_path / "reference.log").read_text()[-2000:]

    expected = pd.read_csv(tmp_path / "reference" / "metrics.csv").drop(columns=TIMING)
    actual = pd.read_csv(killed_dir / "metrics.csv").drop(columns=TIMING)
    assert len(actual) == 3
    pd.testing.assert_frame_equal(actual, expected, check_exact=True)
    # Round 1 of both came from separate processes, rounds 2-3 from a fresh one: every value and
    # the final student's weights are identical (same seed, same results).
    reference_weights = torch.load(tmp_path / "reference" / "student.pt", weights_only=False)
    resumed_weights = torch.load(killed_dir / "student.pt", weights_only=False)
    assert reference_weights["model"].keys() == resumed_weights["model"].keys()
    for name, tensor in reference_weights["model"].items():
        assert torch.equal(tensor, resumed_weights["model"][name]), name
    assert not (killed_dir / "superlink.pid").exists()


# A stand-in for the SuperLink a SIGKILLed launcher leaves behind: a real process whose command
# line names flower-superlink, with a child in a session of its own (as Flower starts
# flower-superexec and the ServerApp), which a process-group kill would miss.
ORPHAN = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
    "start_new_session=True); time.sleep(600)"
)


def _alive(pid: int) -> bool:
    """Running, i.e. neither gone nor a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for_child(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if children := descendants(pid):
            return children[0]
        time.sleep(0.1)
    raise TimeoutError(f"process {pid} started no child in {timeout}s")


def test_resume_kills_a_stale_superlink_and_its_detached_children(tmp_path: Path) -> None:
    leader = subprocess.Popen([sys.executable, "-c", ORPHAN, "flower-superlink"])
    child = _wait_for_child(leader.pid)
    (tmp_path / "superlink.pid").write_text(str(leader.pid))
    try:
        stop_stale_superlink(tmp_path)

        assert leader.wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
        assert not (tmp_path / "superlink.pid").exists()
    finally:  # only what still runs: a reaped PID may already belong to another process
        if leader.poll() is None:
            kill_tree(leader.pid)
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_resume_leaves_a_reused_pid_that_is_not_a_superlink_alone(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (tmp_path / "superlink.pid").write_text(str(bystander.pid))
    try:
        stop_stale_superlink(tmp_path)

        assert bystander.poll() is None
        assert not (tmp_path / "superlink.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()
