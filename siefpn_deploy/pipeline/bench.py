"""Stages: latency of artifacts over batches and sizes (`siefpn-deploy bench`), and the ranking of them by speed
within each AP budget, joined with a parity report (`bench --parity`): the CPU and GPU rankings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.openvino import Runtimes

REPORT_DIR = Path("reports/bench")


@dataclass(frozen=True)
class BenchJob:
    artifacts: tuple[Path, ...]  # .onnx, .pt2, .plan or a .pth checkpoint
    batches: tuple[int, ...] = (1, 4)
    sizes: tuple[int, ...] = (320,)  # square inputs, SIZE x SIZE
    warmup: int = 3  # untimed runs first
    iters: int = 20  # timed runs per setting
    device: str = "auto"  # auto, cpu or cuda
    config_file: str | Path | None = None  # a .pth's config; None: the config.yaml beside it
    cpp: bool = False  # also each .pt2 through the C++ runtime (siefpn-infer)
    runtimes: Runtimes = None  # what runs each .onnx (core.openvino.Runtimes): all alike, per file, or its own
    gau_memory: bool = False  # also the GAU attention's memory at 800x1333
    report_dir: Path = REPORT_DIR


@dataclass(frozen=True)
class BenchResult:
    report: dict[str, Any]  # bench.json's content: one row per artifact variant, batch and size
    written: list[Path]


@dataclass(frozen=True)
class RankResult:
    ranking: dict[str, Any]  # ranking.json's content: per batch, size and budget the fastest artifact within it
    written: list[Path]


def bench_artifacts(job: BenchJob, *, log=print) -> BenchResult:
    import torch

    from ..runtime.bench import gau_memory, run_bench, write_bench_report

    report = run_bench([Path(a) for a in job.artifacts], batches=list(job.batches), sizes=list(job.sizes),
                       warmup=job.warmup, iters=job.iters, device=job.device,
                       config=str(job.config_file) if job.config_file else None, cpp=job.cpp,
                       runtimes=job.runtimes, log=log)
    if job.gau_memory:
        on_gpu = job.device != "cpu" and torch.cuda.is_available()
        report["gau_memory"] = gau_memory(device="cuda" if on_gpu else "cpu")
    return BenchResult(report=report, written=write_bench_report(report, Path(job.report_dir)))


def rank_artifacts(bench: dict[str, Any], parity: dict[str, Any], report_dir: Path = REPORT_DIR) -> RankResult:
    """The fastest artifact within each of the parity report's budgets, at each batch and size (ranking.md)."""
    from ..parity.rank import rank, write_ranking

    ranking = rank(bench, parity)
    return RankResult(ranking=ranking, written=write_ranking(ranking, Path(report_dir)))
