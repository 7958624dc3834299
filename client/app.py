"""The feddistill ClientApp: private teacher training and soft-label reports (Message API)."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.data_source import (
    PrivateData,
    check_private_fits,
    load_node_public,
    load_private_data,
    node_run_config,
)
from client.placement import record_placement
from client.secagg_handlers import continue_secure_round, start_secure_round
from client.teacher import RoundInput, new_teacher, run_local_round
from client.teacher_store import TeacherStore
from common.config import RunConfig
from common.data import PublicData, public_hash
from common.label_coding import decode_counts, decode_indices, encode_counts
from common.logs import get_logger
from common.protocol import (
    ARRAYS_RECORD,
    CONTRIBUTION_RECORD,
    METRICS_RECORD,
    NODE_RECORD,
    ROUND_RECORD,
    Contribution,
    arrays_to_record,
    record_to_arrays,
)
from common.quantise import counts_to_probs, quantise_contribution, rounding_generator
from common.training import resolve_device

log = get_logger(__name__)
app = ClientApp(mods=[record_placement])


class PublicSetMismatch(ValueError):
    """The server's public-set hash differs from ours: refuse to take part."""


def _run_config(context: Context) -> RunConfig:
    return node_run_config(context.run_config, context.node_config)


def _node_data(msg: Message, context: Context, config: RunConfig) -> tuple[PublicData, str]:
    """This node's public set (its own copy, K as the server announced it) and its hash,
    refusing a copy whose hash differs from the server's."""
    round_config = msg.content[ROUND_RECORD]
    if "num_classes" not in round_config:
        raise ValueError(
            "the server's message names no num_classes: the ServerApp runs another feddistill "
            "version than this node; refusing to guess the label space"
        )
    public = load_node_public(config, context.node_config, int(round_config["num_classes"]))
    ours = public_hash(public.x)
    expected = str(round_config["public_hash"])
    if expected != ours:
        server_side = (
            f"public_dataset={config.public_dataset!r}"
            if config.public_dataset
            else f"carved from dataset={config.dataset!r}"
        )
        raise PublicSetMismatch(
            f"public-set hash mismatch: the server's public set ({server_side}) has hash "
            f"{expected[:16]}…, this node's copy ({public.source}) has {ours[:16]}…; "
            "refusing to report soft labels on a different public set"
        )
    return public, ours


def _private_data(context: Context, config: RunConfig, public: PublicData) -> PrivateData:
    private = load_private_data(config, context.node_config)
    check_private_fits(private, public)
    return private


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which partition or data source this node serves (after checking the
    public-set hash and that the private data fits the run)."""
    config = _run_config(context)
    public, _ = _node_data(msg, context, config)
    private = _private_data(context, config, public)
    reply = ConfigRecord({"label": private.label, "index": private.index})
    return Message(RecordDict({NODE_RECORD: reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Refresh the teacher on private data, then report soft labels on the queried public set."""
    config = _run_config(context)
    torch.set_num_threads(config.client_threads)
    round_config = msg.content[ROUND_RECORD]
    public, public_digest = _node_data(msg, context, config)
    secure = bool(round_config.get("secagg", False))
    if secure != config.secagg:  # the run config said one thing, this round says another
        raise ValueError(
            f"the round asks for secagg={secure} but the run is configured with "
            f"secagg={config.secagg}; refusing to change how this node's soft labels travel"
        )
    private = _private_data(context, config, public)
    device = resolve_device(config.device)

    request = _round_input(msg, config, len(public.x), public.num_classes)
    store = TeacherStore.for_node(context, config, private.label)
    teacher = new_teacher(config, public, private.index)
    saved = store.load(request.round)
    if saved is not None:
        teacher.load_state_dict(saved)
    contribution, metrics = run_local_round(
        teacher, config, public, private, request, device, fresh=saved is None
    )
    store.save(request.round, teacher.cpu().state_dict())
    contribution, counts = quantise_contribution(
        contribution,
        config.label_bits,
        rounding_generator(config.seed, request.round, private.index),
    )

    if secure:
        stage = str(round_config.get("secagg_stage", ""))
        return start_secure_round(msg, context, config, contribution, stage, request.round)
    content = plain_reply_content(contribution, counts, config.label_bits, public_digest, metrics)
    return Message(content, reply_to=msg)


def plain_reply_content(
    contribution: Contribution,
    counts: np.ndarray,
    label_bits: int,
    digest: str,
    metrics: dict[str, float] | None = None,
) -> RecordDict:
    """What a client sends under plain aggregation: counts (Q, K) at `label_bits`, LZMA-coded,
    its weight, the public-set hash, and (plain mode always sends them) its metrics."""
    per_row = contribution.row_weights is not None
    content = RecordDict(
        {
            CONTRIBUTION_RECORD: arrays_to_record(
                {"counts": encode_counts(counts, label_bits, per_row)}
            ),
            ROUND_RECORD: ConfigRecord(
                {"weight": contribution.weight, "public_hash": digest, "label_bits": label_bits}
            ),
        }
    )
    if metrics is not None:
        content[METRICS_RECORD] = MetricRecord(metrics)
    return content


@app.train("secagg_share_keys")
def secagg_share_keys(msg: Message, context: Context) -> Message:
    """SecAgg+ stage 2: Shamir shares of this round's secrets, encrypted per neighbour."""
    return continue_secure_round(msg, context, _run_config(context), "share-keys")


@app.train("secagg_masked_input")
def secagg_masked_input(msg: Message, context: Context) -> Message:
    """SecAgg+ stage 3: the encoded contribution under pairwise and self masks."""
    return continue_secure_round(msg, context, _run_config(context), "masked-input")


@app.train("secagg_consistency")
def secagg_consistency(msg: Message, context: Context) -> Message:
    """SecAgg+ stage 4: sign the survivor set the server shows (the malicious-model check)."""
    return continue_secure_round(msg, context, _run_config(context), "consistency")


@app.train("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    """SecAgg+ stage 5: shares that let the server remove masks (survivors) or recover drops."""
    return continue_secure_round(msg, context, _run_config(context), "unmask")


def _round_input(msg: Message, config: RunConfig, n_public: int, num_classes: int) -> RoundInput:
    """Decode the `train` request: query indices, and the previous ensemble at `label_bits`."""
    label_bits = int(msg.content[ROUND_RECORD]["label_bits"])
    if label_bits != config.label_bits:
        raise ValueError(
            f"the server sends label_bits={label_bits}, this node is configured with "
            f"{config.label_bits}; refusing a round whose soft labels it would misread"
        )
    arrays = record_to_arrays(msg.content[ARRAYS_RECORD])
    digest_indices = digest_probs = None
    if "digest_counts" in arrays:
        digest_indices = decode_indices(arrays["digest_mask"], n_public)
        counts = decode_counts(
            arrays["digest_counts"], label_bits, False, (len(digest_indices), num_classes)
        )
        digest_probs = counts_to_probs(counts, label_bits)
    return RoundInput(
        round=int(msg.content[ROUND_RECORD]["round"]),
        query_indices=decode_indices(arrays["query_mask"], n_public),
        digest_indices=digest_indices,
        digest_probs=digest_probs,
    )
