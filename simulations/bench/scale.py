"""Suite `scale`: round time, peak memory and secure-aggregation time as simulated clients grow.

Each size runs our Flower simulation (one CPU per client actor) while a thread samples the
memory of the whole process tree (this process, SuperLink, simulation, Ray and its workers).
From `large_from` clients on, a round samples `large_fraction` of them. Tiny models and epochs
keep the compute small, so the figures are about the system. Secure aggregation is reported
twice: `aggregate_seconds` from the run (the whole collection: the train message with the
clients' training, then the later SecAgg+ message stages), and the protocol's computation alone
for a round that sets up keys (all parties in one process, `plain_loop.SecureSums`) for the same
cohort and payload.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd

from common.config import RunConfig
from common.data import load_splits
from common.methods import get_method
from common.protocol import Contribution
from common.secure_codec import dp_noise_share_std
from server.aggregation import RoundPlan
from server.cohort import NodeInfo
from simulations.bench import report
from simulations.bench.memory import PeakMemory
from simulations.bench.plain_loop import SecureSums, WireBytes
from simulations.bench.runs import flower_run
from simulations.bench.suite import Bench, BenchSpec

GIB = 2**30
MIB = 2**20


def cohort_size(config: RunConfig) -> int:
    """Clients per round, as `server.cohort.sample_cohort` draws them."""
    return min(
        config.num_clients, max(config.min_clients, math.ceil(config.fraction * config.num_clients))
    )


def secagg_compute_seconds(config: RunConfig, cohort: int, n_query: int, classes: int) -> float:
    """Seconds for every SecAgg+ stage of a round that sets up keys, all parties in one process
    (no messaging)."""
    rng = np.random.default_rng(config.seed)
    nodes = [NodeInfo(node_id=node, index=node - 1, label="") for node in range(1, cohort + 1)]
    contributions = {
        node.node_id: Contribution(
            probs=rng.dirichlet(np.ones(classes), size=n_query).astype(np.float32), weight=1.0
        )
        for node in nodes
    }
    plan = RoundPlan(
        round=1,
        cohort=nodes,
        query_indices=np.arange(n_query, dtype=np.int64),
        n_public=n_query,
        num_classes=classes,
        label_bits=config.label_bits,
        public_hash="",
        min_clients=config.min_clients,
        timeout=1.0,
        per_row_weights=get_method(config.method).per_row_weights,
    )
    noise_std = dp_noise_share_std(config, n_query, cohort)
    start = time.perf_counter()
    SecureSums(config).sum(plan, contributions, noise_std, WireBytes())  # bytes not reported
    return time.perf_counter() - start


def run(bench: Bench) -> None:
    """Run every size once per seed and write scale.csv / scale.md."""
    rows: list[dict[str, Any]] = []
    for seed in bench.seeds:
        for clients in bench.knobs["sizes"]:
            fraction = (
                bench.knobs["large_fraction"] if clients >= bench.knobs["large_from"] else 1.0
            )
            config = bench.for_seed(seed, num_clients=clients, fraction=fraction)
            splits = load_splits(config)
            cohort = cohort_size(config)
            bench.step(f"seed={seed}: {clients} clients, {cohort} per round")
            with PeakMemory() as memory:
                result = flower_run(bench, config, f"scale-n{clients}-s{seed}", reuse=False)
            done = result.ok_rounds()
            later = done.iloc[1:]
            rows.append(
                {
                    "seed": seed,
                    "clients": clients,
                    "cohort": cohort,
                    "rounds_completed": len(done),
                    "round_s_after_first": float(later["seconds"].mean()),
                    "first_round_s": float(done["seconds"].iloc[0]),
                    "aggregate_s_after_first": float(later["aggregate_seconds"].mean()),
                    "distill_s": float(done["distill_seconds"].mean()),
                    "launch_s": result.launch_seconds,
                    "peak_rss_gib": memory.peak_rss / GIB,
                    "peak_pss_gib": memory.peak_pss / GIB,
                    "peak_processes": memory.peak_processes,
                    "pss_per_client_mib": memory.peak_pss / MIB / clients,
                    "final_accuracy": float(done["student_accuracy"].iloc[-1]),
                }
            )
            if config.secagg:
                bench.step(f"seed={seed}: SecAgg+ computation alone, cohort {cohort}")
                rows[-1]["secagg_compute_s"] = secagg_compute_seconds(
                    config, cohort, len(splits.public_x), splits.num_classes
                )
            _write(bench, pd.DataFrame(rows))


VALUES = (
    "round_s_after_first",
    "first_round_s",
    "aggregate_s_after_first",
    "secagg_compute_s",
    "launch_s",
    "peak_rss_gib",
    "peak_pss_gib",
    "pss_per_client_mib",
)


def _write(bench: Bench, rows: pd.DataFrame) -> None:
    out = bench.out_dir
    report.write_csv(rows, out / "scale.csv")
    values = [value for value in VALUES if value in rows]
    summary = report.summarise(rows, ["clients", "cohort"], values)
    report.write_csv(summary, out / "scale_summary.csv")

    def cell(row: pd.Series, name: str, digits: int = 2) -> str:
        if f"{name}_mean" not in row:
            return "—"
        return report.mean_std(row[f"{name}_mean"], row[f"{name}_std"], digits)

    smallest = summary.iloc[0]
    table = []
    for _, row in summary.iterrows():
        extra = row["clients"] - smallest["clients"]
        marginal = (
            (row["peak_pss_gib_mean"] - smallest["peak_pss_gib_mean"]) * 1024 / extra
            if extra
            else float("nan")
        )
        table.append(
            {
                "clients": int(row["clients"]),
                "per round": int(row["cohort"]),
                "round (s), excl. 1st": cell(row, "round_s_after_first"),
                "1st round (s)": cell(row, "first_round_s"),
                "SecAgg+ collect (s)": cell(row, "aggregate_s_after_first"),
                "SecAgg+ compute (s)": cell(row, "secagg_compute_s"),
                "peak PSS (GiB)": cell(row, "peak_pss_gib"),
                "peak RSS sum (GiB)": cell(row, "peak_rss_gib"),
                "PSS / client (MiB)": cell(row, "pss_per_client_mib", 1),
                "marginal PSS / extra client (MiB)": report.number(marginal, 2),
            }
        )
    sections = [
        report.settings_line(bench.settings, bench.seeds),
        "Peak memory of the whole process tree, sampled every 0.5 s from /proc: PSS counts "
        "shared pages once (the real footprint), the RSS sum counts them per process. "
        "'SecAgg+ collect' is the run's `aggregate_seconds` (clients' training in the train "
        "message plus three more SecAgg+ message stages), averaged over rounds 2…R; "
        "'SecAgg+ compute' runs the protocol's four stages for every party of one cohort in one "
        "process, without messaging or training. Marginal PSS: growth over the smallest size "
        "per added simulated client.",
        report.markdown_table(table, tuple(table[0])),
    ]
    path = report.write_markdown(out / "scale.md", "Scale", sections)
    bench.step(f"wrote {out / 'scale.csv'} and {path}")


SPEC = BenchSpec(
    name="scale",
    summary="round time, peak memory and secure-aggregation time at 1,000 and 10,000 clients",
    knobs={"sizes": (1000, 10000), "large_from": 1000, "large_fraction": 0.01},
    config={
        "partitioner": "iid",
        # 76,800 private samples (about 8 per client at 10,000 clients); the public set keeps
        # the default run's 3,200 samples, so the soft-label payload does not grow with N.
        "num_samples": 100000,
        "public_fraction": 0.04,
        "rounds": 3,
        "teacher_models": "cnn1d-s",
        "student_model": "cnn1d-s",
        "local_epochs": 1,
        "distill_epochs": 1,
    },
    tiny={
        "sizes": (4,),
        "large_from": 4,
        "large_fraction": 0.75,
        "num_samples": 1200,
        "public_fraction": 0.2,
        "rounds": 2,
    },
    run=run,
)
