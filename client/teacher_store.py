"""Where a client keeps its teacher between rounds: node-local disk, or Flower's context.state.

On disk (simulation: `<out_dir>/clients/<label>/`; deployment:
`<state-dir>/run-<scope>/<label>/` under the node-config `state-dir`, the scope a digest of the
run config without `resume`, so a node never starts one run's round from another run's teacher),
the teacher is saved per round as `teacher-round{r}.pt`, and round r starts from the newest file
before r. A round that is re-run after a crash therefore starts from the same weights as the
first time, which makes resumed runs identical to uninterrupted ones.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context

from client.secagg_ledger import run_scope
from common.config import RunConfig
from common.files import atomic_write_bytes

MEMORY_KEY = "teacher"
RUN_SCOPE_CHARS = 16  # hex digits of the run scope in a state-dir folder name
_FILE = re.compile(r"teacher-round(\d+)\.pt")


class TeacherStore:
    """Load the teacher state a round starts from; save the state a round ends with."""

    def __init__(self, context: Context, directory: Path | None) -> None:
        self.context = context
        self.directory = directory

    @classmethod
    def for_node(cls, context: Context, config: RunConfig, label: str) -> TeacherStore:
        """Disk store under the node's `state-dir` or the run's out_dir; else memory only."""
        node_config: Mapping[str, object] = context.node_config
        if "state-dir" in node_config:  # one folder per run: a node serves many runs
            run = run_scope(config.to_dict())[:RUN_SCOPE_CHARS]
            state_dir = Path(str(node_config["state-dir"])).expanduser()
            return cls(context, state_dir / f"run-{run}" / label)
        if config.out_dir:
            return cls(context, Path(config.out_dir) / "clients" / label)
        return cls(context, None)

    def load(self, round_number: int) -> dict[str, torch.Tensor] | None:
        """The newest saved state from a round before `round_number`, or None."""
        if self.directory is None:
            record = self.context.state.get(MEMORY_KEY)
            return None if record is None else record.to_torch_state_dict()
        earlier = [r for r in self._saved_rounds() if r < round_number]
        if not earlier:
            return None
        path = self.directory / f"teacher-round{max(earlier)}.pt"
        return torch.load(path, map_location="cpu", weights_only=True)

    def save(self, round_number: int, state: dict[str, torch.Tensor]) -> None:
        """Persist the state after `round_number`; keep only the files a re-run may need."""
        if self.directory is None:
            self.context.state[MEMORY_KEY] = ArrayRecord(torch_state_dict=state)
            return
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.directory / f"teacher-round{round_number}.pt", buffer.getvalue())
        previous = [r for r in self._saved_rounds() if r < round_number]
        for stale in previous[:-1]:  # keep the newest earlier one: round_number may re-run
            (self.directory / f"teacher-round{stale}.pt").unlink(missing_ok=True)

    def _saved_rounds(self) -> list[int]:
        if not self.directory.exists():
            return []
        found = (_FILE.fullmatch(path.name) for path in self.directory.iterdir())
        return sorted(int(match.group(1)) for match in found if match)
