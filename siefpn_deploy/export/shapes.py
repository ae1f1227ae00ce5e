"""The shapes an export traces with: the example input and the symbolic dims, shared by both formats
(ONNX through torch.onnx's dynamo exporter, the AOTInductor package through torch.export)."""

from __future__ import annotations

from typing import Any

from ..core.contract import IMAGE_SIZES, INPUT
from .options import ExportOptions

EXAMPLE_BATCH = 2  # >= 2, or the dynamo exporter specialises the batch dimension to 1


def dynamic_shapes(options: ExportOptions) -> dict:
    """torch.export's dynamic_shapes for (images [B,3,H,W], image_sizes [B,2]): symbolic batch, and H, W as
    multiples of the divisibility, so every pyramid level stays exactly 2x the next."""
    from torch.export import Dim

    dims: dict[int, Any] = {}
    sizes: dict[int, Any] = {}
    if not options.batch.static:
        dims[0] = sizes[0] = Dim("batch", min=options.batch.min, max=options.batch.max)
    div = options.divisibility
    for axis, name, r in ((2, "height", options.height), (3, "width", options.width)):
        if not r.static:
            dims[axis] = div * Dim(f"{name}_{div}", min=r.min // div, max=r.max // div)
    return {INPUT: dims, IMAGE_SIZES: sizes}


def example_shape(options: ExportOptions) -> tuple[int, int, int, int]:
    batch = options.batch.min if options.batch.static else max(EXAMPLE_BATCH, options.batch.min)
    # H != W where the ranges allow: a square example lets the tracer conflate the two dims unnoticed
    pick = lambda r, target: r.min if r.static else min(r.max, max(r.min, target))
    return (batch, 3, pick(options.height, 256), pick(options.width, 320))
