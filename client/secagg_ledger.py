"""What a node has already contributed to a secure sum: refuse a second masked input for it.

Training is reproducible by design, so a server that runs round r twice, once with the cohort C
and once with C minus u, learns u's report as the difference of the two sums. A node therefore
sends at most one masked input per (run scope, round) and at most one per (round, report),
remembered in a JSON file on node-local disk written before the masked input leaves:

- run scope: SHA-256 of the run config without ``resume``, so a resumed run keeps the scope of
  the run it continues, and any other run has its own;
- report: HMAC-SHA256 under a key derived from the node's identity key, of the round and the
  report before DP noise, so a new run whose config differs only where training does not look
  (``out_dir``, timeouts, …) still meets the record of the identical report.

A round interrupted before any node sent its masked input re-runs freely after a resume; one
interrupted later is refused by the nodes that had sent theirs and fails (logged, the next round
runs). The files hold digests only, never a report.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from pathlib import Path

from common.files import atomic_write_bytes
from common.secagg import SecAggRefusal

LEDGER_FORMAT = "feddistill-secagg-ledger/1"


def run_scope(run_config: Mapping[str, object]) -> str:
    """Hex SHA-256 of the run config without ``resume`` (JSON, sorted keys)."""
    kept = {key: value for key, value in run_config.items() if key != "resume"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def report_digest(key: bytes, round: int, report: bytes) -> str:
    """Hex HMAC-SHA256 of (round, report bytes) under the node's ledger key."""
    return hmac.new(key, struct.pack(">Q", round) + report, hashlib.sha256).hexdigest()


class ContributionLedger:
    """The rounds and reports a node has sent masked inputs for.

    Parameters
    ----------
    path : Path or None
        The ledger file on node-local disk; None keeps it in ``memory`` only (a node without a
        state directory, as in in-process simulations).
    memory : dict or None
        Where the in-memory ledger lives when ``path`` is None (e.g. Flower's context.state).
    """

    def __init__(self, path: Path | None, memory: dict | None = None) -> None:
        self.path = path
        self.memory = {} if memory is None else memory

    def _load(self) -> dict[str, list[str]]:
        if self.path is None:
            return {
                "rounds": list(self.memory.get("rounds", [])),
                "reports": list(self.memory.get("reports", [])),
            }
        if not self.path.exists():
            return {"rounds": [], "reports": []}
        document = json.loads(self.path.read_text())
        if document.get("format") != LEDGER_FORMAT:
            raise ValueError(f"{str(self.path)!r} is not a {LEDGER_FORMAT} file")
        return {"rounds": document["rounds"], "reports": document["reports"]}

    def check(self, scope: str, round: int, digest: str) -> None:
        """Refuse if this node already sent a masked input for the round or the report.

        Raises
        ------
        SecAggRefusal
            Naming the round; the digests are not shown.
        """
        entries = self._load()
        if f"{scope}:{round}" in entries["rounds"]:
            raise SecAggRefusal(
                f"this node already sent a masked input for round {round} of this run; a "
                "second sum over another cohort would reveal the difference"
            )
        if digest in entries["reports"]:
            raise SecAggRefusal(
                f"this node already sent a masked input of the identical report for round "
                f"{round} (in another run); a second sum would reveal the difference"
            )

    def record(self, scope: str, round: int, digest: str) -> None:
        """Check, then remember the round and the report (atomically, before the input leaves)."""
        self.check(scope, round, digest)
        entries = self._load()
        entries["rounds"].append(f"{scope}:{round}")
        entries["reports"].append(digest)
        if self.path is None:
            self.memory["rounds"], self.memory["reports"] = entries["rounds"], entries["reports"]
            return
        document = {"format": LEDGER_FORMAT, **entries}
        atomic_write_bytes(self.path, json.dumps(document, indent=1).encode())
