"""The feddistill ServerApp: rounds of soft-label collection, ensembling and distillation."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import RunConfig
from common.data import ServerData, load_server_data, public_hash
from common.dp import epsilon
from common.dp_sgd import epsilon_after_rounds
from common.feasibility import (
    aggregation_mode,
    check_query_size,
    describe_aggregation,
    describe_planned_aggregation,
)
from common.kd import at_unit_temperature
from common.logs import get_logger
from common.methods import Ensemble, get_method
from common.metrics import accuracy, expected_calibration_error
from common.quantise import digest_counts
from common.training import resolve_device
from server.aggregation import Aggregate, Aggregator, PlainAggregator, RoundFailed, RoundPlan
from server.cohort import NodeInfo, NodeRegistry, sample_cohort
from server.queries import choose_queries
from server.results import RunDirectory, run_title, summarise_rounds
from server.secure_aggregator import SecureAggregator
from server.student import Student

log = get_logger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `config.rounds` rounds and write the run directory."""
    config = RunConfig.from_mapping(context.run_config)
    run_federated_distillation(grid, config, make_aggregator(config))


def make_aggregator(config: RunConfig) -> Aggregator:
    """The aggregator the config asks for: SecAgg+ by default, plain when secagg=false."""
    return SecureAggregator(config) if config.secagg else PlainAggregator()


def resolve_out_dir(config: RunConfig) -> Path:
    """`config.out_dir`, or runs/<timestamp> under the current directory."""
    if config.out_dir:
        return Path(config.out_dir)
    return Path.cwd() / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_federated_distillation(grid: Grid, config: RunConfig, aggregator: Aggregator) -> Path:
    """The round loop. Returns the run directory."""
    wall_start = time.perf_counter()
    torch.set_num_threads(config.server_threads)  # the core count must not change the numerics
    results = RunDirectory(resolve_out_dir(config))
    results.write_config(config.to_dict())
    splits = load_server_data(config)
    check_query_size(config, len(splits.public_x))  # flwr run and deployments start here
    method = get_method(config.method)
    public_digest = public_hash(splits.public_x)
    device = resolve_device(config.device)
    student = Student(config, splits, device)
    registry = NodeRegistry(public_digest, splits.num_classes, config.round_timeout)
    log.info(
        "feddistill: %d public samples from %s (hash %s…, %s), %d test samples, student %s on %s; "
        "results → %s",
        len(splits.public_x),
        splits.public_source,
        public_digest[:12],
        "labelled" if splits.public_y is not None else "unlabelled",
        len(splits.test_x),
        config.student_model,
        device,
        results.path,
    )
    log.info(
        "feddistill: aggregation: %s; k, t and m are resolved per round for its cohort",
        describe_planned_aggregation(config, len(splits.public_x)),
    )
    first_round, previous = 1, None  # previous = (query indices, ensemble probs)
    if config.resume:
        first_round, previous = _resume(results, student)
    for round_number in range(first_round, config.rounds + 1):
        round_start = time.perf_counter()
        row: dict[str, Any] = {"round": round_number}
        try:
            plan = _plan_round(
                grid, config, splits, student, registry, public_digest, round_number, previous
            )
            aggregate = aggregator.collect(grid, plan)
            ensemble = method.combine(aggregate.weighted_sum, aggregate.total_weight, config)
            if not ensemble.kept.any():
                raise RoundFailed(f"the method kept no ensemble row ({_row_counts(ensemble)})")
        except (RoundFailed, ValueError) as error:
            log.error(
                "round %d/%d skipped (%s): %s",
                round_number,
                config.rounds,
                aggregation_mode(config),
                error,
            )
            row.update(status=f"failed: {error}", seconds=time.perf_counter() - round_start)
            _save_round(results, student, row, previous)
            continue
        query, probs = plan.query_indices[ensemble.kept], ensemble.probs[ensemble.kept]
        previous = (query, probs)  # (Q',), (Q', K): what the student and the digest use
        row.update(_distill_and_evaluate(student, splits, query, probs, aggregate, plan))
        row.update(_row_counts(ensemble))
        if config.dp_noise_multiplier > 0:
            row.update(_privacy_columns(config, plan, aggregate, round_number))
        if config.dp_mode == "record":  # every client counted in every round so far: a bound
            row["record_epsilon"] = epsilon_after_rounds(config, round_number)
        row["seconds"] = time.perf_counter() - round_start
        _save_round(results, student, row, previous)
        log.info(
            "round %d/%d: student acc %.4f nll %.3f ece %.3f | ensemble(public) acc %s | "
            "%d clients (%d failed) | %s | %.1fs",
            round_number,
            config.rounds,
            row["student_accuracy"],
            row["student_nll"],
            row["student_ece"],
            f"{row['ensemble_public_accuracy']:.4f}"
            if "ensemble_public_accuracy" in row
            else "n/a",
            row["clients"],
            row["clients_failed"],
            describe_aggregation(config, len(plan.cohort), len(plan.query_indices)),
            row["seconds"],
        )
    _finish(results, wall_start, config, student, splits, previous)
    return results.path


