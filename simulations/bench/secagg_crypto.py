"""Micro-benchmark: cost of each secure-aggregation stage, all clients and the server, in process.

Runs the full SecAgg+ protocol (no Flower, no network) on a soft-label payload of
rows × classes probabilities plus one weight, and prints per stage the summed and mean client time,
the server time, the bytes sent each way, and the time spent persisting client state.

Usage::

    python -m simulations.bench.secagg_crypto [--sizes 10 50 100] [--rows 2000] [--classes 10]
                                              [--drop 0.1] [--csv results.csv]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from client.secagg import SecAggClient
from common.secagg import STAGES, SecAggParams
from common.secagg.encoding import decode_sum, encode
from common.secagg.identity import NodeIdentity
from server.secagg import SecAggServer

VALUE_BOUND = 1.0  # soft labels and the weight 1 lie in [0, 1]


def payload_nbytes(payload: Mapping[str, object]) -> int:
    """Bytes a payload carries: raw bytes and arrays at size, ints and floats at 8 bytes."""
    total = 0
    for value in payload.values():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bytes):
                total += len(item)
            elif isinstance(item, np.ndarray):
                total += item.nbytes
            else:
                total += 8
    return total


def run_round(n_clients: int, rows: int, classes: int, drop: float, seed: int) -> list[dict]:
    """Run one round and return one timing row per stage.

    Parameters
    ----------
    n_clients : int
        Cohort size n.
    rows, classes : int
        Soft-label matrix shape (Q, K); the input has Q·K + 1 elements.
    drop : float
        Fraction of the cohort that goes silent before the masked-input stage.
    seed : int
        Seed for node ids, inputs and dropouts.

    Returns
    -------
    list[dict]
        One row per stage with times in ms and bytes in kB.
    """
    rng = random.Random(seed)
    cohort = sorted(rng.sample(range(1, 2**62), n_clients))
    dropped = set(rng.sample(cohort, round(drop * n_clients)))
    policy = SecAggParams()
    params = policy.validate(n_clients, VALUE_BOUND)
    data = np.random.default_rng(seed)
    soft_labels = {node: data.dirichlet(np.ones(classes), size=rows) for node in cohort}  # (Q, K)
    vectors = {
        node: encode(
            np.append(labels.ravel(), 1.0), params.frac_bits, params.modulus_bits, VALUE_BOUND
        )
        for node, labels in soft_labels.items()
    }  # (Q·K + 1,) uint64
    server = SecAggServer(7, cohort, params, rows * classes + 1)
    identities = {node: NodeIdentity.generate() for node in cohort}  # signed keys, as deployed
    roster = [identity.public_key for identity in identities.values()]
    states = {
        node: SecAggClient(node, policy, identity=identities[node], roster=roster).to_state()
        for node in cohort
    }
    rows_out = []
    for stage in STAGES[:-1]:
        start = time.perf_counter()
        requests = server.requests()
        server_s = time.perf_counter() - start
        client_s, state_s, replies = [], 0.0, {}
        for node, request in requests.items():
            if stage == "masked-input" and node in dropped:
                continue
            start = time.perf_counter()
            client = SecAggClient.from_state(states[node])
            middle = time.perf_counter()
            replies[node] = client.respond(stage, request, vectors[node])
            end = time.perf_counter()
            states[node] = client.to_state()
            state_s += (middle - start) + (time.perf_counter() - end)
            client_s.append(end - middle)
        start = time.perf_counter()
        server.receive(replies)
        server_s += time.perf_counter() - start
        rows_out.append(
            {
                "n": n_clients,
                "k": params.neighbours,
                "t": params.threshold,
                "stage": stage,
                "clients_ms": 1e3 * sum(client_s),
                "client_mean_ms": 1e3 * float(np.mean(client_s)),
                "server_ms": 1e3 * server_s,
                "state_ms": 1e3 * state_s,
                "down_kB": sum(map(payload_nbytes, requests.values())) / 1e3,
                "up_kB": sum(map(payload_nbytes, replies.values())) / 1e3,
            }
        )
    result = server.result()
    expected = sum(np.append(soft_labels[node].ravel(), 1.0) for node in result.survivors)
    decoded = decode_sum(result.total, params.frac_bits, params.modulus_bits)  # (Q·K + 1,)
    error = float(np.max(np.abs(decoded - expected)))
    if error > len(result.survivors) * 2.0 ** -(params.frac_bits + 1):
        raise RuntimeError(f"secure sum is off the plain sum by {error}, beyond quantisation")
    return rows_out


def main() -> None:
    """Parse arguments, run each cohort size, print the table and optionally write a CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--rows", type=int, default=2000, help="public samples Q")
    parser.add_argument("--classes", type=int, default=10, help="classes K")
    parser.add_argument("--drop", type=float, default=0.0, help="fraction silent at masked-input")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    run_round(3, 10, 2, 0.0, args.seed)  # warm caches and imports
    table = []
    for n_clients in args.sizes:
        print(f"n={n_clients}: running ...", flush=True)
        table.extend(run_round(n_clients, args.rows, args.classes, args.drop, args.seed))
    frame = pd.DataFrame(table)
    totals = frame.groupby(["n", "k", "t"], as_index=False).sum(numeric_only=True)
    totals["stage"] = "total"
    totals["client_mean_ms"] = totals["clients_ms"] / totals["n"]
    frame = pd.concat([frame, totals]).sort_values("n", kind="stable")
    print(frame.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    if args.csv is not None:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
