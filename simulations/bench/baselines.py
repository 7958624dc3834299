"""Reference methods on the same data, partitions and seeds as federated distillation.

- centralised: one model trained on the pooled private data (an upper bound);
- local-only: each client's teacher trained on its own partition, never communicating;
- hard-label student: the student trained on the public inputs with their true labels
  ("no dark knowledge");
- FedAvg of the student: an in-process loop with the same client update and the same weighted
  average as Flower's `FedAvg` (to pick FedAvg's learning rate and local epochs on a validation
  set, and for `quality`'s in-process engine); the Flower run is `simulations.bench.fedavg_app`.

Epoch budgets follow the federated run: supervised models get `local_epochs × rounds` epochs
(what a client spends on its data over a run), the hard-label student gets
`distill_epochs × rounds` epochs of the student's own recipe.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from client.data_source import PrivateData
from client.teacher import new_teacher, train_on_private
from common.config import RunConfig
from common.data import DatasetSplits, partition_indices
from common.files import atomic_write_bytes
from common.methods import get_method
from common.training import predict_probs, seeded_generator, train_supervised
from server.cohort import NodeInfo, sample_cohort
from server.student import Student
from simulations.bench.fedavg_app import (
    cpu_state,
    evaluate_model,
    initial_student,
    local_train,
    seeded_model,
)
from simulations.bench.suite import Bench

CENTRAL_SEED_TAG = 21
HARD_LABEL_SEED_TAG = 23


def client_data(config: RunConfig, splits: DatasetSplits) -> list[PrivateData]:
    """Every client's partition, exactly as simulated node `partition-id = i` loads it."""
    parts = partition_indices(splits.private_y, config)
    return [
        PrivateData(
            x=splits.private_x[idx], y=splits.private_y[idx], label=f"partition-{i}", index=i
        )
        for i, idx in enumerate(parts)
    ]


def train_on_pooled(
    model: torch.nn.Module, config: RunConfig, splits: DatasetSplits, device: torch.device
) -> None:
    """The clients' supervised recipe on the pooled private data for `local_epochs × rounds`
    epochs (what a client spends over a run), batches seeded apart from every client's."""
    train_supervised(
        model,
        splits.private_x,
        splits.private_y,
        epochs=config.local_epochs * config.rounds,
        lr=config.local_lr,
        batch_size=config.local_batch_size,
        optimizer=config.local_optimizer,
        generator=seeded_generator(config.seed, CENTRAL_SEED_TAG),
        device=device,
    )


def centralised(
    config: RunConfig, splits: DatasetSplits, model_name: str, device: torch.device
) -> dict[str, float]:
    """`model_name` trained on the pooled private data; test metrics and seconds.

    The student architecture starts from the federated student's initial weights.
    """
    start = time.perf_counter()
    if model_name == config.student_model:
        model = initial_student(config, splits)
    else:
        model = seeded_model(model_name, splits, config.seed, CENTRAL_SEED_TAG)
    train_on_pooled(model, config, splits, device)
    metrics = evaluate_model(model, splits.test_x, splits.test_y, device)
    return {**metrics, "seconds": time.perf_counter() - start}


def oracle_teacher_student(
    config: RunConfig, splits: DatasetSplits, device: torch.device
) -> dict[str, float]:
    """The ceiling of FD on this public set: one teacher of the first teacher architecture
    trained on the pooled private data (as `centralised`), its soft labels on every public input
    at the method's temperature distilled into the federated student's initial weights with the
    federated student's recipe and budget (`rounds` calls of `distill_epochs`). Test metrics and
    seconds."""
    start = time.perf_counter()
    teacher = seeded_model(config.teacher_model_list[0], splits, config.seed, CENTRAL_SEED_TAG)
    train_on_pooled(teacher, config, splits, device)
    temperature = get_method(config.method).temperature(config)
    probs = predict_probs(teacher, splits.public_x, temperature, device)  # (P, K)
    student = Student(config, splits, device)
    for round_number in range(1, config.rounds + 1):
        student.distill(round_number, splits.public_x, probs)
    return {
        **student.evaluate(splits.test_x, splits.test_y),
        "seconds": time.perf_counter() - start,
    }


def local_only(config: RunConfig, splits: DatasetSplits, device: torch.device) -> pd.DataFrame:
    """Each client's teacher after `rounds` rounds of local training and no communication.

    Same initial weights, per-round seeds and optimizer restarts as a federated client without
    the digest step. Returns one row per client: test metrics and seconds.
    """
    rows = []
    for private in client_data(config, splits):
        start = time.perf_counter()
        teacher = new_teacher(config, splits, private.index)
        for round_number in range(1, config.rounds + 1):
            generator = seeded_generator(config.seed, round_number, private.index)
            train_on_private(teacher, private, config, generator, device)
        metrics = evaluate_model(teacher, splits.test_x, splits.test_y, device)
        rows.append({"client": private.index, **metrics, "seconds": time.perf_counter() - start})
    return pd.DataFrame(rows)


