"""Tests for record-level DP: DP-SGD teachers, their accounting, refusals and the frontier."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import PRVAccountant

from client.data_source import PrivateData
from client.teacher import RoundInput, new_teacher, run_local_round
from common.config import RunConfig
from common.data import load_splits
from common.dp import epsilon
from common.dp_sgd import (
    DP_STEPS_BUFFER,
    DpSgdSettings,
    epsilon_after_rounds,
    steps_per_round,
    train_dp_sgd,
    unsupported_layers,
)
from common.models import MODEL_NAMES, build_model
from simulations.bench.plain_loop import run_plain
from simulations.leak.cli import main as leak_main
from simulations.leak.one_shot import cohort_reports, release

TINY_RECORD = {
    "num_samples": 1500,
    "num_clients": 3,
    "local_epochs": 1,
    "teacher_models": "mlp-s",
    "student_model": "mlp-s",
    "dp_mode": "record",
    "dp_record_noise_multiplier": 1.1,
    "dp_record_sample_rate": 0.1,
}


def opacus_epsilon(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """Opacus' PRV accountant stepped once per DP-SGD step, as its own training loop does."""
    accountant = PRVAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=sample_rate)
    return accountant.get_epsilon(delta)


def test_teacher_rounds_report_epsilon_of_every_step_composed_across_rounds():
    config = RunConfig.from_mapping(TINY_RECORD)
    splits = load_splits(config)
    private = PrivateData(splits.private_x[:300], splits.private_y[:300], "partition-0", 0)
    query = np.arange(20)
    device = torch.device("cpu")
    teacher = new_teacher(config, splits, 0)

    _, first = run_local_round(
        teacher, config, splits.public, private, RoundInput(1, query), device
    )
    saved = teacher.state_dict()  # what the TeacherStore persists between rounds
    resumed = new_teacher(config, splits, 0)
    resumed.load_state_dict(saved)
    _, second = run_local_round(
        resumed, config, splits.public, private, RoundInput(2, query), device
    )

    assert first["dp_sgd_steps"] == second["dp_sgd_steps"] == 10  # 1 epoch of ⌈1/0.1⌉ steps
    assert int(getattr(resumed, DP_STEPS_BUFFER)) == 20
    assert first["record_epsilon"] == opacus_epsilon(1.1, 0.1, 10, 1e-5)
    assert second["record_epsilon"] == opacus_epsilon(1.1, 0.1, 20, 1e-5)
    assert second["record_epsilon"] == epsilon_after_rounds(config, 2)  # the server's column
    assert set(first) == {"record_epsilon", "dp_sgd_steps"}  # no loss or count of records


def test_dp_sgd_with_a_huge_clip_and_no_noise_is_one_full_batch_sgd_step():
    # q = 1 and 1 epoch: one step on all records; nothing is clipped and the noise is 1e-12·C.
    torch.manual_seed(0)
    model = build_model("mlp-s", (8,), 3)
    reference = build_model("mlp-s", (8,), 3)
    reference.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 32)
    settings = DpSgdSettings(noise_multiplier=1e-12, clip=1e6, sample_rate=1.0, delta=1e-5)

    report = train_dp_sgd(
        model, x, y, settings, epochs=1, lr=0.1, optimizer="sgd", device=torch.device("cpu")
    )
    loss = F.cross_entropy(reference(torch.as_tensor(x)), torch.as_tensor(y))
    gradients = torch.autograd.grad(loss, list(reference.parameters()))

    assert report.steps == report.total_steps == 1
    for after, before, gradient in zip(
        model.parameters(), reference.parameters(), gradients, strict=True
    ):
        torch.testing.assert_close(after, before - 0.1 * gradient, rtol=1e-4, atol=1e-6)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # hooks removed


