"""Training loops shared by clients (teachers) and the server (student); no Flower here."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.kd import STUDENT_LOSSES, soft_labels


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seeded_generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator whose seed depends only on `seed_parts` (e.g. seed, round, client)."""
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed % (2**63))


def _make_optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return torch.optim.Adam(model.parameters(), lr=lr)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


def train_supervised(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    generator: torch.Generator,
    device: torch.device,
    proximal_mu: float = 0.0,
) -> float:
    """Cross-entropy training on (N, ...) inputs and (N,) labels; returns the last epoch's loss.

    `proximal_mu` > 0 adds FedProx's term μ/2 · ‖w − w₀‖² (Li et al., MLSys 2020), w₀ being the
    weights the call started from (the global model a FedProx client received).
    """
    model.to(device).train()
    opt = _make_optimizer(model, optimizer, lr)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    inputs = torch.as_tensor(x, device=device)
    targets = torch.as_tensor(y, device=device)
    epoch_loss = float("nan")
    for _ in range(epochs):
        total = 0.0
        for idx in _batches(len(inputs), batch_size, generator):
            idx = idx.to(device)
            loss = F.cross_entropy(model(inputs[idx]), targets[idx])
            if anchor:
                pairs = zip(model.parameters(), anchor, strict=True)
                drift = sum(((p - p0) ** 2).sum() for p, p0 in pairs)
                loss = loss + 0.5 * proximal_mu * drift
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        epoch_loss = total / len(inputs)
    return epoch_loss


def distill(
    model: nn.Module,
    x: np.ndarray,
    teacher_probs: np.ndarray,
    *,
    temperature: float,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    hard_labels: np.ndarray | None = None,
    hard_label_weight: float = 0.0,
    student_loss: str = "kd",
) -> float:
    """Distil `teacher_probs` (N, K) on inputs x (N, ...) into `model`.

    `student_loss` names the objective in `common.kd.STUDENT_LOSSES` (`kd_loss`, or `kd+rkd`
    adding the relational terms on each batch's outputs).
    `hard_labels`/`hard_label_weight` add cross-entropy on true labels (ablation only).
    Pass `optimizer` to keep its state across calls (the server's student does).
    Returns the last epoch's mean loss.
    """
    if student_loss not in STUDENT_LOSSES:
        raise ValueError(
            f"student_loss must be one of {tuple(STUDENT_LOSSES)}, got {student_loss!r}"
        )
    objective = STUDENT_LOSSES[student_loss]
    model.to(device).train()
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    inputs = torch.as_tensor(x, device=device)
    targets = torch.as_tensor(teacher_probs, dtype=torch.float32, device=device)
    labels = None if hard_labels is None else torch.as_tensor(hard_labels, device=device)
    epoch_loss = float("nan")
    for _ in range(epochs):
        total = 0.0
        for idx in _batches(len(inputs), batch_size, generator):
            idx = idx.to(device)
            logits = model(inputs[idx])  # (B, K)
            loss = objective(logits, targets[idx], temperature)
            if labels is not None and hard_label_weight > 0:
                loss = loss + hard_label_weight * F.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        epoch_loss = total / len(inputs)
    return epoch_loss


@torch.no_grad()
def predict_probs(
    model: nn.Module, x: np.ndarray, temperature: float, device: torch.device, batch: int = 1024
) -> np.ndarray:
    """softmax(model(x) / T) as float32 (N, K), evaluated in batches in eval mode."""
    model.to(device).eval()
    inputs = torch.as_tensor(x)
    out = [
        soft_labels(model(inputs[i : i + batch].to(device)), temperature).cpu()
        for i in range(0, len(inputs), batch)
    ]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: np.ndarray, device: torch.device, batch: int = 1024
) -> np.ndarray:
    """model(x) as float32 (N, K) logits, evaluated in batches in eval mode."""
    model.to(device).eval()
    inputs = torch.as_tensor(x)
    out = [model(inputs[i : i + batch].to(device)).cpu() for i in range(0, len(inputs), batch)]
    return torch.cat(out).numpy().astype(np.float32)
