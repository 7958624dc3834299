"""Tests for common.kd: the distillation loss, soft labels and the ensemble rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.kd import ensemble_mean, era_sharpen, kd_loss, soft_labels

# --- kd_loss ---------------------------------------------------------------------------------


def test_kd_loss_matches_hand_computed_value_for_a_2x3_batch():
    # Prepare: T = 2, so the student probabilities are softmax(z / 2).
    # Row 1: z = (0, 0, 0) → p_s = (1/3, 1/3, 1/3); p_t = (1/2, 1/4, 1/4).
    #   KL = 1/2·ln(3/2) + 2·1/4·ln(3/4) = 1/2·ln(9/8) = 0.0588915
    # Row 2: z = (2 ln 2, 0, 0) → z / 2 = (ln 2, 0, 0) → p_s = (1/2, 1/4, 1/4); p_t uniform.
    #   KL = 1/3·ln(2/3) + 2·1/3·ln(4/3) = 1/3·ln(32/27) = 0.0566330
    # batch mean = 0.0577623; times T² = 4 → ln(9/8) + 2/3·ln(32/27) = 0.2310491
    student_logits = torch.tensor([[0.0, 0.0, 0.0], [2 * math.log(2.0), 0.0, 0.0]])
    teacher_probs = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])

    # Execute
    loss = kd_loss(student_logits, teacher_probs, temperature=2.0)

    # Assert
    assert loss.shape == ()
    assert loss.item() == pytest.approx(0.2310491, abs=1e-6)


def test_kd_loss_with_one_hot_teacher_and_uniform_student_is_log_k():
    # Prepare: T = 1; KL(one-hot ‖ uniform over 3) = 1·ln(1 / (1/3)) = ln 3 = 1.0986123 per row;
    # the zero teacher entries contribute 0 (0·log 0 = 0), not NaN.
    student_logits = torch.zeros(2, 3)
    teacher_probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

    # Execute
    loss = kd_loss(student_logits, teacher_probs, temperature=1.0)

    # Assert
    assert loss.item() == pytest.approx(1.0986123, abs=1e-6)


def test_kd_loss_is_zero_when_student_matches_teacher():
    # Prepare: teacher probabilities are exactly the student's softmax at T = 3.
    logits = torch.tensor([[1.0, -2.0, 0.5], [3.0, 3.0, -1.0]], dtype=torch.float64)
    teacher_probs = torch.softmax(logits / 3.0, dim=-1)

    # Execute
    loss = kd_loss(logits, teacher_probs, temperature=3.0)

    # Assert
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 3.0, 8.0])
def test_kd_loss_gradient_is_t_times_prob_difference_over_batch(temperature):
    # Prepare: float64 so the comparison can be tight.
    generator = torch.Generator().manual_seed(int(temperature * 10))
    batch, classes = 5, 4
    student_logits = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 3
    student_logits.requires_grad_(True)
    teacher_logits = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 3
    teacher_probs = torch.softmax(teacher_logits / temperature, dim=-1)

    # Execute
    kd_loss(student_logits, teacher_probs, temperature).backward()

    # Assert: d/dz [T² · mean_b KL(p_t ‖ softmax(z / T))] = T · (p_s − p_t) / B
    student_probs = torch.softmax(student_logits.detach() / temperature, dim=-1)
    expected = temperature * (student_probs - teacher_probs) / batch
    torch.testing.assert_close(student_logits.grad, expected, rtol=1e-10, atol=1e-12)


def test_kd_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"student logits \(2, 3\) and teacher probs \(2, 4\)"):
        kd_loss(torch.zeros(2, 3), torch.full((2, 4), 0.25), temperature=1.0)


# --- soft_labels -----------------------------------------------------------------------------


def test_soft_labels_divide_logits_by_temperature():
    # Prepare: z / 2 = (0, ln 2) → softmax = (1/3, 2/3).
    logits = torch.tensor([[0.0, 2 * math.log(2.0)]], dtype=torch.float64)

    # Execute
    probs = soft_labels(logits, temperature=2.0)

    # Assert
    torch.testing.assert_close(probs, torch.tensor([[1 / 3, 2 / 3]], dtype=torch.float64))


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_soft_labels_reject_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match=rf"temperature must be > 0, got {temperature}"):
        soft_labels(torch.zeros(1, 3), temperature)


# --- ensemble_mean ---------------------------------------------------------------------------


def test_ensemble_mean_uniform_rule_averages_client_probabilities():
    # Prepare: three clients, weight 1 each; the server receives Σ P_i and Σ w_i = 3.
    client_probs = [
        np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]),
        np.array([[0.3, 0.6, 0.1], [0.1, 0.1, 0.8]]),
        np.array([[0.0, 0.0, 1.0], [0.3, 0.3, 0.4]]),
    ]
    weighted_sum = sum(client_probs)

    # Execute
    ensemble = ensemble_mean(weighted_sum, total_weight=3.0)

    # Assert: column sums / 3, written out.
    expected = np.array([[0.3, 0.3, 0.4], [0.2, 0.2, 0.6]])
    np.testing.assert_allclose(ensemble, expected, rtol=0, atol=1e-12)
    assert ensemble.dtype == np.float64


def test_ensemble_mean_weighted_rule_weights_by_sample_count():
    # Prepare: client a has 100 samples, client b 300 → weights 1/4 and 3/4.
    probs_a = np.array([[1.0, 0.0], [0.2, 0.8]])
    probs_b = np.array([[0.0, 1.0], [0.6, 0.4]])
    weighted_sum = 100 * probs_a + 300 * probs_b

    # Execute
    ensemble = ensemble_mean(weighted_sum, total_weight=400.0)

    # Assert: 1/4 · a + 3/4 · b.
    np.testing.assert_allclose(ensemble, [[0.25, 0.75], [0.5, 0.5]], rtol=0, atol=1e-12)


def test_ensemble_mean_clips_negatives_renormalises_rows_and_makes_zero_rows_uniform():
    # Prepare: aggregates as DP noise can leave them (total weight 2).
    weighted_sum = np.array(
        [
            [-0.4, 1.2, 1.2],  # mean (−0.2, 0.6, 0.6) → clip (0, 0.6, 0.6) → (0, 0.5, 0.5)
            [0.4, 0.4, 0.8],  # mean (0.2, 0.2, 0.4), sums to 0.8 → (0.25, 0.25, 0.5)
            [0.0, 0.0, 0.0],  # nothing left → uniform
            [-0.2, -0.4, 0.0],  # all clipped to 0 → uniform
        ]
    )

    # Execute
    ensemble = ensemble_mean(weighted_sum, total_weight=2.0)

    # Assert
    expected = np.array(
        [[0.0, 0.5, 0.5], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]]
    )
    np.testing.assert_allclose(ensemble, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("total_weight", [0.0, -1.0])
def test_ensemble_mean_rejects_non_positive_total_weight(total_weight):
    with pytest.raises(ValueError, match=rf"total weight .* must be > 0, got {total_weight}"):
        ensemble_mean(np.ones((2, 3)), total_weight)


# --- era_sharpen -----------------------------------------------------------------------------


def test_era_sharpen_known_values():
    # Prepare: T_era = 0.1, so the rows become softmax(10 · P̄).
    # Row 1: softmax(5, 3, 2) = (e⁵, e³, e²) / (e⁵ + e³ + e²) = (0.8437947, 0.1141952, 0.0420101)
    # Row 2: softmax(2, 4, 4) = (0.0633789, 0.4683105, 0.4683105)
    # Row 3: uniform stays uniform.
    probs = np.array([[0.5, 0.3, 0.2], [0.2, 0.4, 0.4], [1 / 3, 1 / 3, 1 / 3]])

    # Execute
    sharpened = era_sharpen(probs, era_temperature=0.1)

    # Assert
    expected = np.array(
        [
            [0.8437947, 0.1141952, 0.0420101],
            [0.0633789, 0.4683105, 0.4683105],
            [1 / 3, 1 / 3, 1 / 3],
        ]
    )
    np.testing.assert_allclose(sharpened, expected, rtol=0, atol=1e-7)


def test_era_sharpen_does_not_modify_its_input():
    probs = np.array([[0.5, 0.3, 0.2]])

    era_sharpen(probs, era_temperature=0.1)

    np.testing.assert_array_equal(probs, [[0.5, 0.3, 0.2]])


@pytest.mark.parametrize("era_temperature", [0.0, -0.5])
def test_era_sharpen_rejects_non_positive_temperature(era_temperature):
    with pytest.raises(ValueError, match=rf"era_temperature must be > 0, got {era_temperature}"):
        era_sharpen(np.full((1, 2), 0.5), era_temperature)
