"""One client's round: refresh the private teacher and predict soft labels on the public set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from client.data_source import PrivateData
from common.config import RunConfig
from common.data import PublicData, ServerData
from common.dp_sgd import DpSgdSettings, track_dp_steps, train_dp_sgd
from common.methods import ClientView, get_method
from common.models import build_model
from common.protocol import Contribution
from common.training import distill, predict_probs, seeded_generator, train_supervised


@dataclass(frozen=True)
class RoundInput:
    """What the server asked for this round.

    Attributes
    ----------
    round : 1-based round number.
    query_indices : (Q,) int64 indices into the public set to predict on.
    digest_indices, digest_probs : (Q',) and (Q', K), the previous ensemble, or None.
    """

    round: int
    query_indices: np.ndarray
    digest_indices: np.ndarray | None = None
    digest_probs: np.ndarray | None = None


def teacher_name(config: RunConfig, client_index: int) -> str:
    """Teacher architecture of client `client_index`: the config list, round-robin."""
    names = config.teacher_model_list
    return names[client_index % len(names)]


def new_teacher(
    config: RunConfig, data: PublicData | ServerData, client_index: int
) -> torch.nn.Module:
    """A freshly initialised teacher for `data`'s input shape and K, seeded by (seed, client
    index); under dp_mode=record it carries its DP-SGD step count
    (`common.dp_sgd.track_dp_steps`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seeded_generator(config.seed, 7, client_index).initial_seed()))
        model = build_model(teacher_name(config, client_index), data.input_shape, data.num_classes)
    return track_dp_steps(model) if config.dp_mode == "record" else model


def train_on_private(
    model: torch.nn.Module,
    private: PrivateData,
    config: RunConfig,
    generator: torch.Generator,
    device: torch.device,
    proximal_mu: float = 0.0,
) -> float:
    """The clients' supervised recipe on private data: `local_epochs` of `local_optimizer` at
    `local_lr`, batches of `local_batch_size` drawn from `generator` (plus FedProx's proximal
    term when `proximal_mu` > 0). Returns the last epoch's mean cross-entropy."""
    return train_supervised(
        model,
        private.x,
        private.y,
        epochs=config.local_epochs,
        lr=config.local_lr,
        batch_size=config.local_batch_size,
        optimizer=config.local_optimizer,
        generator=generator,
        device=device,
        proximal_mu=proximal_mu,
    )


def train_on_private_dp(
    model: torch.nn.Module, private: PrivateData, config: RunConfig, device: torch.device
) -> dict[str, float]:
    """`local_epochs` of DP-SGD (`common.dp_sgd.train_dp_sgd`) with the run's optimizer and
    learning rate. Returns ``record_epsilon`` (ε(δ) per record over every step this teacher took,
    all rounds) and ``dp_sgd_steps`` (steps this round)."""
    report = train_dp_sgd(
        model,
        private.x,
        private.y,
        DpSgdSettings.from_config(config),
        epochs=config.local_epochs,
        lr=config.local_lr,
        optimizer=config.local_optimizer,
        device=device,
    )
    return {"record_epsilon": report.epsilon, "dp_sgd_steps": float(report.steps)}


def run_local_round(
    teacher: torch.nn.Module,
    config: RunConfig,
    public: PublicData,
    private: PrivateData,
    request: RoundInput,
    device: torch.device,
    fresh: bool = False,
) -> tuple[Contribution, dict[str, float]]:
    """One client round of the configured method (`common.methods`).

    Public warm-up (a fresh teacher, when the method has one and allow_public_labels=true),
    digest toward the previous ensemble (optional), train on private data, predict on the
    queried public samples at the method's temperature, then the method's per-row weights.
    Under dp_mode=record the private training is DP-SGD and the metrics are only its ε and
    steps: a loss or a count of private records would be released without DP.
    Returns the contribution (probs (Q, K), weight, row weights (Q,) or None) and local metrics.
    """
    method = get_method(config.method)
    temperature = method.temperature(config)
    generator = seeded_generator(config.seed, request.round, private.index)
    if fresh and method.warm_up is not None and config.allow_public_labels:
        public_y = public.labels("allow_public_labels=true (the method's public warm-up)")
        method.warm_up(teacher, public.x, public_y, config, generator, device)
    if config.digest_epochs and request.digest_probs is not None:
        distill(
            teacher,
            public.x[request.digest_indices],
            request.digest_probs,
            temperature=temperature,
            epochs=config.digest_epochs,
            lr=config.local_lr,
            batch_size=config.local_batch_size,
            generator=generator,
            device=device,
        )
    if config.dp_mode == "record":
        metrics = train_on_private_dp(teacher, private, config, device)
    else:
        train_loss = train_on_private(teacher, private, config, generator, device)
        metrics = {"train_loss": train_loss, "num_examples": float(len(private.y))}
    query_x = public.x[request.query_indices]
    probs = predict_probs(teacher, query_x, temperature, device)  # (Q, K)
    row_weights = None
    if method.row_weights is not None:
        view = ClientView(teacher, private.x, public.x, query_x, probs, generator, device)
        row_weights = method.row_weights(view, config)  # (Q,)
    weight = float(len(private.y)) if config.ensemble == "weighted" else 1.0
    if row_weights is not None:
        metrics["rows_shared"] = float(np.count_nonzero(row_weights))
    return Contribution(probs=probs, weight=weight, row_weights=row_weights), metrics
