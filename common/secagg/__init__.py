"""Secure aggregation (SecAgg+): primitives, settings and the protocol's shared vocabulary."""

from common.secagg.errors import NO_KEY_EPOCH, SecAggAbort, SecAggRefusal
from common.secagg.params import SecAggParams

STAGES = ("advertise", "share-keys", "masked-input", "consistency", "unmask", "done")
"""Protocol stages in order; all but "done" are one server request and one client reply each.
A key epoch runs the first two once, then the next three once per round (slot)."""

MAX_SLOTS = 64
"""Most rounds one key epoch may cover (a client refuses more: its set-up cost grows with R)."""

__all__ = ["MAX_SLOTS", "NO_KEY_EPOCH", "STAGES", "SecAggAbort", "SecAggParams", "SecAggRefusal"]
