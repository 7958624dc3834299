"""Who shares secrets with whom: the k-regular neighbour graph of SecAgg+ and its threshold.

Each node masks its input pairwise with its k graph neighbours and Shamir-shares its two secrets
among the k neighbours *and itself*: k + 1 holders. A node's own share is only ever used for its
self-mask seed, released when it survives. The threshold t must satisfy

    (k + 1) / 2 < t <= k + 1,

the lower bound because a server that tells some holders "u survived" and others "u dropped" gets
at most one kind of share from each honest holder, and two disjoint sets of t holders cannot exist
among k + 1 when 2t > k + 1.

Defaults: k = min(n - 1, 2 · ceil(1.5 · log2 n)), even below n - 1 so the graph exists for any n
(k = 18 at n = 50, 20 at n = 100, 30 at n = 1000; all-to-all up to n = 13), and
t = floor((k + 1) / 2) + 1 (t = 11 at k = 20), which tolerates losing just under half of a node's
holders.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def auto_neighbours(n_clients: int) -> int:
    """Default degree k = min(n - 1, 2 · ceil(1.5 · log2 n)) for a cohort of n >= 2."""
    if n_clients < 2:
        raise ValueError(f"a cohort needs at least 2 clients, got {n_clients}")
    return min(n_clients - 1, 2 * math.ceil(1.5 * math.log2(n_clients)))


def auto_threshold(neighbours: int) -> int:
    """Default threshold t = floor((k + 1) / 2) + 1, the smallest t with 2t > k + 1."""
    return (neighbours + 1) // 2 + 1


def check_graph(n_clients: int, neighbours: int, threshold: int) -> None:
    """Raise ValueError unless (n, k, t) describe a valid graph and threshold.

    Parameters
    ----------
    n_clients : int
        Cohort size n >= 2.
    neighbours : int
        Degree k in [1, n - 1]; n · k must be even.
    threshold : int
        t with (k + 1) / 2 < t <= k + 1 (holders are the k neighbours and the node itself).
    """
    if n_clients < 2:
        raise ValueError(f"a cohort needs at least 2 clients, got {n_clients}")
    if not 1 <= neighbours <= n_clients - 1:
        raise ValueError(
            f"neighbours must be in [1, {n_clients - 1}] for n={n_clients}, got {neighbours}"
        )
    if neighbours % 2 and n_clients % 2:
        raise ValueError(
            f"no {neighbours}-regular graph exists on {n_clients} nodes (n·k is odd); "
            f"use an even number of neighbours"
        )
    if not (neighbours + 1 < 2 * threshold and threshold <= neighbours + 1):
        raise ValueError(
            f"threshold must satisfy (k+1)/2 < t <= k+1 = {neighbours + 1} for k={neighbours} "
            f"neighbours (each node holds a share of its own secrets), got t={threshold}"
        )


def _ring(cohort: Sequence[int], seed: int) -> list[int]:
    """Cohort in the order of SHA-256(seed || id): the seeded placement on the ring."""
    prefix = seed.to_bytes(8, "big")
    return sorted(
        cohort, key=lambda node: hashlib.sha256(prefix + node.to_bytes(8, "big")).digest()
    )


def _around(ring: list[int], position: int, neighbours: int) -> tuple[int, ...]:
    """Sorted ids of the k/2 nearest ring nodes on each side, plus the opposite one if k is odd."""
    n_clients = len(ring)
    offsets = [d for half in range(1, neighbours // 2 + 1) for d in (half, -half)]
    if neighbours % 2:
        offsets.append(n_clients // 2)
    return tuple(sorted(ring[(position + d) % n_clients] for d in offsets))


def neighbour_graph(
    cohort: Sequence[int], neighbours: int, seed: int
) -> dict[int, tuple[int, ...]]:
    """Build the k-regular neighbour graph, identical on every node for the same inputs.

    Nodes are placed on a ring in the order of SHA-256(seed || id) and each is joined to the
    k/2 nearest on either side (plus the opposite node when k is odd); k = n - 1 gives all-to-all.

    Parameters
    ----------
    cohort : Sequence[int]
        Node ids (unsigned 64-bit).
    neighbours : int
        Degree k, valid for ``len(cohort)`` (see :func:`check_graph`).
    seed : int
        Unsigned 64-bit graph seed announced by the server for the round.

    Returns
    -------
    dict[int, tuple[int, ...]]
        Node id -> sorted ids of its k neighbours; the relation is symmetric.
    """
    ring = _ring(cohort, seed)
    return {node: _around(ring, position, neighbours) for position, node in enumerate(ring)}


def neighbours_of(node: int, cohort: Sequence[int], neighbours: int, seed: int) -> tuple[int, ...]:
    """One node's row of :func:`neighbour_graph`, without building the others."""
    ring = _ring(cohort, seed)
    return _around(ring, ring.index(node), neighbours)


def share_points(cohort: Sequence[int]) -> dict[int, int]:
    """Shamir evaluation point of each node: its 1-based position in the sorted cohort."""
    return {node: position + 1 for position, node in enumerate(sorted(cohort))}
