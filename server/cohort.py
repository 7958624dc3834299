"""Which nodes take part: discovery (node id → data source) and seeded cohort sampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.feasibility import cohort_size
from common.logs import get_logger
from common.protocol import MSG_DESCRIBE, NODE_RECORD, ROUND_RECORD

log = get_logger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    """A connected node and the data source it reported (partition index and label)."""

    node_id: int
    index: int
    label: str


class NodeRegistry:
    """Learns each connected node's data source once, so sampling and summation order depend
    on data sources, not on the random node ids the runtime assigns."""

    def __init__(self, public_hash: str, num_classes: int, timeout: float) -> None:
        self.public_hash = public_hash
        self.num_classes = num_classes
        self.timeout = timeout
        self.nodes: dict[int, NodeInfo] = {}

    def refresh(self, grid: Grid) -> list[NodeInfo]:
        """Describe newly connected nodes; return all reachable ones sorted by (index, label)."""
        connected = set(grid.get_node_ids())
        unknown = sorted(connected - set(self.nodes))
        if unknown:
            messages = [
                Message(
                    RecordDict(
                        {
                            ROUND_RECORD: ConfigRecord(
                                {"public_hash": self.public_hash, "num_classes": self.num_classes}
                            )
                        }
                    ),
                    dst_node_id=node_id,
                    message_type=MSG_DESCRIBE,
                )
                for node_id in unknown
            ]
            for reply in grid.send_and_receive(messages, timeout=self.timeout):
                node_id = reply.metadata.src_node_id
                if reply.has_error():
                    log.warning(
                        "node %d refused to describe itself: %s", node_id, reply.error.reason
                    )
                    continue
                record = reply.content[NODE_RECORD]
                self.nodes[node_id] = NodeInfo(node_id, int(record["index"]), str(record["label"]))
        alive = [info for node_id, info in self.nodes.items() if node_id in connected]
        return sorted(alive, key=lambda info: (info.index, info.label, info.node_id))


def sample_cohort(
    nodes: list[NodeInfo], fraction: float, min_clients: int, seed: int, round_number: int
) -> list[NodeInfo]:
    """Pick max(min_clients, ⌈fraction · n⌉) nodes with an RNG seeded by (seed, round).

    Returns the cohort in the registry's stable order; raises ValueError if too few nodes.
    """
    size = cohort_size(len(nodes), fraction, min_clients)
    chosen = np.random.default_rng([seed, round_number, 2]).choice(len(nodes), size, replace=False)
    return [nodes[i] for i in sorted(chosen)]
