"""Weight-averaging baselines: Flower's own `FedAvg` strategy (Message API) training the student
architecture, or Flower's `FedProx` when `proximal_mu` > 0 (Li et al., MLSys 2020).

It runs on the same simulated nodes, partitions and run config as federated distillation:
each client trains the global student on its private partition for `local_epochs` at
`local_lr` (the FedAvg hyperparameters the benchmarks tune), the strategy averages the models
weighted by example counts, and the server evaluates the global model on the test set after
every round. `metrics.csv` and `summary.json` use the column names of our own ServerApp.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from client.data_source import PrivateData, load_private_data
from client.teacher import train_on_private
from common.config import RunConfig
from common.data import DatasetSplits, load_splits
from common.metrics import accuracy, expected_calibration_error, nll
from common.models import build_model
from common.protocol import payload_bytes
from common.training import predict_probs, resolve_device, seeded_generator
from server.results import RunDirectory

ARRAYS_KEY = "arrays"
METRICS_KEY = "metrics"
WEIGHT_KEY = "num-examples"
STUDENT_SEED_TAG = 11  # server.student.Student seeds its model with (seed, 11): same init
FEDAVG_SEED_TAG = 5

server_app = ServerApp()
client_app = ClientApp()


def seeded_model(name: str, splits: DatasetSplits, *seed_parts: int) -> torch.nn.Module:
    """Model `name` initialised from a seed that depends only on `seed_parts`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seeded_generator(*seed_parts).initial_seed()))
        return build_model(name, splits.input_shape, splits.num_classes)


def initial_student(config: RunConfig, splits: DatasetSplits) -> torch.nn.Module:
    """The student architecture with the same initial weights as our server's student."""
    return seeded_model(config.student_model, splits, config.seed, STUDENT_SEED_TAG)


def local_train(
    model: torch.nn.Module,
    config: RunConfig,
    private: PrivateData,
    round_number: int,
    device: torch.device,
    proximal_mu: float = 0.0,
) -> float:
    """One FedAvg (FedProx when `proximal_mu` > 0) client update: `local_epochs` of
    `local_optimizer` at `local_lr` from the received model; the loss."""
    generator = seeded_generator(config.seed, round_number, private.index, FEDAVG_SEED_TAG)
    return train_on_private(model, private, config, generator, device, proximal_mu)


def train_reply_content(model: torch.nn.Module, num_examples: int, loss: float) -> RecordDict:
    """What a client uploads per round: its model (float32) and the FedAvg weight."""
    return RecordDict(
        {
            ARRAYS_KEY: ArrayRecord(torch_state_dict=cpu_state(model)),
            METRICS_KEY: MetricRecord({WEIGHT_KEY: num_examples, "train_loss": loss}),
        }
    )


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict, detached and on the CPU."""
    return {name: value.detach().cpu() for name, value in model.state_dict().items()}


def evaluate_model(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Accuracy, NLL and ECE of the model at temperature 1, as `student_*` columns."""
    probs = predict_probs(model, x, 1.0, device)
    return {
        "student_accuracy": accuracy(probs, y),
        "student_nll": nll(probs, y),
        "student_ece": expected_calibration_error(probs, y),
    }


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's partition and send it back."""
    config = RunConfig.from_mapping(context.run_config)
    torch.set_num_threads(config.client_threads)
    splits = load_splits(config)
    private = load_private_data(config, context.node_config)
    device = resolve_device(config.device)
    model = build_model(config.student_model, splits.input_shape, splits.num_classes)
    model.load_state_dict(msg.content[ARRAYS_KEY].to_torch_state_dict())
    round_number = int(msg.content["config"]["server-round"])
    proximal_mu = float(msg.content["config"].get("proximal-mu", 0.0))  # set by Flower's FedProx
    loss = local_train(model, config, private, round_number, device, proximal_mu)
    return Message(train_reply_content(model, len(private.y), loss), reply_to=msg)


class CountingGrid:
    """A Grid that counts the payload bytes and replies of every send_and_receive."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.bytes_up = 0
        self.bytes_down = 0
        self.replies = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Forward to the wrapped grid, counting bytes both ways."""
        messages = list(messages)
        self.bytes_down += sum(payload_bytes(message.content) for message in messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if not reply.has_error():
                self.bytes_up += payload_bytes(reply.content)
                self.replies += 1
        return replies


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `config.rounds` FedAvg rounds, evaluating the global model after each."""
    wall_start = time.perf_counter()
    config = RunConfig.from_mapping(context.run_config)
    results = RunDirectory(Path(config.out_dir))
    results.write_config(config.to_dict())
    splits = load_splits(config)
    device = resolve_device(config.device)
    model = initial_student(config, splits).to(device)
    counting = CountingGrid(grid)
    last = {"time": time.perf_counter(), "up": 0, "down": 0, "replies": 0}

    def evaluate(round_number: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = evaluate_model(model, splits.test_x, splits.test_y, device)
        now = time.perf_counter()
        if round_number > 0:
            results.append_round(
                {
                    "round": round_number,
                    "status": "ok",
                    **metrics,
                    "clients": counting.replies - last["replies"],
                    "bytes_up": counting.bytes_up - last["up"],
                    "bytes_down": counting.bytes_down - last["down"],
                    "seconds": now - last["time"],
                }
            )
        last.update(
            time=now, up=counting.bytes_up, down=counting.bytes_down, replies=counting.replies
        )
        return MetricRecord(metrics)

    sampling = {
        "fraction_train": config.fraction,
        "fraction_evaluate": 0.0,
        "min_train_nodes": config.min_clients,
        "min_available_nodes": config.num_clients,
        "weighted_by_key": WEIGHT_KEY,
    }
    strategy = (
        FedProx(**sampling, proximal_mu=config.proximal_mu)
        if config.proximal_mu > 0
        else FedAvg(**sampling)
    )
    strategy.start(
        grid=counting,  # type: ignore[arg-type]  # duck-typed Grid
        initial_arrays=ArrayRecord(torch_state_dict=cpu_state(model)),
        num_rounds=config.rounds,
        timeout=config.round_timeout,
        train_config=ConfigRecord({}),
        evaluate_fn=evaluate,
    )
    final = results.rows[-1]
    results.write_summary(
        {
            "rounds": config.rounds,
            "rounds_completed": len(results.rows),
            "wall_seconds": time.perf_counter() - wall_start,
            "out_dir": str(results.path),
            **{key: final[key] for key in ("student_accuracy", "student_nll", "student_ece")},
        }
    )


def fedavg_upload_bytes(config: RunConfig, splits: DatasetSplits) -> int:
    """Bytes one FedAvg client uploads per round (model + weight), counted as in the run."""
    return payload_bytes(train_reply_content(initial_student(config, splits), 1, 0.0))
