"""The processes a server started, found and ended: tritonserver's Python-backend stubs outlive tritonserver
when it stops before they do (they are its children, and an orphan is adopted by init), so `DetectorServer`
notes its process tree while everything runs and ends whatever of it is left after the stop.

Linux only (it reads /proc); elsewhere the tree is empty and nothing is ended.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

# /proc/PID/stat after the ")" that closes the command name: state is field 0, the parent's pid field 1, the
# session 3, and the start time (clock ticks since boot, which tells a pid apart from a later process given the
# same pid) 19
STATE_FIELD, PPID_FIELD, SESSION_FIELD, START_FIELD = 0, 1, 3, 19


def _fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after the command name, or None for a process that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _stat(pid: int | str) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, or None."""
    fields = _fields(pid)
    return None if fields is None else (int(fields[PPID_FIELD]), int(fields[START_FIELD]))


def process_tree(root: int, *, min_depth: int = 1) -> dict[int, int]:
    """{pid: start time} of `root`'s descendants now: children are depth 1, grandchildren 2, and so on."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(entry.name)
        if stat is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: dict[int, int] = {}
    todo = [(root, 0)]
    while todo:
        parent, depth = todo.pop()
        for pid, start in children.get(parent, []):
            if depth + 1 >= min_depth:
                found[pid] = start
            todo.append((pid, depth + 1))
    return found


def still_running(tree: dict[int, int]) -> list[int]:
    """The processes of `tree` still alive (same pid and start time; a zombie of ours counts as gone)."""
    alive = []
    for pid, start in tree.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == start and _state(pid) != "Z":
            alive.append(pid)
    return alive


def _state(pid: int | str) -> str:
    fields = _fields(pid)
    return "X" if fields is None else fields[STATE_FIELD]


def session_members(sid: int) -> list[str]:
    """'pid name' of each live process of session `sid`: a server started in a session of its own
    (`launch.serve_process`) has left nothing behind once this is empty after it exits."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _fields(entry.name)
        if fields is not None and int(fields[SESSION_FIELD]) == sid and fields[STATE_FIELD] != "Z":
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            found.append(f"{entry.name} {name}")
    return found


def end_processes(tree: dict[int, int], grace_s: float) -> list[int]:
    """SIGTERM what is left of `tree`, SIGKILL what is still there after `grace_s`; the pids it had to end."""
    left = still_running(tree)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while still_running({p: tree[p] for p in left}) and time.monotonic() < deadline:
            time.sleep(0.05)
    return left