def hard_label_student(
    config: RunConfig, splits: DatasetSplits, device: torch.device
) -> dict[str, float]:
    """The student trained with cross-entropy on the public inputs and their true labels."""
    start = time.perf_counter()
    model = initial_student(config, splits)
    train_supervised(
        model,
        splits.public_x,
        splits.public.labels("the hard-label student"),
        epochs=config.distill_epochs * config.rounds,
        lr=config.distill_lr,
        batch_size=config.distill_batch_size,
        optimizer="adam",  # the student's optimizer in distillation
        generator=seeded_generator(config.seed, HARD_LABEL_SEED_TAG),
        device=device,
    )
    metrics = evaluate_model(model, splits.test_x, splits.test_y, device)
    return {**metrics, "seconds": time.perf_counter() - start}


def fedavg_in_process(
    config: RunConfig,
    splits: DatasetSplits,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    device: torch.device,
) -> list[dict[str, float]]:
    """FedAvg of the student for `config.rounds` rounds in one process.

    Returns the `student_accuracy`, `student_nll` and `student_ece` on (eval_x, eval_y) after
    each round.

    Same client update (`fedavg_app.local_train`) and the same float32 weighted average as
    Flower's `FedAvg`; the cohort is drawn with our seeded sampler.
    """
    clients = client_data(config, splits)
    nodes = [NodeInfo(node_id=p.index, index=p.index, label=p.label) for p in clients]
    model = initial_student(config, splits)
    # Copies: CPU state tensors share memory with the parameters that training updates.
    global_state = {name: value.numpy().copy() for name, value in cpu_state(model).items()}
    metrics = []
    server_threads = torch.get_num_threads()
    for round_number in range(1, config.rounds + 1):
        cohort = sample_cohort(
            nodes, config.fraction, config.min_clients, config.seed, round_number
        )
        total = sum(len(clients[node.index].y) for node in cohort)
        new_state: dict[str, np.ndarray] = {}
        torch.set_num_threads(config.client_threads)  # as the ClientApp trains
        for node in cohort:
            private = clients[node.index]
            model.load_state_dict({k: torch.from_numpy(v) for k, v in global_state.items()})
            local_train(model, config, private, round_number, device, config.proximal_mu)
            factor = len(private.y) / total
            for name, value in cpu_state(model).items():
                scaled = value.numpy() * factor
                new_state[name] = scaled if name not in new_state else new_state[name] + scaled
        torch.set_num_threads(server_threads)
        global_state = new_state
        model.load_state_dict({k: torch.from_numpy(v) for k, v in global_state.items()})
        metrics.append(evaluate_model(model, eval_x, eval_y, device))
    return metrics


def tuned_fedavg(
    bench: Bench,
    config: RunConfig,
    splits: DatasetSplits,
    device: torch.device,
) -> dict[str, Any]:
    """FedAvg's learning rate and local epochs, picked on the public set's labels.

    Grid: knobs `fedavg_lrs` × `fedavg_epochs`, each run for `config.rounds` rounds in process;
    the pick maximises accuracy on the public set after the last round (FedAvg never trains on
    the public set, and the test set stays untouched). Cached in `<out>/tuning/`.

    Returns
    -------
    {'local_lr', 'local_epochs', 'grid': [{'local_lr', 'local_epochs', 'val_accuracy'}, …]}
    """
    points = [
        {"local_lr": lr, "local_epochs": epochs}
        for lr, epochs in itertools.product(bench.knobs["fedavg_lrs"], bench.knobs["fedavg_epochs"])
    ]
    return _pick_on_public_labels(bench, config, splits, device, "fedavg", points)


def tuned_fedprox(
    bench: Bench,
    config: RunConfig,
    splits: DatasetSplits,
    device: torch.device,
) -> dict[str, Any]:
    """FedProx's μ (knob `fedprox_mus`) picked the same way, at FedAvg's picked learning rate and
    local epochs (pass them in `config`). Returns {'proximal_mu', 'grid': [...]}."""
    points = [{"proximal_mu": mu} for mu in bench.knobs["fedprox_mus"]]
    return _pick_on_public_labels(bench, config, splits, device, "fedprox", points)


def _pick_on_public_labels(
    bench: Bench,
    config: RunConfig,
    splits: DatasetSplits,
    device: torch.device,
    name: str,
    points: list[dict[str, Any]],
) -> dict[str, Any]:
    """Run `fedavg_in_process` at every grid point (config changes); keep the one with the best
    public-set accuracy after the last round (first of equals wins). Cached in `<out>/tuning/`."""
    key = config.replace(out_dir="").to_dict()
    digest = _digest([key, points])
    path = bench.root / "tuning" / f"{name}-a{config.dirichlet_alpha}-s{config.seed}-{digest}.json"
    if path.exists():
        return json.loads(path.read_text())
    grid = []
    for point in points:
        bench.step(f"  {name} grid point {point} (validation)")
        curve = fedavg_in_process(
            config.replace(**point),
            splits,
            splits.public_x,
            splits.public.labels("tuning on public labels"),
            device,
        )
        grid.append({**point, "val_accuracy": curve[-1]["student_accuracy"]})
    best = max(grid, key=lambda row: row["val_accuracy"])
    chosen = {**{k: v for k, v in best.items() if k != "val_accuracy"}, "grid": grid}
    atomic_write_bytes(path, json.dumps(chosen, indent=2).encode())
    return chosen


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]
