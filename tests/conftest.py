"""The order in which pytest-xdist hands out the suite (addopts in pyproject.toml: two workers,
`--dist loadscope --no-loadscope-reorder`).

With `--dist loadscope` each module goes to one worker as a whole, and so does each test class,
so a module- or class-scoped fixture runs once. A module whose Flower runs are independent keeps
those that share a fixture in a class of their own (e.g. `TestDeployedRun`), so the other worker
can take the rest. Under xdist the scopes that start Flower runs go first, longest first
(`LONGEST_FIRST`; `--no-loadscope-reorder` stops xdist from sorting them by test count
instead), so the workers finish together rather than one starting the TLS deployment when the
other has nothing left. In a single process (`-n 0`) the order stays the files'.
"""

from __future__ import annotations

import os

import pytest

# xdist scopes (module, or module::Class) that start Flower runs, longest first: seconds on an
# idle 2-core machine, one process. Scopes not listed follow in file order.
LONGEST_FIRST = (
    "tests/test_deploy.py::TestDeployedRun",  # ~180 s: TLS SuperLink, 4 SuperNodes, 2 rounds
    "tests/test_bench.py::TestQualityAndComm",  # 4 simulations: FD, FedAvg, FedProx, plain FD
    "tests/test_fault_tolerance.py",  # kill -9 and resume: 3 simulations, 2 at a time
    "tests/test_secagg_flower.py::TestSmoke",  # 2 simulations, one after the other
    "tests/test_simulation.py",  # 2 simulations side by side
    "tests/test_deploy.py",  # 3 clusters: signed apps, unregistered/untrusting nodes, Ctrl-C
    "tests/test_bench.py",  # overhead and scale: a simulation each
    "tests/test_ray_cluster.py",  # a two-node Ray cluster and one run on it (~40 s)
    "tests/test_fault_tolerance.py::TestMalformedReplies",  # 1 simulation of 9 clients
    "tests/test_secagg_flower.py",  # dropouts: 1 in-process simulation
)


def xdist_scope(item: pytest.Item) -> str:
    """The unit `--dist loadscope` sends to one worker: the test's module or class."""
    return item.nodeid.rsplit("::", 1)[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    rank = {scope: index for index, scope in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(xdist_scope(item), len(rank)))  # stable
