"""Wall-clock latency of a callable (warm-up runs, then the distribution of timed runs) and the process's
peak host memory."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Latency:
    """Seconds of `runs` timed calls."""

    runs: tuple[float, ...]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.runs)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

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


def measure_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int, iters: int) -> dict[str, Latency]:
    """`measure` for several callables taking turns, one run each per round: on a shared machine, load that
    comes and goes then falls on every callable alike, so their ratios hold where back-to-back timing's drift.
    For callables of one runtime (one thread pool); for different runtimes, `measure_rotating`."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t)
    return {name: Latency(tuple(r)) for name, r in runs.items()}


def measure_rotating(fns: dict[str, Callable[[], object]], *, warmup: int, iters: int,
                     rounds: int) -> dict[str, Latency]:
    """Several callables, each timed back to back in blocks (`warmup` untimed runs, then its share of `iters`),
    the blocks taking turns over `rounds` rounds. Taking turns call by call distorts callables of different
    runtimes: one runtime's workers keep spinning after its call and slow the next one's, and a call after a pause
    pays for waking threads. In blocks each callable runs as deployed, back to back, and a change in the machine's
    speed still falls on every callable alike. Never more rounds than timed runs: a round with no timed run
    would be warm-up alone."""
    runs: dict[str, list[float]] = {name: [] for name in fns}
    rounds = max(1, min(rounds, iters))
    for r in range(rounds):
        share = iters // rounds + (1 if r < iters % rounds else 0)
        for name, fn in fns.items():
            runs[name] += measure(fn, warmup=warmup, iters=share).runs
    return {name: Latency(tuple(r)) for name, r in runs.items()}


def reset_peak_rss() -> None:
    """Linux: restart the process's peak-RSS counter (VmHWM), so each setting reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak is the process's so far


def peak_rss_mib() -> float:
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
