"""Tests for common.models: every model maps (B, *input_shape) to (B, K); bad shapes are named."""

from __future__ import annotations

import pytest
import torch

from common.models import MODEL_NAMES, build_model

# A fitting per-sample input shape for each family (the name's prefix).
INPUT_SHAPES = {
    "mlp": [(20,), (1, 8, 8)],
    "cnn1d": [(40,), (2, 40)],
    "cnn2d": [(1, 8, 8), (3, 16, 16)],
    "resnet8": [(3, 16, 16), (1, 8, 8)],
}
CASES = [(name, shape) for name in MODEL_NAMES for shape in INPUT_SHAPES[name.split("-")[0]]]


def test_every_model_name_has_an_input_shape_here():
    assert {name.split("-")[0] for name in MODEL_NAMES} == set(INPUT_SHAPES)


@pytest.mark.parametrize(("name", "input_shape"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_model_maps_a_batch_to_logits(name, input_shape):
    # Prepare
    torch.manual_seed(0)
    model = build_model(name, input_shape, num_classes=7)
    batch = torch.randn(4, *input_shape)

    # Execute
    logits = model(batch)

    # Assert
    assert logits.shape == (4, 7)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_cnn1d_accepts_signals_with_and_without_a_channel_axis():
    # A (B, L) batch is treated as one channel, exactly like (B, 1, L).
    torch.manual_seed(0)
    model = build_model("cnn1d-s", (40,), num_classes=10)
    signals = torch.randn(3, 40)

    torch.testing.assert_close(model(signals), model(signals[:, None, :]))


@pytest.mark.parametrize(
    ("name", "input_shape", "allowed"),
    [
        ("cnn2d-s", (40,), "(3,)"),
        ("resnet8", (20,), "(3,)"),
        ("cnn1d-m", (1, 8, 8), "(1, 2)"),
        ("mlp-s", (1, 2, 3, 4), "(1, 2, 3)"),
    ],
)
def test_wrong_input_rank_is_a_clear_error(name, input_shape, allowed):
    with pytest.raises(ValueError) as error:
        build_model(name, input_shape, num_classes=10)

    message = str(error.value)
    assert f"model {name!r} needs samples of rank {allowed}" in message
    assert f"got input shape {input_shape}" in message


def test_unknown_model_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown model 'vit-b'; allowed: \('mlp-s'"):
        build_model("vit-b", (20,), num_classes=10)
