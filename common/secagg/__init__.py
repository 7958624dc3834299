"""Secure aggregation (SecAgg+): primitives, settings and the protocol's shared vocabulary."""

from common.secagg.errors import SecAggAbort, SecAggRefusal
from common.secagg.params import SecAggParams

STAGES = ("advertise", "share-keys", "masked-input", "consistency", "unmask", "done")
"""Protocol stages in order; all but "done" are one server request and one client reply each."""

__all__ = ["STAGES", "SecAggAbort", "SecAggParams", "SecAggRefusal"]
