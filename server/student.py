"""The global student: distillation from the ensemble teacher and evaluation on the test set."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from common.config import RunConfig
from common.data import DatasetSplits
from common.kd import soft_labels
from common.methods import get_method
from common.metrics import (
    accuracy,
    cross_fitted_temperature_scaling,
    expected_calibration_error,
    nll,
)
from common.models import build_model
from common.training import distill, predict_logits, predict_probs, seeded_generator


class Student:
    """A student model with an optimizer whose state persists across rounds."""

    def __init__(self, config: RunConfig, splits: DatasetSplits, device: torch.device) -> None:
        self.config = config
        self.device = device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeded_generator(config.seed, 11).initial_seed()))
            self.model = build_model(config.student_model, splits.input_shape, splits.num_classes)
        self.model.to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.distill_lr)

    def distill(
        self,
        round_number: int,
        public_x: np.ndarray,
        ensemble_probs: np.ndarray,
        public_y: np.ndarray | None = None,
    ) -> float:
        """Distil the (Q, K) ensemble on the queried public inputs (Q, ...); returns the loss.

        `public_y` is used only when the config enables the hard-label ablation.
        """
        use_labels = self.config.hard_label_weight > 0 and public_y is not None
        return distill(
            self.model,
            public_x,
            ensemble_probs.astype(np.float32),
            temperature=get_method(self.config.method).temperature(self.config),
            epochs=self.config.distill_epochs,
            lr=self.config.distill_lr,
            batch_size=self.config.distill_batch_size,
            generator=seeded_generator(self.config.seed, round_number, 3),
            device=self.device,
            optimizer=self.optimizer,
            hard_labels=public_y if use_labels else None,
            hard_label_weight=self.config.hard_label_weight,
            student_loss=self.config.student_loss,
        )

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Accuracy, NLL and ECE (15 bins) at temperature 1 on (N, ...) inputs, (N,) labels,
        and the post-hoc baseline: ECE after temperature scaling fitted on the other half of
        the same set (`student_ece_ts`, 2-fold cross-fit) and the mean fitted T."""
        probs, scaled, temperatures = self.predictions(x, y)
        return {
            "student_accuracy": accuracy(probs, y),
            "student_nll": nll(probs, y),
            "student_ece": expected_calibration_error(probs, y),
            "student_ece_ts": expected_calibration_error(scaled, y),
            "student_ts_temperature": float(np.mean(temperatures)),
        }

    def predictions(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """(N, K) probabilities at T = 1, the same temperature-scaled by the cross-fitted T
        (see `cross_fitted_temperature_scaling`), and the two fitted temperatures."""
        logits = predict_logits(self.model, x, self.device)  # (N, K)
        probs = soft_labels(torch.from_numpy(logits), 1.0).numpy()  # as predict_probs does
        scaled, temperatures = cross_fitted_temperature_scaling(logits, y, self.config.seed)
        return probs, scaled, temperatures

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, K) float32 probabilities at T = 1 on (N, ...) inputs (query selection reads them)."""
        return predict_probs(self.model, x, 1.0, self.device)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Load model and optimizer state written by `checkpoint`."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])

    def checkpoint(self) -> dict[str, Any]:
        """Model and optimizer state, on CPU."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "student_model": self.config.student_model,
        }
