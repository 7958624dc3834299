"""The feddistill ClientApp: private teacher training and soft-label reports (Message API)."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.data_source import load_private_data, node_run_config
from client.secagg_handlers import continue_secure_round, start_secure_round
from client.teacher import RoundInput, new_teacher, run_local_round
from client.teacher_store import TeacherStore
from common.config import RunConfig
from common.data import load_splits, public_hash
from common.logs import get_logger
from common.protocol import (
    ARRAYS_RECORD,
    CONTRIBUTION_RECORD,
    METRICS_RECORD,
    NODE_RECORD,
    ROUND_RECORD,
    arrays_to_record,
    record_to_arrays,
)
from common.training import resolve_device

log = get_logger(__name__)
app = ClientApp()


class PublicSetMismatch(ValueError):
    """The server's public-set hash differs from ours: refuse to take part."""


def _run_config(context: Context) -> RunConfig:
    return node_run_config(context.run_config, context.node_config)


def _check_public_hash(expected: str, ours: str) -> None:
    if expected != ours:
        raise PublicSetMismatch(
            f"public-set hash mismatch: server sent {expected[:16]}…, this node has {ours[:16]}…; "
            "refusing to report soft labels on a different public set"
        )


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which partition or data source this node serves (and check the hash)."""
    config = _run_config(context)
    splits = load_splits(config)
    _check_public_hash(str(msg.content[ROUND_RECORD]["public_hash"]), public_hash(splits.public_x))
    private = load_private_data(config, context.node_config)
    reply = ConfigRecord({"label": private.label, "index": private.index})
    return Message(RecordDict({NODE_RECORD: reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Refresh the teacher on private data, then report soft labels on the queried public set."""
    config = _run_config(context)
    torch.set_num_threads(config.client_threads)
    splits = load_splits(config)
    round_config = msg.content[ROUND_RECORD]
    _check_public_hash(str(round_config["public_hash"]), public_hash(splits.public_x))
    private = load_private_data(config, context.node_config)
    device = resolve_device(config.device)

    request = _round_input(msg)
    store = TeacherStore.for_node(context, config, private.label)
    teacher = new_teacher(config, splits, private.index)
    saved = store.load(request.round)
    if saved is not None:
        teacher.load_state_dict(saved)
    contribution, metrics = run_local_round(
        teacher, config, splits, private, request, device, fresh=saved is None
    )
    store.save(request.round, teacher.cpu().state_dict())

    if bool(round_config.get("secagg", False)):
        return start_secure_round(msg, context, config, contribution)
    content = RecordDict(
        {
            CONTRIBUTION_RECORD: arrays_to_record(contribution.arrays()),
            ROUND_RECORD: ConfigRecord(
                {"weight": contribution.weight, "public_hash": public_hash(splits.public_x)}
            ),
        }
    )
    if config.send_client_metrics or not config.secagg:
        content[METRICS_RECORD] = MetricRecord(metrics)
    return Message(content, reply_to=msg)


@app.train("secagg_share_keys")
def secagg_share_keys(msg: Message, context: Context) -> Message:
    """SecAgg+ stage 2: Shamir shares of this round's secrets, encrypted per neighbour."""
    return continue_secure_round(msg, context, _run_config(context), "share-keys")


@app.train("secagg_masked_input")
def secagg_masked_input(msg: Message, context: Context) -> Message:
    """SecAgg+ stage 3: the encoded contribution under pairwise and self masks."""
    return continue_secure_round(msg, context, _run_config(context), "masked-input")


@app.train("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    """SecAgg+ stage 4: shares that let the server remove masks (survivors) or recover drops."""
    return continue_secure_round(msg, context, _run_config(context), "unmask")


def _round_input(msg: Message) -> RoundInput:
    arrays = record_to_arrays(msg.content[ARRAYS_RECORD])
    has_digest = "digest_probs" in arrays
    return RoundInput(
        round=int(msg.content[ROUND_RECORD]["round"]),
        query_indices=arrays["query_indices"].astype(np.int64),
        digest_indices=arrays["digest_indices"].astype(np.int64) if has_digest else None,
        digest_probs=arrays["digest_probs"].astype(np.float32) if has_digest else None,
    )