def _save_round(
    results: RunDirectory,
    student: Student,
    row: dict[str, Any],
    previous: tuple[np.ndarray, np.ndarray] | None,
) -> None:
    """Persist everything a resumed run needs, then the metrics table derived from it.

    The checkpoint (student, optimizer, round, previous ensemble, metrics rows) is one atomic
    file, so a crash leaves either the previous round's state or this round's, never a mix.
    """
    rows = [*results.rows, row]
    results.write_checkpoint(
        {
            **student.checkpoint(),
            "round": row["round"],
            "previous_indices": None if previous is None else previous[0],
            "previous_probs": None if previous is None else previous[1],
            "rows": rows,
        }
    )
    results.append_round(row)


def _resume(
    results: RunDirectory, student: Student
) -> tuple[int, tuple[np.ndarray, np.ndarray] | None]:
    """Restore the last completed round from the run directory; returns (next round, previous)."""
    checkpoint = results.read_checkpoint()
    if checkpoint is None:
        log.info("resume: no checkpoint in %s, starting at round 1", results.path)
        return 1, None
    student.restore(checkpoint)
    results.restore_rows(checkpoint["rows"])
    previous = None
    if checkpoint["previous_probs"] is not None:
        previous = (checkpoint["previous_indices"], checkpoint["previous_probs"])
    log.info("resume: continuing %s after round %d", results.path, checkpoint["round"])
    return int(checkpoint["round"]) + 1, previous


def _plan_round(
    grid: Grid,
    config: RunConfig,
    splits: ServerData,
    student: Student,
    registry: NodeRegistry,
    public_digest: str,
    round_number: int,
    previous: tuple[np.ndarray, np.ndarray] | None,
) -> RoundPlan:
    nodes = registry.refresh(grid)
    cohort = sample_cohort(nodes, config.fraction, config.min_clients, config.seed, round_number)
    return plan_for_cohort(config, splits, student, cohort, public_digest, round_number, previous)


def plan_for_cohort(
    config: RunConfig,
    splits: ServerData,
    student: Student,
    cohort: list[NodeInfo],
    public_digest: str,
    round_number: int,
    previous: tuple[np.ndarray, np.ndarray] | None,
) -> RoundPlan:
    """What a round asks of its cohort: the queries (`choose_queries`), the previous ensemble
    (Q', K) quantised for the digest, the wire width. The in-process engine plans with it too."""
    n_public = len(splits.public_x)
    digest = previous if config.digest_epochs else None
    return RoundPlan(
        round=round_number,
        cohort=cohort,
        query_indices=choose_queries(
            config, n_public, round_number, _student_view(config, student, splits, previous)
        ),
        n_public=n_public,
        num_classes=splits.num_classes,
        label_bits=config.label_bits,
        public_hash=public_digest,
        min_clients=config.min_clients,
        timeout=config.round_timeout,
        digest_indices=None if digest is None else digest[0],
        digest_counts=None if digest is None else digest_counts(digest[1], config, round_number),
        per_row_weights=get_method(config.method).per_row_weights,
    )


