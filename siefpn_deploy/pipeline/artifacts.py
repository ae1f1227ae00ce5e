"""What the artifact-making stages return."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Artifact:
    path: Path  # NAME.onnx, NAME.pt2 or NAME.plan
    meta: dict[str, Any]  # its sidecar (NAME.meta.json, NAME.engine.json)
    reused: bool = False  # True: an earlier run's artifact answered the same request from the same input
