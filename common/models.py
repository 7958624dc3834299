"""Teacher and student model families; they know nothing about Flower.

Every model maps a batch of inputs (B, *input_shape) to logits (B, K).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

# name -> (family, width)
_SIZES = {
    "mlp-s": ("mlp", 64),
    "mlp-m": ("mlp", 256),
    "mlp-l": ("mlp", 512),
    "mlp-xl": ("mlp", 1024),  # 1.09 M parameters on MNIST-1D: the large-model comm case
    "cnn1d-s": ("cnn1d", 16),
    "cnn1d-m": ("cnn1d", 32),
    "cnn1d-l": ("cnn1d", 64),
    "cnn2d-s": ("cnn2d", 16),
    "cnn2d-m": ("cnn2d", 32),
    "resnet8": ("resnet8", 16),
    "resnet8-w": ("resnet8", 32),
}
MODEL_NAMES = tuple(_SIZES)


class MLP(nn.Module):
    """Two hidden layers of `width` units on flattened inputs."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, K)


class CNN1D(nn.Module):
    """Three 1-D conv layers with global pooling, for signals of shape (L,) or (C, L)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        channels = 1 if len(input_shape) == 1 else input_shape[0]
        self.features = nn.Sequential(
            nn.Conv1d(channels, width, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=3, padding=1, stride=2),
            nn.ReLU(),
        )
        length = input_shape[-1]
        for _ in range(2):
            length = (length + 1) // 2
        self.head = nn.Linear(width * length, num_classes)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)  # (B, L) -> (B, 1, L)
        h = self.features(x)  # (B, width, L/4)
        return self.head(h.flatten(1))  # (B, K)


class CNN2D(nn.Module):
    """Two conv blocks with max-pooling, for small images (C, H, W)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        channels = input_shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, K)


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 (He et al. 2016, CIFAR variant): a stem and three stages of one basic block."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.stages = nn.Sequential(
            _BasicBlock(width, width, 1),
            _BasicBlock(width, 2 * width, 2),
            _BasicBlock(2 * width, 4 * width, 2),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))  # (B, 4w, H/4, W/4)
        return self.head(h.mean(dim=(2, 3)))  # (B, K)


_FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn1d": CNN1D,
    "cnn2d": CNN2D,
    "resnet8": ResNet8,
}
# family -> allowed number of per-sample input dimensions
_INPUT_RANKS = {"mlp": (1, 2, 3), "cnn1d": (1, 2), "cnn2d": (3,), "resnet8": (3,)}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate model `name` for samples of `input_shape` and `num_classes` outputs."""
    if name not in _SIZES:
        raise ValueError(f"unknown model {name!r}; allowed: {MODEL_NAMES}")
    family, width = _SIZES[name]
    if len(input_shape) not in _INPUT_RANKS[family]:
        raise ValueError(
            f"model {name!r} needs samples of rank {_INPUT_RANKS[family]}, "
            f"got input shape {input_shape}; pick e.g. mlp-m for flat features"
        )
    return _FAMILIES[family](input_shape, num_classes, width)