def _student_view(
    config: RunConfig,
    student: Student,
    splits: ServerData,
    previous: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray | None:
    """The student's (N, K) probabilities on the public set when informative query selection
    needs them (after the first distillation), else None."""
    if config.query_selection == "random" or not config.public_query_size or previous is None:
        return None
    return student.probabilities(splits.public_x)


def _row_counts(ensemble: Ensemble) -> dict[str, int]:
    """How many queried rows the method kept, and why the others were left out."""
    return {
        "rows_kept": int(ensemble.kept.sum()),
        "rows_low_weight": int(ensemble.low_weight.sum()),
        "rows_ambiguous": int(ensemble.ambiguous.sum()),
    }


def _distill_and_evaluate(
    student: Student,
    splits: ServerData,
    query: np.ndarray,
    ensemble: np.ndarray,
    aggregate: Aggregate,
    plan: RoundPlan,
) -> dict[str, Any]:
    """Distil the kept rows (Q',) with their ensemble (Q', K); evaluate; the round's columns."""
    public_y = None if splits.public_y is None else splits.public_y[query]
    labels = {node.node_id: node.label for node in plan.cohort}
    distill_start = time.perf_counter()
    loss = student.distill(plan.round, splits.public_x[query], ensemble, public_y)
    distill_seconds = time.perf_counter() - distill_start
    entropy = float(-np.mean(np.sum(ensemble * np.log(np.clip(ensemble, 1e-12, None)), axis=1)))
    return {
        "status": "ok",
        **student.evaluate(splits.test_x, splits.test_y),
        **ensemble_label_metrics(ensemble, public_y, student.config),
        "ensemble_entropy": entropy,
        "distill_loss": loss,
        "clients": len(aggregate.contributors),
        "clients_failed": len(aggregate.failed),
        "failures": "; ".join(
            f"{labels.get(node, node)}: {reason}" for node, reason in aggregate.failed.items()
        ),
        "bytes_up": aggregate.bytes_up,
        "bytes_down": aggregate.bytes_down,
        "aggregate_seconds": aggregate.seconds,
        "distill_seconds": distill_seconds,
    }


def ensemble_label_metrics(
    ensemble: np.ndarray, public_y: np.ndarray | None, config: RunConfig
) -> dict[str, float]:
    """Diagnostics only a labelled public set allows (the labels stay on the server): the
    ensemble's accuracy and calibration on its rows (Q', K) against their labels (Q',). An
    unlabelled public set has none: the columns are absent, never a made-up number."""
    if public_y is None:
        return {}
    return {
        "ensemble_public_accuracy": accuracy(ensemble, public_y),
        **ensemble_calibration(ensemble, public_y, config),
    }


def ensemble_calibration(
    ensemble: np.ndarray, public_y: np.ndarray, config: RunConfig
) -> dict[str, float]:
    """The ensemble's ECE on the public rows (Q', K) against their labels (Q',): as distilled
    (softened at the method's T) and read at T = 1 (`at_unit_temperature`, what a student that
    matched it exactly would predict at test time)."""
    temperature = get_method(config.method).temperature(config)
    return {
        "ensemble_public_ece": expected_calibration_error(ensemble, public_y),
        "ensemble_public_ece_t1": expected_calibration_error(
            at_unit_temperature(ensemble, temperature), public_y
        ),
    }


def _privacy_columns(
    config: RunConfig, plan: RoundPlan, aggregate: Aggregate, round_number: int
) -> dict[str, Any]:
    """ε(δ) after this round (every client counted in every round so far) and whether enough
    noise shares reached the sum for that ε to hold."""
    n_min = config.dp_min_clients or len(plan.cohort)
    noise_ok = len(aggregate.contributors) >= n_min
    if not noise_ok:
        log.warning(
            "round %d: only %d of n_min=%d noise shares reached the sum: the reported ε does "
            "not hold for this round",
            round_number,
            len(aggregate.contributors),
            n_min,
        )
    eps = epsilon(config.dp_noise_multiplier, round_number, config.dp_delta)
    return {"dp_epsilon": eps, "dp_noise_ok": noise_ok}


def _finish(
    results: RunDirectory,
    wall_start: float,
    config: RunConfig,
    student: Student,
    splits: ServerData,
    previous: tuple[np.ndarray, np.ndarray] | None,
) -> None:
    """Write summary.json (round counts, failures, final metrics), the accuracy plot and the
    final student's and last ensemble's reliability diagrams."""
    summary = {
        **summarise_rounds(results.rows),
        "wall_seconds": time.perf_counter() - wall_start,
        "out_dir": str(results.path),
    }
    if summary["rounds_completed"]:
        results.write_accuracy_plot(run_title(config.to_dict()))
        _write_reliability(results, config, student, splits, previous)
    results.write_summary(summary)
    if summary["rounds_failed"]:
        log.warning(
            "feddistill: %d of %d rounds failed: %s",
            summary["rounds_failed"],
            summary["rounds"],
            "; ".join(f"round {f['round']}: {f['reason']}" for f in summary["failed_rounds"]),
        )
    log.info("feddistill: finished; results in %s", results.path)


def _write_reliability(
    results: RunDirectory,
    config: RunConfig,
    student: Student,
    splits: ServerData,
    previous: tuple[np.ndarray, np.ndarray] | None,
) -> None:
    """reliability.png: the final student on the test set (raw and temperature-scaled) and
    the last round's ensemble on its public rows (as distilled, and read at T = 1)."""
    probs, scaled, temperatures = student.predictions(splits.test_x, splits.test_y)
    panels = {
        "student (test)": (probs, splits.test_y),
        f"student, temperature-scaled (T≈{np.mean(temperatures):.2f}, cross-fit)": (
            scaled,
            splits.test_y,
        ),
    }
    if previous is not None and splits.public_y is not None:
        temperature = get_method(config.method).temperature(config)
        public_y = splits.public_y[previous[0]]
        panels[f"ensemble (public), as distilled at T={temperature:g}"] = (previous[1], public_y)
        panels["ensemble (public), read at T=1"] = (
            at_unit_temperature(previous[1], temperature),
            public_y,
        )
    results.write_reliability_plot(panels)
