"""Federated-distillation methods: one module each, a registry to choose them by name.

Every method is a `Method` (see `common.methods.base`): what a client reports per queried
public row and how the server turns the secure per-row sums into ensemble rows. Both apps,
the in-process engine and the benchmarks call these rules; nothing else decides them.
"""

from __future__ import annotations

from common.methods import certainty, dsfl, fedmd, selective
from common.methods.base import ClientView, Ensemble, Method

METHODS: dict[str, Method] = {
    module.METHOD.name: module.METHOD for module in (fedmd, dsfl, selective, certainty)
}
METHOD_NAMES = tuple(METHODS)


def get_method(name: str) -> Method:
    """The method registered as `name`; ValueError naming the allowed ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {METHOD_NAMES}")
    return METHODS[name]


__all__ = ["METHODS", "METHOD_NAMES", "ClientView", "Ensemble", "Method", "get_method"]
