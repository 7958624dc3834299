"""Crash-safe file writes."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers only ever see a complete file (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npz(path: Path, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """Write a dataset file atomically: `x` (N, ...) and, when given, labels `y` (N,); an
    x-only file is an unlabelled public set (`common.data_sources.load_npz` reads both)."""
    buffer = io.BytesIO()
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
