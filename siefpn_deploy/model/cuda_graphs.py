"""CUDA-graph replay of the detector's backbone and neck, for the PyTorch runtime on a GPU.

A torchvision detector cannot be captured whole: its postprocessing (score filtering, NMS, RoI
sampling) has data-dependent shapes and synchronises with the host. The backbone and the Dual SIE-FPN
neck are static for a given input shape, and they are most of the work, so they are captured once
per input shape and replayed; the heads and postprocessing run eagerly on the replayed features.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
from torch import Tensor, nn


class GraphedBackbone:
    """Callable like `backbone(x) -> OrderedDict[level, Tensor]`. The returned tensors are the graph's
    static outputs: they are overwritten by the next call, so consume them before calling again."""

    def __init__(self, backbone: nn.Module, *, autocast_dtype: torch.dtype | None = None, warmup: int = 3) -> None:
        self.backbone = backbone
        self.autocast_dtype = autocast_dtype
        self.warmup = warmup
        # (shape, dtype) -> (graph, static input, static outputs)
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, OrderedDict[str, Tensor]]] = {}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # the weight-cast cache must be off while capturing: cached casts would live outside the graph
        return torch.autocast("cuda", dtype=self.autocast_dtype, cache_enabled=False)

    def capture(self, x: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, OrderedDict[str, Tensor]]:
        static_in = x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode(), self.autocast():
            for _ in range(self.warmup):  # cuDNN picks its algorithms and the allocator settles first
                self.backbone(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode(), self.autocast():
            static_out = self.backbone(static_in)
        return graph, static_in, static_out

    def __call__(self, x: Tensor) -> OrderedDict[str, Tensor]:
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            self.graphs[key] = self.capture(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out
