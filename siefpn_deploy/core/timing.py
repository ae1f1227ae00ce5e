"""Wall-clock latency of a callable: warm-up runs, then the distribution of timed runs."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Latency:
    """Seconds of `runs` timed calls."""

    runs: tuple[float, ...]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.runs)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.runs) * 1e3


def measure(fn: Callable[[], object], *, warmup: int, iters: int, sync: Callable[[], None] = lambda: None) -> Latency:
    """`sync` waits for queued device work (e.g. torch.cuda.synchronize) before each clock read."""
    for _ in range(warmup):
        fn()
    sync()
    runs = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - t)
    return Latency(tuple(runs))
