"""A ClientApp for fault-injection tests: our real handlers, with chosen nodes misbehaving.

Round 1: partitions 2–8 each send one kind of malformed reply (or crash); 0 and 1 are honest.
Round 2: every partition but 0 crashes, so the cohort falls below min_clients.
Later rounds: everyone is honest again.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from client import app as real
from common.protocol import CONTRIBUTION_RECORD, ROUND_RECORD, arrays_to_record, record_to_arrays

app = ClientApp()


def _probs(reply: Message) -> np.ndarray:
    return record_to_arrays(reply.content[CONTRIBUTION_RECORD])["probs"]


def _set_probs(reply: Message, probs: np.ndarray) -> None:
    reply.content[CONTRIBUTION_RECORD] = arrays_to_record({"probs": probs})


def _with_nan(probs: np.ndarray) -> np.ndarray:
    bad = probs.copy()
    bad[0, 0] = np.nan
    return bad


def _out_of_range(probs: np.ndarray) -> np.ndarray:
    """Rows still sum to 1, but hold 1.3 and a negative entry."""
    bad = probs.copy()
    bad[:, 0] = 1.3
    bad[:, 1] = 1.0 - bad[:, 0] - bad[:, 2:].sum(axis=1)
    return bad


def _wrong_hash(reply: Message) -> None:
    record = dict(reply.content[ROUND_RECORD])
    record["public_hash"] = "0" * 64
    reply.content[ROUND_RECORD] = ConfigRecord(record)


FAULTS = {  # partition -> how its round-1 reply is corrupted (5 crashes instead)
    2: lambda reply: _set_probs(reply, _with_nan(_probs(reply))),
    3: lambda reply: _set_probs(reply, _probs(reply)[:-1]),
    4: lambda reply: _set_probs(reply, _probs(reply) * np.float32(0.5)),
    6: lambda reply: _set_probs(reply, _probs(reply).astype(np.float64)),
    7: lambda reply: _set_probs(reply, _out_of_range(_probs(reply))),
    8: _wrong_hash,
}


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Honest."""
    return real.describe(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Our real train handler, then the partition's injected fault."""
    partition = int(context.node_config["partition-id"])
    round_number = int(msg.content[ROUND_RECORD]["round"])
    crashes = (round_number == 1 and partition == 5) or (round_number == 2 and partition != 0)
    if crashes:
        raise RuntimeError(f"injected crash in partition {partition}")
    reply = real.train(msg, context)
    if round_number == 1 and partition in FAULTS:
        FAULTS[partition](reply)
    return reply
