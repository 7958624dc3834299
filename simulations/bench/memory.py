"""Peak memory of this process and all its descendants, sampled from /proc in a thread.

Two sums are kept per sample: RSS (resident set; pages shared between processes, e.g. the
torch libraries every worker maps, count once per process, so it overstates) and PSS
(proportional set size; shared pages split between the processes that map them, so the sum is
the tree's real footprint). Linux only: without /proc both peaks stay 0.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

from simulations.processes import descendants

PROC = Path("/proc")


def tree_memory(root_pid: int) -> tuple[int, int, int]:
    """(RSS bytes, PSS bytes, process count) summed over the process tree of `root_pid`."""
    rss = pss = count = 0
    for pid in [root_pid, *descendants(root_pid)]:
        try:
            process_rss, process_pss = _rss_and_pss(pid)
        except (OSError, ValueError, IndexError, KeyError):  # exited, or no smaps (kernel)
            continue
        rss += process_rss
        pss += process_pss
        count += 1
    return rss, pss, count


def _rss_and_pss(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of one process, both from one read of smaps_rollup.

    One read matters: the kernel fills both lines in the same page walk, so PSS <= RSS holds
    in every sample (statm read a moment apart from smaps_rollup broke that while memory moved).
    """
    fields = {}
    for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            fields[name] = int(rest.split()[0]) * 1024
    return fields["Rss"], fields["Pss"]


class PeakMemory:
    """Context manager sampling the tree of this process every `interval` seconds.

    Attributes
    ----------
    peak_rss, peak_pss : largest sums seen, in bytes.
    peak_processes : most processes seen at once.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> PeakMemory:
        if PROC.exists():
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample_until_stopped(self) -> None:
        pid = os.getpid()
        while True:
            rss, pss, count = tree_memory(pid)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, count)
            if self._stop.wait(self.interval):
                return
