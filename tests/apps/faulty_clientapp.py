"""A ClientApp for fault-injection tests: our real handlers, with chosen nodes misbehaving.

Replies are plain (secagg=false) coded counts (`common.label_coding`) on MNIST-1D (K = 10).

Round 1: partitions 2–8 each send one kind of malformed reply (or crash); 0 and 1 are honest.
Round 2: every partition but 0 crashes, so the cohort falls below min_clients.
Later rounds: everyone is honest again.
"""

from __future__ import annotations

import lzma

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from client import app as real
from common.label_coding import (
    LZMA_FILTERS,
    compress_columns,
    count_dtype,
    decode_counts,
    encode_counts,
)
from common.protocol import CONTRIBUTION_RECORD, ROUND_RECORD, arrays_to_record, record_to_arrays

app = ClientApp()
NUM_CLASSES = 10


def _counts(reply: Message) -> np.ndarray:
    """The honest reply's counts (Q, K) at the run's label_bits (uniform rule: rows sum to 2^b);
    Q is read back from the decompressed size (K - 1 coded columns)."""
    coded = record_to_arrays(reply.content[CONTRIBUTION_RECORD])["counts"]
    raw = lzma.decompress(coded.tobytes(), format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    n_rows = len(raw) // (count_dtype(_bits(reply)).itemsize * (NUM_CLASSES - 1))
    return decode_counts(coded, _bits(reply), False, (n_rows, NUM_CLASSES))


def _set_coded(reply: Message, coded: np.ndarray) -> None:
    reply.content[CONTRIBUTION_RECORD] = arrays_to_record({"counts": coded})


def _bits(reply: Message) -> int:
    return int(reply.content[ROUND_RECORD]["label_bits"])


def _one_row_short(reply: Message) -> None:
    _set_coded(reply, encode_counts(_counts(reply)[:-1], _bits(reply), per_row=False))


def _count_above_range(reply: Message) -> None:
    """Row 0 claims 2^b + 1 in class 0 (and the implied last class goes negative)."""
    columns = _counts(reply)[:, :-1].copy()
    columns[0, 0] = 2 ** _bits(reply) + 1
    _set_coded(reply, compress_columns(columns, _bits(reply)))


def _decompression_bomb(reply: Message) -> None:
    """A few hundred bytes that would inflate to 64 MiB of zeros."""
    bomb = lzma.compress(bytes(64 << 20), format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    _set_coded(reply, np.frombuffer(bomb, dtype=np.uint8))


def _set_round_field(reply: Message, key: str, value: object) -> None:
    record = dict(reply.content[ROUND_RECORD])
    record[key] = value
    reply.content[ROUND_RECORD] = ConfigRecord(record)


FAULTS = {  # partition -> how its round-1 reply is corrupted (5 crashes instead)
    2: lambda reply: _set_coded(reply, np.frombuffer(b"not lzma at all", dtype=np.uint8)),
    3: _one_row_short,
    4: _count_above_range,
    6: lambda reply: _set_round_field(reply, "label_bits", _bits(reply) - 1),
    7: _decompression_bomb,
    8: lambda reply: _set_round_field(reply, "public_hash", "0" * 64),
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
