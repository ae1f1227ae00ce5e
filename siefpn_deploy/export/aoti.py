"""`export --format aoti`: the deploy wrapper through torch.export and AOTInductor into one NAME.pt2.

The package holds the same graph as NAME.onnx (the contract's two inputs and padded outputs, dynamic batch
and H, W multiples of the divisibility, normalisation, decoding and NMS inside). Three parts differ from
the ONNX ones because a compiled package runs kernels, not Python: NMS is `export.nms.KernelNMS` (torchvision's
NMS kernel per image, or per batch where the batch is symbolic; `--nms loop`: `LoopNMS`, a torch.while_loop of
the greedy steps), RoIAlign calls torchvision's roi_align kernel (on the CPU at a fixed sampling ratio: the
"bag" lowering, `export.roi_align`), and Mask R-CNN's mask head runs on a row
bucket that holds the batch's detections (`export.rcnn.MaskDecoder`, on_detections). The C++ runtime loads
torchvision's operators for the first two. The package's own
metadata holds the meta.json written beside it (key `siefpn_deploy.meta`), so a C++ program that has only
the package still reads the contract.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.contract import IMAGE_SIZES, INPUT
from ..core.errors import UserError
from ..core.sidecar import PACKAGE_META_KEY
from .options import ExportOptions
from .shapes import dynamic_shapes, example_shape


def compile_settings(device_type: str) -> dict[str, Any]:
    """AOTInductor's settings for a package on `device_type`, part of an export's request (a package compiled with
    others is not reused). CPU: freezing folds the weights into the package as constants and runs the convolutions
    and linear layers as oneDNN's fused ops on prepacked weights (mkldnn._convolution_pointwise), where without it
    they are plain aten convolutions: RetinaNet's static batch-4 package ran in 0.67x eager's time against 0.72x
    (benchmarks/results/aoti_cpu_static_quiet.md). CUDA packages compile as before: freezing them was not measured
    (no GPU here)."""
    return {"freezing": device_type == "cpu"}


def compile_package(deploy: nn.Module, options: ExportOptions, path: Path, meta: dict[str, Any], *,
                    log=print) -> dict[str, Any]:
    """torch.export (symbolic batch, H, W) -> aoti_compile_and_package into `path`; returns meta's "export"."""
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: there is no CUDA device here; compile a CPU package with --device cpu")
    shape = example_shape(options)
    example = (torch.rand(shape, device=device) * options.input_scale,
               torch.tensor([shape[2:]] * shape[0], dtype=torch.int32, device=device))
    deploy = deploy.to(device)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.export.export(deploy, example, dynamic_shapes=dynamic_shapes(options))
    except Exception as e:  # torch.export's messages are pages long; keep the first line
        raise UserError(f"torch.export failed: {str(e).strip().splitlines()[0]}") from e
    traced = time.perf_counter() - t0
    log(f"[export] torch.export in {traced:.1f} s; compiling with AOTInductor for {device.type} (a minute or more)")
    # the package's own copy of meta.json, for a program that has only the package (the C++ runtime): the
    # device it runs on is part of it; the compile times and the verification are written to meta.json after
    package_meta = {PACKAGE_META_KEY: json.dumps({**meta, "export": {"device": device.type},
                                                  "inputs_order": [INPUT, IMAGE_SIZES]})}
    settings = compile_settings(device.type)
    configs = {"aot_inductor.metadata": package_meta, **settings}
    try:
        # Inductor freezes only with grad off
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)
    except Exception as e:  # a compiler failure is reported in one line, the cause chained
        raise UserError(f"AOTInductor compilation failed: {str(e).strip().splitlines()[0]}") from e
    compiled = time.perf_counter() - t0 - traced
    log(f"[export] compiled in {compiled:.1f} s")
    return {"seconds": round(traced + compiled, 2), "trace_seconds": round(traced, 2),
            "compile_seconds": round(compiled, 2), "example_shape": list(shape), "device": device.type,
            "inductor": settings}
