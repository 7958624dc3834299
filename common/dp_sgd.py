"""Record-level differential privacy: DP-SGD teacher training (Opacus) and its ε per record.

With `dp_mode=record` every client trains its teacher with DP-SGD (Abadi et al., CCS 2016):
each step draws a Poisson sample of the private records at rate q, clips every per-sample
gradient to L2 norm C, adds N(0, σ²C²) to their sum and divides by the expected batch size q·N.
Opacus computes the per-sample gradients (`GradSampleModule`), clips and noises them
(`DPOptimizer`) and accounts for ε (`PRVAccountant`, Gopi, Lee & Wutschitz 2021; its upper
bound). Everything a client reports afterwards — soft labels on public rows, a digest toward
the public ensemble — is post-processing of the DP teacher.

Accounting
----------
The sample rate q is a run-config key, not batch_size / N: each round a client takes
``steps_per_round(q, local_epochs)`` steps at the same (q, σ), so ε depends on the config and on
the number of rounds the client took part in only, never on its private sample count. The server
therefore reports ε for every round without learning anything from the clients, and all clients
of equal participation have equal ε. The teacher persists across rounds (it continues training),
so ε composes over every DP-SGD step a record was exposed to, in every round; the teacher keeps
its own step count in the buffer `DP_STEPS_BUFFER`, saved with its weights.

Secrecy of the randomness
-------------------------
The Poisson sampling and the gradient noise draw from OS entropy, never from the run seed: the
server knows the seed, and a sample it can predict gives no amplification, noise it can predict
no privacy. Runs with `dp_mode=record` are therefore not bit-reproducible. torch's generator is
not a cryptographic PRG (Opacus' `secure_mode` needs torchcsprng); the guarantee assumes its
state is not guessable from outputs, as Opacus' default does.
"""

from __future__ import annotations

import math
import secrets
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.models import build_model
from common.training import _make_optimizer

if TYPE_CHECKING:
    from common.config import RunConfig

DP_STEPS_BUFFER = "dp_sgd_steps"

# Layer types do not depend on the input size; each family is built at one shape of its rank.
_EXAMPLE_SHAPES = ((40,), (3, 32, 32))


@dataclass(frozen=True)
class DpSgdSettings:
    """One client's DP-SGD recipe (from the run config).

    Attributes
    ----------
    noise_multiplier : σ > 0: noise std on the summed clipped gradients, in units of `clip`.
    clip : C > 0: per-sample gradient L2 norm bound.
    sample_rate : q in (0, 1]: Poisson sampling probability of each record per step.
    delta : δ in (0, 1) at which ε is reported.
    """

    noise_multiplier: float
    clip: float
    sample_rate: float
    delta: float

    @classmethod
    def from_config(cls, config: RunConfig) -> DpSgdSettings:
        """The `dp_record_*` keys and `dp_delta` of a run config."""
        return cls(
            noise_multiplier=config.dp_record_noise_multiplier,
            clip=config.dp_record_clip,
            sample_rate=config.dp_record_sample_rate,
            delta=config.dp_delta,
        )


@dataclass(frozen=True)
class DpSgdReport:
    """What one DP-SGD training call did.

    Attributes
    ----------
    steps : DP-SGD steps taken in this call.
    total_steps : steps the model has taken over its whole life (all rounds).
    epsilon : ε(δ) per private record after `total_steps`.
    """

    steps: int
    total_steps: int
    epsilon: float


def unsupported_layers(model_name: str) -> list[str]:
    """Opacus' objections to training model `model_name` with DP-SGD (empty = supported).

    Uses `opacus.validators.ModuleValidator.validate` on the model built at an example input
    shape of its family (BatchNorm, for one, mixes samples of a batch and is refused).

    Returns
    -------
    One line per unsupported module, e.g. ``"BatchNorm2d: BatchNorm cannot support …"``.
    """
    from opacus.validators import ModuleValidator  # local: only record-level DP needs Opacus

    model = _build_example(model_name)
    errors = ModuleValidator.validate(model, strict=False)
    # Opacus' messages run to a paragraph; the first sentence names the problem.
    return [f"{type(error).__name__}: {str(error).split('. ')[0]}" for error in errors]


def check_teacher_models(model_names: list[str]) -> None:
    """Raise ValueError naming every teacher model DP-SGD cannot train, and why."""
    refused = {name: unsupported_layers(name) for name in dict.fromkeys(model_names)}
    refused = {name: errors for name, errors in refused.items() if errors}
    if refused:
        details = "; ".join(f"{name}: {errors[0]}" for name, errors in refused.items())
        raise ValueError(
            f"dp_mode='record' cannot train teacher model(s) {sorted(refused)} with DP-SGD "
            f"({details}); pick models without BatchNorm, e.g. mlp-*, cnn1d-*, cnn2d-*"
        )


