"""Temporary files and staging folders beside an output: their names, and the removal of those a killed run left.

Every temporary file (`fileio.atomic_path`) and staging folder (`staging_dir`) is named
`.NAME.siefpn-tmp.PID@HOST.XXXXXXXX[.tmp]`: beside NAME, hidden, and saying which process on which machine owns
it. A run that is killed (SIGKILL, a power cut) cannot remove its own, so the next export or quantize into the
same folder calls `remove_stale`, which removes those whose owner is no longer running.

Why the owner's pid rather than an age: a dead pid is certain at once (an export killed a minute ago leaves
51 MB that the rerun can remove), where any age limit either removes a slow run's live folder or keeps a dead
one for hours. The host is in the name because a pid means something only on its own machine: in a folder
shared between machines (NFS) another host's entries are never touched. A recycled pid only keeps an entry
until that process ends too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

TAG = "siefpn-tmp"
_OWNED = re.compile(rf"^\..+\.{TAG}\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.")


def _host() -> str:
    """This machine's name as it goes into a file name (letters, digits and dashes)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def staging_prefix(name: str) -> str:
    """The start of a temporary name beside `name`; mkstemp/mkdtemp add the random part."""
    return f".{name}.{TAG}.{os.getpid()}@{_host()}."


@contextlib.contextmanager
def staging_dir(output: str | os.PathLike) -> Iterator[Path]:
    """A private folder beside `output` (same file system: its files can be renamed into place), removed on exit."""
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=staging_prefix(output.name), dir=output.parent))
    except OSError as e:
        raise UserError(f"cannot write to {output.parent}: {e.strerror or e}") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_entries(folder: str | os.PathLike) -> list[Path]:
    """The temporary files and staging folders in `folder` whose owner ran on this machine and has ended."""
    folder, host = Path(folder), _host()
    try:
        names = os.listdir(folder)
    except OSError:  # no folder yet: nothing to remove
        return []
    owned = [(name, _OWNED.match(name)) for name in names]
    return [folder / name for name, m in owned
            if m and m["host"] == host and int(m["pid"]) != os.getpid() and not _running(int(m["pid"]))]


def remove_stale(folder: str | os.PathLike, *, log=print, stage: str = "") -> list[Path]:
    """Remove what `stale_entries` finds and say so in one line; returns what was removed."""
    removed = []
    for path in stale_entries(folder):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        if not os.path.lexists(path):
            removed.append(path)
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        log(f"{f'[{stage}] ' if stage else ''}removed {len(removed)} temporary file(s) of ended runs from "
            f"{Path(folder)}: {names}")
    return removed
