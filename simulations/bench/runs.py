"""Real Flower simulations for the benchmarks: our app or the FedAvg baseline app, cached by config.

Each run lives in `<out>/flower-runs/<label>-<key>/`, where the key hashes the app, the whole run
config and the simulation resources. A finished run found there is reused, so suites that share
an `--out` folder (e.g. `quality` and `comm`) share runs; timing suites ask for fresh runs.
Delete the folder (or pick another `--out`) to measure again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common.config import RunConfig
from common.files import atomic_write_bytes
from simulations.bench.suite import Bench
from simulations.launcher import APP_DIR, SimulationResources, default_resources, simulate

FEDAVG_COMPONENTS = {
    'serverapp = "server.app:app"': 'serverapp = "simulations.bench.fedavg_app:server_app"',
    'clientapp = "client.app:app"': 'clientapp = "simulations.bench.fedavg_app:client_app"',
}
APPS = ("feddistill", "fedavg")


@dataclass(frozen=True)
class FlowerRun:
    """A finished simulation.

    Attributes
    ----------
    path : the run directory (config.json, metrics.csv, summary.json, flower.log, …).
    metrics : one row per round (metrics.csv).
    summary : summary.json (wall_seconds is the ServerApp's own time, from start to finish).
    launch_seconds : wall time of the whole `simulate()` call, SuperLink and Ray start included.
    """

    path: Path
    metrics: pd.DataFrame
    summary: dict[str, Any]
    launch_seconds: float

    def ok_rounds(self) -> pd.DataFrame:
        """Rows of completed rounds only."""
        return self.metrics[self.metrics["status"] == "ok"]

    def curve(self) -> pd.DataFrame:
        """Per completed round: `round`, test `accuracy`, `nll`, `ece`, the round's `seconds` and
        the cumulative `upload_mb_per_client` (MB = 10^6 bytes; Σ_r bytes_up_r / clients_r)."""
        done = self.ok_rounds()
        return pd.DataFrame(
            {
                "round": done["round"].astype(int),
                "accuracy": done["student_accuracy"],
                "nll": done["student_nll"],
                "ece": done["student_ece"],
                "seconds": done["seconds"],
                "upload_mb_per_client": (done["bytes_up"] / done["clients"]).cumsum() / 1e6,
            }
        ).reset_index(drop=True)


def flower_run(
    bench: Bench,
    config: RunConfig,
    label: str,
    *,
    app: str = "feddistill",
    resources: SimulationResources | None = None,
    reuse: bool = True,
) -> FlowerRun:
    """Run `config` in Flower's simulation engine (or reuse an identical finished run).

    Parameters
    ----------
    bench : the suite invocation (for the output root and progress lines).
    config : the run config; its `out_dir` is replaced by the run's cache folder.
    label : readable prefix of the run folder, e.g. 'fd-a0.5-s0'.
    app : 'feddistill' (our ServerApp/ClientApp) or 'fedavg' (`simulations.bench.fedavg_app`).
    resources : simulation resources; default one CPU (and a GPU share under CUDA) per client.
    reuse : accept a finished run with the same key; timing suites pass False.
    """
    if app not in APPS:
        raise ValueError(f"app must be one of {APPS}, got {app!r}")
    resources = resources or default_resources(config)
    key = _run_key(app, config, resources)
    path = bench.root / "flower-runs" / f"{label}-{key}"
    if reuse and (path / "bench.json").exists():
        bench.step(f"{label}: reusing finished run {path}")
        return _load(path)
    if path.exists():  # an unfinished run of ours: start it over
        shutil.rmtree(path)
    path.mkdir(parents=True)
    config = config.replace(out_dir=str(path))
    app_dir = APP_DIR if app == "feddistill" else fedavg_app_dir(bench.root)
    bench.step(f"{label}: Flower simulation ({resources.federation_config()}) → {path}")
    start = time.perf_counter()
    with open(path / "flower.log", "ab") as log:
        try:
            simulate(config, resources, stream_to=log.fileno(), app_dir=app_dir)
        except RuntimeError as error:
            raise RuntimeError(f"{label}: {error}; Flower log: {path / 'flower.log'}") from None
    launch_seconds = time.perf_counter() - start
    record = {"app": app, "label": label, "resources": resources.federation_config()}
    record["launch_seconds"] = launch_seconds
    atomic_write_bytes(path / "bench.json", json.dumps(record, indent=2).encode())
    return _load(path)


def fedavg_app_dir(root: Path) -> Path:
    """A Flower app folder whose components are the FedAvg baseline apps.

    It holds only a pyproject.toml: this project's, with the two component references swapped,
    so the run-config keys are exactly ours. The modules themselves import from the installed
    project.
    """
    text = (APP_DIR / "pyproject.toml").read_text()
    for ours, theirs in FEDAVG_COMPONENTS.items():
        if ours not in text:
            raise RuntimeError(f"pyproject.toml no longer declares {ours!r}; update runs.py")
        text = text.replace(ours, theirs)
    app_dir = root / "apps" / "fedavg"
    app_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(app_dir / "pyproject.toml", text.encode())
    return app_dir


def _run_key(app: str, config: RunConfig, resources: SimulationResources) -> str:
    values = {k: v for k, v in config.to_dict().items() if k != "out_dir"}
    text = json.dumps(
        {"app": app, "config": values, "resources": resources.federation_config()},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _load(path: Path) -> FlowerRun:
    record = json.loads((path / "bench.json").read_text())
    return FlowerRun(
        path=path,
        metrics=pd.read_csv(path / "metrics.csv"),
        summary=json.loads((path / "summary.json").read_text()),
        launch_seconds=float(record["launch_seconds"]),
    )
