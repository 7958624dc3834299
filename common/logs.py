"""Loggers that reach Flower's log stream (so `flwr run --stream` and `flwr log` show them)."""

from __future__ import annotations

import logging


def get_logger(module_name: str) -> logging.Logger:
    """A logger under Flower's `flwr` logger, which owns the handlers in every Flower process."""
    return logging.getLogger(f"flwr.feddistill.{module_name}")
