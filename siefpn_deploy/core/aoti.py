"""The one AOTInductor package loader: export verification and the runtime open `.pt2` packages here.
torch._inductor is imported on first use."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


def load_package(path: str | Path, output_names: tuple[str, ...], *, device: str = "cpu"
                 ) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A compiled package as `run(feeds) -> outputs`, both keyed by the contract's names (feeds in the package's
    input order). A package this torch cannot load is a one-line UserError."""
    from torch._inductor import aoti_load_package

    if not zipfile.is_zipfile(path):  # before torch, which logs its own warnings on a damaged archive
        raise UserError(f"cannot load the AOTInductor package {path}: not a complete zip archive (truncated, or "
                        "not a .pt2)")
    try:
        model = aoti_load_package(str(path))
    except Exception as e:  # noqa: BLE001 - a truncated zip, another torch's package, a missing library
        raise UserError(f"cannot load the AOTInductor package {path}: {str(e).strip().splitlines()[0]}") from None
    target = torch.device(device)

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = model(*(torch.from_numpy(v).to(target) for v in feeds.values()))
        return {name: t.cpu().numpy() for name, t in zip(output_names, outputs)}

    return run
