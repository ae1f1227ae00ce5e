"""`--num-gpus N`: N processes with torch.distributed; NCCL on GPUs, gloo on the CPU."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..core.errors import UserError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_for(rank: int) -> torch.device:
    return torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")


def _worker(rank: int, world_size: int, port: int, errors: Any, fn: Callable, args: tuple) -> None:
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(rank)
    else:  # share the CPU cores between the processes instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(
        "nccl" if use_cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
        world_size=world_size, timeout=timedelta(minutes=10),
    )
    try:
        fn(*args, rank=rank, world_size=world_size)
    except UserError as e:
        errors.put(str(e))
    finally:
        dist.destroy_process_group()


def launch(fn: Callable, args: tuple, *, num_processes: int) -> None:
    """Call `fn(*args, rank=, world_size=)` in this process, or in `num_processes` spawned ones."""
    if num_processes < 1:
        raise UserError(f"--num-gpus must be >= 1, got {num_processes}")
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise UserError(f"--num-gpus {num_processes} but only {torch.cuda.device_count()} CUDA devices are visible")
    if num_processes == 1:
        fn(*args, rank=0, world_size=1)
        return
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    mp.spawn(_worker, args=(num_processes, _free_port(), errors, fn, args), nprocs=num_processes, join=True)
    if not errors.empty():
        raise UserError(errors.get())
