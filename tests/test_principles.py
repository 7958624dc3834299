"""The `principles` bench end to end at its smallest setting, and the student's loss choice
reaching the server's distillation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from common.config import RunConfig
from common.data import load_splits
from common.kd import kd_loss, kd_rkd_loss
from common.training import distill, seeded_generator
from server.student import Student
from simulations.bench import principles
from simulations.bench.suite import make_bench

CLAIM_FILES = ("gradients", "curvature", "ce_kl", "compression", "calibration", "features")
PLOTS = ("gradients", "curvature", "ce_kl", "compression", "calibration", "features")


def test_smallest_setting_writes_one_table_and_plot_per_claim(tmp_path):
    # Prepare: --tiny, one seed, one thread (the suite's default is server_threads).
    overrides = {"data_dir": str(tmp_path / "data"), "server_threads": "1"}
    bench = make_bench(principles.SPEC, overrides, tmp_path, seeds=1, tiny=True)

    # Execute
    principles.SPEC.run(bench)

    # Assert: six CSVs, six plots, one markdown report with a section per claim.
    out = tmp_path / "principles"
    for name in CLAIM_FILES:
        assert len(pd.read_csv(out / f"principles_{name}.csv")) > 0, name
    for name in PLOTS:
        assert (out / f"principles_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    text = (out / "principles.md").read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")] == [
        f"## {title}" for title, _ in principles.CLAIMS.values()
    ]
    # What must hold at any size: CE and KL differ by T²·H only and share their gradients; the
    # unscaled loss is the T²-scaled one divided by T².
    ce_kl = pd.read_csv(out / "principles_ce_kl.csv")
    assert (ce_kl["gap_error"] < 1e-10).all() and (ce_kl["logit_grad_max_diff"] < 1e-12).all()
    gradients = pd.read_csv(out / "principles_gradients.csv")
    np.testing.assert_allclose(
        gradients["logit_grad_plain"] * gradients["temperature"] ** 2,
        gradients["logit_grad_t2"],
        rtol=1e-12,
    )
    assert list(gradients["temperature"]) == [1.0, 4.0]
    compression = pd.read_csv(out / "principles_compression.csv")
    assert len(compression) == 2 + 2  # teacher, hard-label student, KD at T = 1 and 4
    assert len(pd.read_csv(out / "principles_features.csv")) == len(principles.FEATURE_ROWS)


def test_principles_refuses_models_without_the_cnn1d_hint_layers(tmp_path):
    bench = make_bench(principles.SPEC, {"student": "mlp-s"}, tmp_path, seeds=1, tiny=True)

    with pytest.raises(ValueError, match=r"principles needs cnn1d-\* models .* student='mlp-s'"):
        principles.SPEC.run(bench)


@pytest.mark.parametrize(
    ("student_loss", "loss_fn"), [("kd", kd_loss), ("kd+rkd", kd_rkd_loss)], ids=["kd", "kd+rkd"]
)
def test_the_configured_student_loss_is_what_the_server_distils_with(
    tmp_path, student_loss, loss_fn
):
    # Prepare: one batch holding every public row, so the returned loss is the objective at
    # the student's initial weights, before its single step.
    config = RunConfig.from_mapping(
        {
            "num_samples": 400,
            "data_dir": str(tmp_path),
            "distill_epochs": 1,
            "distill_batch_size": 1000,
            "student_loss": student_loss,
        }
    )
    splits = load_splits(config)
    student = Student(config, splits, torch.device("cpu"))
    rng = np.random.default_rng(0)
    ensemble = rng.dirichlet(np.ones(splits.num_classes), len(splits.public_x))  # (P, K)
    with torch.no_grad():
        expected = loss_fn(
            student.model(torch.as_tensor(splits.public_x)),
            torch.as_tensor(ensemble, dtype=torch.float32),
            config.temperature,
        ).item()

    # Execute
    loss = student.distill(1, splits.public_x, ensemble)

    # Assert
    assert loss == pytest.approx(expected, rel=1e-6)


def test_distill_rejects_an_unknown_student_loss():
    model = torch.nn.Linear(2, 3)

    with pytest.raises(ValueError, match=r"student_loss must be one of \('kd', 'kd\+rkd'\)"):
        distill(
            model,
            np.zeros((4, 2), dtype=np.float32),
            np.full((4, 3), 1 / 3, dtype=np.float32),
            temperature=1.0,
            epochs=1,
            lr=0.1,
            batch_size=2,
            generator=seeded_generator(0),
            device=torch.device("cpu"),
            student_loss="rkd",
        )
