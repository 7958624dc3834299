"""Loggers that reach Flower's log stream (so `flwr run --stream` and `flwr log` show them)."""

from __future__ import annotations

import logging
import re


def get_logger(module_name: str) -> logging.Logger:
    """A logger under Flower's `flwr` logger, which owns the handlers in every Flower process."""
    return logging.getLogger(f"flwr.feddistill.{module_name}")


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Refusal|Mismatch|Interrupt)\b.*")
MAX_SUMMARY = 500
_FLOWER_WRAPPER = "occurred. Message: "


def error_summary(reason: str) -> str:
    """One line for a client's error as results record it (metrics.csv, summary.json): the
    exception's message inside Flower's ClientApp wrapper, else the last `SomeError: …` line of
    a traceback, else the last non-empty line; whitespace collapsed, cut at MAX_SUMMARY
    characters. The whole text belongs in the log only."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    # Flower wraps a ClientApp's exception as "… occurred. Message: <the exception's text>".
    wrapped = [line.split(_FLOWER_WRAPPER, 1)[1] for line in lines if _FLOWER_WRAPPER in line]
    exception_lines = [line for line in lines if _EXCEPTION_LINE.match(line)]
    chosen = wrapped[-1].removesuffix("'>") if wrapped else (exception_lines or lines)[-1]
    line = " ".join(chosen.split()) or "no reason given"
    return line if len(line) <= MAX_SUMMARY else line[: MAX_SUMMARY - 1] + "…"
