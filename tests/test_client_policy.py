"""A node's operator sets a floor under the server's run config: the real `train` handler refuses
plain rounds when secure aggregation is required, and runs whose DP noise is below the floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, Metadata, RecordDict

from client import app as client_app
from client.data_source import check_operator_floor
from common.config import RunConfig
from common.data import load_splits, public_hash
from server.aggregation import RoundPlan
from server.cohort import NodeInfo


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    data_dir = tmp_path_factory.mktemp("data")
    config = RunConfig(num_samples=600, num_clients=3, data_dir=str(data_dir))
    load_splits(config)  # generated once, cached for every handler call below
    return config


def _train_message(config: RunConfig, secagg: bool) -> Message:
    """The server's real `train` request for round 1 (query: the first 8 public samples)."""
    splits = load_splits(config)
    plan = RoundPlan(
        round=1,
        cohort=[NodeInfo(node_id=5, index=0, label="partition-0")],
        query_indices=np.arange(8),
        n_public=len(splits.public_x),
        num_classes=splits.num_classes,
        label_bits=config.label_bits,
        public_hash=public_hash(splits.public_x),
        min_clients=1,
        timeout=60.0,
    )
    metadata = Metadata(
        run_id=3,
        message_id="m1",
        src_node_id=0,
        dst_node_id=5,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=600.0,
        message_type="train",
    )
    return Message(plan.train_content({"secagg": secagg}), metadata=metadata)


def _context(config: RunConfig, tmp_path: Path, **node_config: object) -> Context:
    node = {"partition-id": 0, "num-partitions": 3, "state-dir": str(tmp_path), **node_config}
    return Context(3, 5, node, RecordDict(), config.to_dict())


def test_a_plain_round_in_a_secure_run_is_refused_before_training(small_config, tmp_path):
    msg = _train_message(small_config, secagg=False)  # the run config says secagg=true

    with pytest.raises(ValueError, match="the round asks for secagg=False but the run is"):
        client_app.train(msg, _context(small_config, tmp_path))

    assert not list(tmp_path.iterdir())  # no teacher was trained or stored


def test_require_secagg_refuses_a_run_configured_in_the_clear(small_config, tmp_path):
    plain_run = small_config.replace(secagg=False)
    msg = _train_message(plain_run, secagg=False)

    with pytest.raises(ValueError, match="requires secure aggregation"):
        client_app.train(msg, _context(plain_run, tmp_path, **{"require-secagg": "true"}))


def test_a_plain_run_is_answered_when_the_operator_allows_it(small_config, tmp_path):
    plain_run = small_config.replace(secagg=False, local_epochs=1, digest_epochs=0)
    msg = _train_message(plain_run, secagg=False)

    reply = client_app.train(msg, _context(plain_run, tmp_path, **{"require-secagg": "false"}))

    assert reply.content["round"]["label_bits"] == plain_run.label_bits


@pytest.mark.parametrize(
    ("node_config", "changes", "message"),
    [
        ({"require-secagg": "yes"}, {}, "node config 'require-secagg' must be true or false"),
        ({"min-dp-noise-multiplier": "lots"}, {}, "'min-dp-noise-multiplier' must be a number"),
        (
            {"min-dp-noise-multiplier": "1.0"},
            {"dp_noise_multiplier": 0.5},
            r"requires dp_noise_multiplier >= 1.0 \(node config min-dp-noise-multiplier\), "
            "the run asks for 0.5",
        ),
    ],
    ids=["bad-flag", "bad-number", "noise-below-floor"],
)
def test_operator_floor_refuses_with_the_reason(node_config, changes, message):
    with pytest.raises(ValueError, match=message):
        check_operator_floor(RunConfig().replace(**changes), node_config)


def test_operator_floor_accepts_settings_at_or_above_it():
    config = RunConfig(dp_noise_multiplier=1.0)

    check_operator_floor(config, {"require-secagg": "true", "min-dp-noise-multiplier": 1.0})
