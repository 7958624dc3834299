"""Where and how long each ClientApp message ran: Ray node, host, process, handler seconds.

A ClientApp mod: after the handler returns, a ClientApp running inside a Ray worker (Flower's
simulation engine, local or on a cluster) appends one JSON line per message to
`<out_dir>/placement/<ray node id>-<pid>.jsonl`. One file per worker process, because a worker
runs one message at a time, so no two writers share a file. Outside Ray (a deployed SuperNode)
nothing is written. On a multi-machine cluster `out_dir` must be a path every node can write and
the launcher can read (a shared filesystem), as it must for the teachers' state.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

PLACEMENT_DIR = "placement"
COLUMNS = (
    "ray_node_id",
    "host",
    "pid",
    "node_id",
    "partition_id",
    "message_type",
    "group_id",
    "seconds",
)


def ray_node_id() -> str | None:
    """The id of the Ray node this process runs on, or None outside a Ray worker.

    Ray is looked up among loaded modules, not imported: a deployed ClientApp process must not
    pay for importing it.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return str(ray.get_runtime_context().get_node_id())


def record_placement(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the handler, then record where it ran and its wall time in `seconds` (see module
    docstring)."""
    start = time.perf_counter()
    reply = call_next(msg, context)
    seconds = time.perf_counter() - start
    node = ray_node_id()
    out_dir = str(context.run_config.get("out_dir", ""))
    if node is None or not out_dir:
        return reply
    row = {
        "ray_node_id": node,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "node_id": context.node_id,
        "partition_id": context.node_config.get("partition-id"),
        "message_type": msg.metadata.message_type,
        "group_id": msg.metadata.group_id,
        "seconds": seconds,
    }
    directory = Path(out_dir) / PLACEMENT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{node}-{os.getpid()}.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    return reply


def read_placement(out_dir: Path) -> list[dict[str, object]]:
    """Every recorded message of a run, one dict with `COLUMNS` each (none if none ran in Ray)."""
    return [
        json.loads(line)
        for path in sorted((out_dir / PLACEMENT_DIR).glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line
    ]


def messages_per_ray_node(out_dir: Path) -> dict[str, int]:
    """Recorded messages per Ray node id, most first."""
    counts: dict[str, int] = {}
    for row in read_placement(out_dir):
        counts[str(row["ray_node_id"])] = counts.get(str(row["ray_node_id"]), 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))