def track_dp_steps(model: nn.Module) -> nn.Module:
    """Give `model` the int64 buffer `DP_STEPS_BUFFER` (0) unless it has it; returns `model`.

    A teacher built for record-level DP carries it from the start, so a state saved after a
    round (weights and step count together) loads into a freshly built teacher."""
    if DP_STEPS_BUFFER not in dict(model.named_buffers()):
        model.register_buffer(DP_STEPS_BUFFER, torch.zeros((), dtype=torch.int64))
    return model


def steps_per_round(sample_rate: float, epochs: int) -> int:
    """DP-SGD steps a client takes per round: `epochs` × ceil(1/q) (one epoch = each record
    sampled once in expectation)."""
    return epochs * math.ceil(1.0 / sample_rate - 1e-9)


def record_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε(δ) per private record after `steps` Poisson-subsampled Gaussian DP-SGD steps.

    Parameters
    ----------
    noise_multiplier : σ > 0 of every step.
    sample_rate : q in (0, 1] of every step.
    steps : number of steps composed, >= 0 (0 gives ε = 0).
    delta : δ in (0, 1).

    Returns
    -------
    Opacus' PRV accountant's upper bound on ε (add/remove one record adjacency). Where the
    PRV discretisation cannot represent the privacy loss (a vanishing σ gives a grid too large
    to allocate) Opacus' RDP accountant answers instead: looser, still an upper bound.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if steps == 0:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant  # local: only record-level DP

    accountants = (PRVAccountant(), RDPAccountant())
    for accountant in accountants:
        for _ in range(steps):  # consecutive equal steps are merged into one history entry
            accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    try:
        return float(accountants[0].get_epsilon(delta))
    except ValueError:  # numpy: "Maximum allowed size exceeded" for the PRV grid
        return float(accountants[1].get_epsilon(delta))


def epsilon_after_rounds(config: RunConfig, rounds: int) -> float:
    """ε(δ) per record of a client that took part in `rounds` rounds of this run config.

    What the server reports each round: it knows the config and the cohorts, never the
    clients' sample counts, which the accounting does not need (see the module docstring)."""
    settings = DpSgdSettings.from_config(config)
    steps = rounds * steps_per_round(settings.sample_rate, config.local_epochs)
    return record_epsilon(settings.noise_multiplier, settings.sample_rate, steps, settings.delta)


def train_dp_sgd(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: DpSgdSettings,
    *,
    epochs: int,
    lr: float,
    optimizer: str,
    device: torch.device,
) -> DpSgdReport:
    """Train `model` on (N, ...) inputs `x` and (N,) labels `y` with DP-SGD for `epochs`.

    Takes `steps_per_round(q, epochs)` steps; each samples every record with probability q
    (an empty sample is a noise-only step, as the analysis requires), clips per-sample
    gradients of the cross-entropy to `settings.clip`, adds Gaussian noise and steps the
    wrapped `optimizer` ("sgd" or "adam", the clients' usual recipe) at `lr`. The model's
    `DP_STEPS_BUFFER` (`track_dp_steps`) counts the steps across calls.

    Returns
    -------
    Steps of this call, the model's total steps and ε(δ) after them.
    """
    from opacus import GradSampleModule  # local: only record-level DP needs Opacus
    from opacus.optimizers import DPOptimizer

    track_dp_steps(model)
    model.to(device).train()
    inputs = torch.as_tensor(x, device=device)
    targets = torch.as_tensor(y, device=device)
    n_records = len(inputs)
    sampling = torch.Generator().manual_seed(secrets.randbits(63))
    noise = torch.Generator(device=device).manual_seed(secrets.randbits(63))
    per_sample = GradSampleModule(model, loss_reduction="sum")
    dp_optimizer = DPOptimizer(
        _make_optimizer(model, optimizer, lr),
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.clip,
        expected_batch_size=settings.sample_rate * n_records,
        loss_reduction="mean",  # divides the noised sum by the expected batch size q·N
        generator=noise,
    )
    steps = steps_per_round(settings.sample_rate, epochs)
    try:
        with warnings.catch_warnings():
            # Opacus' backward hooks fire on inputs without grad; torch warns each time.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(steps):
                drawn = torch.rand(n_records, generator=sampling) < settings.sample_rate
                batch = torch.nonzero(drawn).squeeze(1).to(device)  # (B,), B ~ Binomial(N, q)
                logits = per_sample(inputs[batch])  # (B, K)
                loss = F.cross_entropy(logits, targets[batch], reduction="sum")
                dp_optimizer.zero_grad()
                loss.backward()
                dp_optimizer.step()
    finally:
        per_sample.cleanup()  # removes the hooks and per-sample gradients; `model` stays plain
    total = getattr(model, DP_STEPS_BUFFER)
    total += steps
    eps = record_epsilon(
        settings.noise_multiplier, settings.sample_rate, int(total), settings.delta
    )
    return DpSgdReport(steps=steps, total_steps=int(total), epsilon=eps)


def _build_example(model_name: str) -> nn.Module:
    for shape in _EXAMPLE_SHAPES:
        try:
            return build_model(model_name, shape, 10)
        except ValueError:
            continue
    raise ValueError(f"model {model_name!r} builds at none of the example shapes {_EXAMPLE_SHAPES}")
