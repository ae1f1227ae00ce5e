"""Atomic writes: every artifact is written to a temporary file in the same folder, then renamed. The temporary
file's name says which process owns it (staging.py), so one that a killed run left is removed by the next."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import UserError
from .staging import staging_prefix


def user_cache_dir() -> Path:
    """~/.cache/siefpn-deploy (or $XDG_CACHE_HOME/siefpn-deploy): what this tool keeps between runs."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "siefpn-deploy"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=staging_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; an artifact gets the usual permissions
    tmp = Path(tmp)
    try:
        yield tmp
        # the bytes reach the disk before the name does, and the rename itself is made durable: after a crash
        # or power loss the path holds the old file or the whole new one, never a named empty file
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, folder=True)
    except OSError as e:  # a full disk, a quota, a file-size limit: one line, and the old file stays
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path, *, folder: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    except OSError:
        if folder:  # best effort for a folder: some file systems cannot open or sync one
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """indent=None writes compact JSON (large files: one polygon number per line adds up)."""
    separators = None if indent is not None else (",", ":")
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=indent, separators=separators) + "\n"))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, turning a missing or malformed file into a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None


def load_torch_file(path: str | os.PathLike, what: str) -> Any:
    """`torch.load(weights_only=True)` on the CPU; a missing or unloadable file is a one-line UserError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and weights_only errors: each becomes one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"cannot load {what} {path} (not a torch file?): {type(e).__name__}: {first}") from None


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickle of numpy arrays needs: the ndarray/dtype/scalar reconstructors, under the names
    numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`) pickle them with."""
    import numpy as np

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    import codecs

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           # protocol 2 spells an array's raw bytes as codecs.encode(latin1 text)
                                           ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


def load_numpy_pickle(path: str | os.PathLike, what: str) -> Any:
    """A pickle of plain containers (dict, list, str, numbers) and numpy arrays, read with an unpickler that
    resolves no other global: a pickle asking for anything else (os.system, a class, a function) is refused
    with a one-line UserError before any of it runs. Python 2 pickles (Caffe2's R-50.pkl) read as latin1."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    allowed = _numpy_globals()

    class NumpyOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in allowed:
                raise pickle.UnpicklingError(f"it asks for {module}.{name}; only numpy arrays are allowed")
            return allowed[(module, name)]

    try:
        with path.open("rb") as f:
            return NumpyOnly(f, encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - a truncated, foreign or malicious pickle: each becomes one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refused {what} {path}: {first}") from None