def test_dp_sgd_clipping_bounds_every_step_by_lr_times_clip():
    torch.manual_seed(0)
    model = build_model("mlp-s", (8,), 3)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    x = (100 * np.random.default_rng(0).normal(size=(64, 8))).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 64)
    settings = DpSgdSettings(noise_multiplier=1e-12, clip=0.01, sample_rate=1.0, delta=1e-5)

    train_dp_sgd(
        model, x, y, settings, epochs=1, lr=1.0, optimizer="sgd", device=torch.device("cpu")
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])

    # the mean of clipped per-sample gradients has norm <= C, so one SGD step moves <= lr·C
    assert 0 < torch.linalg.norm(after - before) <= 0.01 + 1e-9


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_opacus_refuses_exactly_the_batchnorm_models(name):
    errors = unsupported_layers(name)

    assert bool(errors) == name.startswith("resnet8")
    assert all("BatchNorm" in error for error in errors)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"teacher_models": "cnn1d-s,resnet8"},
            r"dp_mode='record' cannot train teacher model\(s\) \['resnet8'\] with DP-SGD "
            r"\(resnet8: ShouldReplaceModuleError: BatchNorm cannot support training",
        ),
        ({"method": "selective"}, "not supported with method='selective'"),
        ({"method": "certainty"}, "not supported with method='certainty'"),
        ({"ensemble": "weighted"}, "needs ensemble=uniform"),
        ({"dp_noise_multiplier": 1.0}, "dp_noise_multiplier must be 0, got 1.0"),
        ({"dp_record_clip": 0}, "dp_record_clip must be > 0, got 0"),
        ({"dp_record_sample_rate": 1.5}, r"dp_record_sample_rate must be in \(0, 1\], got 1.5"),
        ({"dp_mode": "records"}, "dp_mode must be one of .*, got 'records'"),
        ({"dp_mode": "client"}, r"dp_mode='client' needs dp_noise_multiplier > 0 \(z .*, got 0.0"),
    ],
    ids=[
        "batchnorm",
        "selective",
        "certainty",
        "weighted",
        "both-modes",
        "clip",
        "rate",
        "mode",
        "client-without-z",
    ],
)
def test_record_mode_refuses_bad_configs_before_training(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_mapping({**TINY_RECORD, **changes})


def test_steps_per_round_is_epochs_of_ceil_inverse_rate():
    assert steps_per_round(0.05, 8) == 160
    assert steps_per_round(0.3, 2) == 8
    assert steps_per_round(1.0, 3) == 3


def test_dp_tradeoff_frontier_smallest_setting(tmp_path):
    out = tmp_path / "frontier"
    pairs = [
        "seeds=0",
        "noise_multipliers=0,1",
        "record_noise_multipliers=1.1",
        "record_local_epochs=1",
        "record_clients=3",
        "record_rounds=2",
        "record_num_samples=1500",
        "attack_num_samples=1500",
        "canaries=40",
        "shadows=4",
        "population_shadows=1",
        "attack_cohort=3",
        "num_clients=3",
        "rounds=2",
        "num_samples=1500",
        "public_fraction=0.2",
        "test_fraction=0.2",
        "public_query_size=20",
        "local_epochs=1",
        "distill_epochs=1",
        "teacher_models=mlp-s",
        "student_model=mlp-s",
        "dp_record_sample_rate=0.1",
    ]
    args = ["dp-tradeoff", "--out", str(out)]
    for pair in pairs:
        args += ["--set", pair]

    assert leak_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    results = pd.read_csv(out / "results.csv")

    assert summary["failed_checks"] == []
    assert (out / "frontier.png").stat().st_size > 0
    assert summary["record_epsilon_run"]["sigma=1.1"] == opacus_epsilon(1.1, 0.1, 20, 1e-5)
    assert summary["epsilon_run"]["z=1"] == epsilon(1.0, 2, 1e-5)  # every client in both rounds
    assert set(results["point"].dropna()) == {
        "record: no DP",
        "record: σ=1.1",
        "client: no DP",
        "client: z=1",
    }
    audited = results.dropna(subset=["audit_eps_lower"])
    assert len(audited) == 4  # 2 DP points × (confidence, LiRA)
    assert (audited["audit_eps_lower"] <= audited["epsilon"]).all()


ONE_SHOT = {
    "num_samples": 1500,
    "num_clients": 6,
    "fraction": 0.5,
    "min_clients": 3,
    "rounds": 1,
    "public_query_size": 50,
    "method": "dsfl",
    "local_epochs": 1,
    "distill_epochs": 2,
    "teacher_models": "mlp-s",
    "student_model": "mlp-s",
}


def test_one_shot_release_without_noise_is_run_plains_round():
    config = RunConfig.from_mapping(ONE_SHOT)  # secagg on: run_plain sums through SecAgg+
    splits = load_splits(config)
    expected = run_plain(config, splits)[0]

    reports = cohort_reports(config, splits)
    row = release(config, splits, reports)

    assert len(reports.reports) == expected["clients"] == 3  # ⌈0.5 · 6⌉
    assert len(reports.query) == 50
    for key in ("student_accuracy", "student_nll", "ensemble_public_accuracy", "rows_kept"):
        assert row[key] == expected[key]


def test_one_shot_noise_changes_only_the_release():
    config = RunConfig.from_mapping(ONE_SHOT)
    splits = load_splits(config)
    reports = cohort_reports(config, splits)
    noisy = config.replace(dp_mode="client", dp_noise_multiplier=50.0)

    assert (
        release(noisy, splits, reports)["student_nll"]
        != release(config, splits, reports)["student_nll"]
    )
    with pytest.raises(ValueError, match="rounds == 1, got rounds=2"):
        cohort_reports(config.replace(rounds=2), splits)
