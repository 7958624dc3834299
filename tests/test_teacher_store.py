"""Where a node keeps its teacher between rounds, and that runs never share it."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import Context, RecordDict

from client.teacher_store import TeacherStore
from common.config import RunConfig


def _store(state_dir: Path, config: RunConfig) -> TeacherStore:
    context = Context(1, 5, {"state-dir": str(state_dir)}, RecordDict(), config.to_dict())
    return TeacherStore.for_node(context, config, "site-a.npz")


def test_a_node_never_starts_a_round_from_another_runs_teacher(tmp_path: Path) -> None:
    # Prepare: run A saves its round-1 teacher in the node's state-dir.
    run_a = RunConfig(seed=0)
    saved = {"weight": torch.arange(4, dtype=torch.float32)}
    _store(tmp_path, run_a).save(1, saved)

    # Execute
    other_run = _store(tmp_path, RunConfig(seed=1)).load(2)
    resumed = _store(tmp_path, run_a.replace(resume=True)).load(2)

    # Assert: another run sees nothing; the same run, resumed, finds its own teacher.
    assert other_run is None
    assert resumed is not None and torch.equal(resumed["weight"], saved["weight"])
    (run_folder,) = tmp_path.iterdir()  # one folder per run, holding the node's teacher
    assert run_folder.name.startswith("run-") and (run_folder / "site-a.npz").is_dir()


def test_a_round_re_run_starts_from_the_state_before_it(tmp_path: Path) -> None:
    store = _store(tmp_path, RunConfig())
    for round_number in (1, 2, 3):
        store.save(round_number, {"weight": torch.full((2,), float(round_number))})

    assert store.load(3)["weight"].tolist() == [2.0, 2.0]  # a re-run of round 3
    assert store.load(4)["weight"].tolist() == [3.0, 3.0]
    assert store.load(1) is None
