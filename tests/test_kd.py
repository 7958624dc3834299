"""Tests for common.kd: the distillation losses (KD, CE, hints, RKD), soft labels and the
ensemble rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.config import STUDENT_LOSSES as CONFIG_STUDENT_LOSSES
from common.kd import (
    RKD_ANGLE_WEIGHT,
    RKD_DISTANCE_WEIGHT,
    STUDENT_LOSSES,
    at_unit_temperature,
    ensemble_mean,
    era_sharpen,
    hint_adapter,
    hint_loss,
    kd_loss,
    kd_rkd_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    soft_labels,
    soft_target_cross_entropy,
)

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


# --- the T² factor ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_t2_factor_keeps_the_gradient_of_a_softening_teacher_on_one_scale(temperature):
    # Prepare: teacher logits (ln 3, 0), student logits (0, 0) → p_s = (½, ½) at every T and
    # p_t = softmax(ln 3 / T, 0). Then ∂(T²·KL)/∂z_0 = T·(½ − p_t0) = −(T/2)·tanh(ln 3 / (2T)):
    #   T=1: −½·(3 − 1)/(3 + 1) = −0.25;  T=2: −(2 − √3) = −0.2679492;
    #   T=4: −0.2729395;  T=8: −0.2742223;  → −ln 3 / 4 = −0.2746531 as T → ∞.
    # Without T² the same is divided by T²: from −0.25 at T=1 to −0.0042847 at T=8.
    expected = {1.0: -0.25, 2.0: -0.2679492, 4.0: -0.2729395, 8.0: -0.2742223}[temperature]
    logits = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    teacher = soft_labels(torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64), temperature)

    # Execute
    (with_t2,) = torch.autograd.grad(kd_loss(logits, teacher, temperature), logits)
    (without,) = torch.autograd.grad(kd_loss(logits, teacher, temperature) / temperature**2, logits)

    # Assert
    torch.testing.assert_close(
        with_t2, torch.tensor([[expected, -expected]], dtype=torch.float64), rtol=0, atol=1e-7
    )
    torch.testing.assert_close(without, with_t2 / temperature**2, rtol=1e-15, atol=0)
    assert -math.log(3) / 4 <= with_t2[0, 0].item() <= -0.25


# --- soft_target_cross_entropy ---------------------------------------------------------------


def test_cross_entropy_and_kl_to_soft_targets_differ_by_t2_entropy_with_equal_gradients():
    # Prepare: T = 2, z = (0, 0) → p_s = (½, ½); p_t = (¾, ¼).
    #   T²·CE = 4·(−¾·ln ½ − ¼·ln ½) = 4·ln 2 = 2.7725887
    #   T²·KL = 4·(¾·ln(3/2) + ¼·ln(½)) = 0.5232481
    #   T²·H(p_t) = 4·(¾·ln(4/3) + ¼·ln 4) = 2.2493406 = T²·CE − T²·KL
    #   both gradients: T·(p_s − p_t)/B = 2·(−¼, ¼) = (−0.5, 0.5)
    logits = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[0.75, 0.25]], dtype=torch.float64)

    # Execute
    cross_entropy = soft_target_cross_entropy(logits, teacher, temperature=2.0)
    kl = kd_loss(logits, teacher, temperature=2.0)
    (ce_grad,) = torch.autograd.grad(cross_entropy, logits)
    (kl_grad,) = torch.autograd.grad(kl, logits)

    # Assert
    assert cross_entropy.item() == pytest.approx(2.7725887, abs=1e-7)
    assert kl.item() == pytest.approx(0.5232481, abs=1e-7)
    assert (cross_entropy - kl).item() == pytest.approx(2.2493406, abs=1e-7)
    expected = torch.tensor([[-0.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(ce_grad, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(kl_grad, expected, rtol=0, atol=1e-15)


def test_cross_entropy_and_kl_gradients_are_identical_for_random_batches():
    generator = torch.Generator().manual_seed(5)
    logits = (torch.randn(6, 5, generator=generator, dtype=torch.float64) * 4).requires_grad_()
    teacher = torch.softmax(torch.randn(6, 5, generator=generator, dtype=torch.float64) * 4, 1)

    for temperature in (0.5, 1.0, 3.0, 20.0):
        (ce_grad,) = torch.autograd.grad(
            soft_target_cross_entropy(logits, teacher, temperature), logits
        )
        (kl_grad,) = torch.autograd.grad(kd_loss(logits, teacher, temperature), logits)

        torch.testing.assert_close(ce_grad, kl_grad, rtol=0, atol=1e-14)


# --- hint_loss -------------------------------------------------------------------------------


def _fixed_conv_adapter() -> torch.nn.Module:
    adapter = hint_adapter(student_channels=1, teacher_channels=2, rank=3)
    with torch.no_grad():
        adapter.weight.copy_(torch.tensor([[[2.0]], [[-1.0]]]))
        adapter.bias.copy_(torch.tensor([0.0, 1.0]))
    return adapter


def test_hint_loss_matches_hand_computed_value_and_adapter_gradient():
    # Prepare: u_s = [[1, 2]] (B=1, C_s=1, L=2); r = 1×1 conv with w = (2, −1), b = (0, 1)
    #   r(u_s) = [[2, 4], [0, −1]];  v_t = [[1, 1], [0, 1]]  → diff [[1, 3], [0, −2]]
    #   loss = (1 + 9 + 0 + 4) / 4 = 3.5
    #   ∂/∂w_c = 2/4 · Σ_l diff_cl · u_l: w_0: ½·(1 + 6) = 3.5, w_1: ½·(0 − 4) = −2
    #   ∂/∂b_c = 2/4 · Σ_l diff_cl:       b_0: ½·4 = 2,        b_1: ½·(−2) = −1
    student = torch.tensor([[[1.0, 2.0]]], requires_grad=True)
    teacher = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]], requires_grad=True)
    adapter = _fixed_conv_adapter()

    # Execute
    loss = hint_loss(student, teacher, adapter)
    loss.backward()

    # Assert
    assert loss.item() == pytest.approx(3.5, abs=1e-6)
    torch.testing.assert_close(adapter.weight.grad.flatten(), torch.tensor([3.5, -2.0]))
    torch.testing.assert_close(adapter.bias.grad, torch.tensor([2.0, -1.0]))
    # ∂/∂u_l = 2/4 · Σ_c diff_cl · w_c: l=0: ½·(1·2 + 0) = 1, l=1: ½·(3·2 + (−2)(−1)) = 4
    torch.testing.assert_close(student.grad, torch.tensor([[[1.0, 4.0]]]))
    assert teacher.grad is None  # the teacher is never trained by the hint


def test_hint_adapter_for_flat_features_is_linear():
    adapter = hint_adapter(student_channels=3, teacher_channels=5, rank=2)

    assert adapter(torch.zeros(4, 3)).shape == (4, 5)


def test_hint_adapter_rejects_other_ranks():
    with pytest.raises(ValueError, match=r"rank 2 .* or 3 .*, got rank 4"):
        hint_adapter(3, 5, rank=4)


def test_hint_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"adapted student features \(1, 2, 2\) do not match"):
        hint_loss(torch.zeros(1, 1, 2), torch.zeros(1, 2, 3), _fixed_conv_adapter())


# --- RKD -------------------------------------------------------------------------------------

# A 3-4-5 right triangle (teacher) and three collinear points (student).
TRIANGLE = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
LINE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)


def test_rkd_distance_loss_matches_hand_computed_value():
    # Teacher distances (01, 02, 12) = (3, 4, 5), mean 4 → (0.75, 1, 1.25).
    # Student distances (1, 2, 1), mean 4/3 → (0.75, 1.5, 0.75).
    # Huber (δ=1) of the differences (0, 0.5, −0.5): (0, 0.125, 0.125); mean over pairs = 1/12.
    loss = rkd_distance_loss(LINE, TRIANGLE)

    assert loss.item() == pytest.approx(1 / 12, abs=1e-12)


def test_rkd_distance_loss_ignores_the_scale_of_either_embedding():
    assert rkd_distance_loss(10 * LINE, 0.1 * TRIANGLE).item() == pytest.approx(1 / 12, abs=1e-12)


def test_rkd_angle_loss_matches_hand_computed_value():
    # Cosine at each vertex between the other two points:
    #   teacher: vertex 0 → 0 (right angle), vertex 1 → 3/5, vertex 2 → 4/5
    #   student: vertex 0 → 1, vertex 1 → −1 (between its neighbours), vertex 2 → 1
    # Huber (δ=1): |1 − 0| = 1 → 0.5; |−1 − 0.6| = 1.6 → 1.1; |1 − 0.8| = 0.2 → 0.02.
    # Each vertex has two ordered triples with the same cosine: mean = 1.62 / 3 = 0.54.
    loss = rkd_angle_loss(LINE, TRIANGLE)

    assert loss.item() == pytest.approx(0.54, abs=1e-12)


def test_rkd_losses_are_zero_for_the_same_geometry_in_another_dimension():
    # The teacher's triangle embedded in 3-D and scaled: same distances (up to scale) and angles.
    student = torch.cat([TRIANGLE * 2, torch.zeros(3, 1, dtype=torch.float64)], dim=1)

    assert rkd_distance_loss(student, TRIANGLE).item() == pytest.approx(0.0, abs=1e-12)
    assert rkd_angle_loss(student, TRIANGLE).item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_losses_on_too_small_batches_are_zero_and_differentiable():
    student = torch.ones(2, 3, requires_grad=True)

    distance = rkd_distance_loss(student[:1], torch.ones(1, 4))
    angle = rkd_angle_loss(student, torch.ones(2, 4))
    (distance + angle).backward()

    assert distance.item() == 0.0 and angle.item() == 0.0
    torch.testing.assert_close(student.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("dim", [2, 5], ids=["differences", "gram"])
def test_rkd_gradient_is_finite_for_coincident_student_rows(dim):
    student = torch.zeros(3, dim, requires_grad=True)

    (
        rkd_distance_loss(student, TRIANGLE.float()) + rkd_angle_loss(student, TRIANGLE.float())
    ).backward()

    assert torch.isfinite(student.grad).all()


def test_rkd_angle_is_the_same_through_the_gram_matrix_for_wide_embeddings():
    # Prepare: D ≤ B uses explicit differences, D > B the Gram matrix; padding with zero
    # columns changes no distance or angle, so the loss must not change.
    generator = torch.Generator().manual_seed(11)
    student = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    teacher = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    pad = torch.zeros(6, 20, dtype=torch.float64)

    narrow = rkd_angle_loss(student, teacher)
    wide = rkd_angle_loss(torch.cat([student, pad], 1), torch.cat([teacher, pad], 1))

    assert wide.item() == pytest.approx(narrow.item(), abs=1e-12)
    padded = rkd_angle_loss(torch.cat([LINE, pad[:3]], 1), torch.cat([TRIANGLE, pad[:3]], 1))
    assert padded.item() == pytest.approx(0.54, abs=1e-12)


def test_rkd_rejects_batches_of_different_sizes():
    with pytest.raises(ValueError, match=r"one batch, got \(3, 2\) and \(2, 2\)"):
        rkd_distance_loss(LINE, TRIANGLE[:2])


def test_kd_rkd_loss_is_kd_plus_weighted_rkd_on_the_softened_outputs():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    teacher = torch.softmax(torch.randn(5, 4, generator=generator, dtype=torch.float64), 1)
    student = torch.softmax(logits / 2.0, dim=1)

    loss = kd_rkd_loss(logits, teacher, temperature=2.0)

    expected = (
        kd_loss(logits, teacher, 2.0)
        + RKD_DISTANCE_WEIGHT * rkd_distance_loss(student, teacher)
        + RKD_ANGLE_WEIGHT * rkd_angle_loss(student, teacher)
    )
    assert (RKD_DISTANCE_WEIGHT, RKD_ANGLE_WEIGHT) == (1.0, 2.0)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert STUDENT_LOSSES["kd+rkd"](logits, teacher, 2.0).item() == loss.item()
    assert STUDENT_LOSSES["kd"](logits, teacher, 2.0).item() == kd_loss(logits, teacher, 2.0).item()


def test_student_loss_names_match_the_config():
    assert tuple(STUDENT_LOSSES) == CONFIG_STUDENT_LOSSES


# --- at_unit_temperature ---------------------------------------------------------------------


def test_at_unit_temperature_recovers_the_t1_prediction_of_one_teacher():
    # softmax((ln 4, 0) / 2) = (2/3, 1/3); squared and renormalised: (4/9, 1/9) / (5/9) = (0.8, 0.2)
    softened = np.array([[2 / 3, 1 / 3], [0.5, 0.5]])

    np.testing.assert_allclose(
        at_unit_temperature(softened, 2.0), [[0.8, 0.2], [0.5, 0.5]], rtol=0, atol=1e-12
    )


def test_at_unit_temperature_keeps_zero_probabilities_zero():
    np.testing.assert_array_equal(at_unit_temperature(np.array([[0.0, 1.0]]), 3.0), [[0.0, 1.0]])
