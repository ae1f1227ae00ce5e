"""When a stage may return what an earlier run left instead of making it again: the artifact's sidecar says
it answers the same request (`core.sidecar.request_key`) from the same input (its sha256)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.sidecar import read_meta


def current_meta(path: Path, expected: dict[tuple[str, ...], Any]) -> dict[str, Any] | None:
    """The meta.json of `path` when it is intact (its sha256 matches the file) and meta[key...] equals the value
    for every key path in `expected`; None when the artifact must be made (again)."""
    try:
        meta = read_meta(path)
    except UserError:  # missing, damaged or describing another file
        return None
    for keys, value in expected.items():
        node: Any = meta
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node != value:
            return None
    return meta
