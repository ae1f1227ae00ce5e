"""Training throughput: images/s of the real training step (`Trainer.step`, data loading included) and peak
memory, for benchmarks/bench_train.py and benchmarks/bench_gpu.py."""

from __future__ import annotations

import time

import torch

from ..core.timing import peak_rss_mib
from .trainer import Trainer


def throughput(trainer: Trainer, *, iters: int, warmup: int) -> dict[str, float]:
    """Images/s over `iters` training steps after `warmup` untimed ones; peak host RSS (the process's so far)
    and, on CUDA, peak device memory."""
    model, data = trainer.model.train(), iter(trainer.loader())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0, seen = 0.0, 0
    for i in range(warmup + iters):
        if i == warmup:
            t0, seen = time.perf_counter(), 0
        images, targets = next(data)
        trainer.step(model, images, targets)
        seen += len(images)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    out = {"images_per_s": seen / (time.perf_counter() - t0), "peak_rss_mib": peak_rss_mib()}
    if torch.cuda.is_available():
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out
