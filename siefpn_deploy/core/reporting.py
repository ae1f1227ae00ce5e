"""The one report writer: NAME.json (everything), NAME.md (what a person reads) and NAME.png (a plot),
each written atomically, for parity, bench and the benchmark scripts.

Plots are drawn on a `matplotlib.figure.Figure` without pyplot, so writing a report never switches the
user's matplotlib backend; without matplotlib there is no PNG, and everything else is written.
"""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cpu import bf16_units, cpu_model
from .fileio import atomic_path, atomic_write, write_json


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def source_commit() -> str | None:
    """The git commit of the siefpn-deploy checkout being measured (with "+changes" when it has
    uncommitted ones), or None outside a git checkout. $SIEFPN_SOURCE_COMMIT names it for a copy of the tree
    without its .git (a copy sent to another machine)."""
    import os
    import subprocess

    if os.environ.get("SIEFPN_SOURCE_COMMIT"):
        return os.environ["SIEFPN_SOURCE_COMMIT"]
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if dirty else "") if commit else None


def machine() -> dict[str, Any]:
    """Where and on what a measurement ran: date, CPU architecture, threads, versions, the GPU if any, and
    the commit."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpu": cpu_model(), "cpu_bf16": bf16_units(),
            "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "gpu": gpu, "commit": source_commit()}


def machine_line(m: dict[str, Any]) -> str:
    """e.g. "2026-11-25T20:00:00, x86_64 (Intel(R) Xeon(R) Processor, bf16 on AMX), 2 threads, torch 2.14.1,
    commit 1a2b3c4" (+ the GPU)."""
    cpu = ", ".join(filter(None, [m.get("cpu"), m.get("cpu_bf16") and f"bf16 on {m['cpu_bf16']}"]))
    return (f"{m['date']}, {m['machine']}" + (f" ({cpu})" if cpu else "") + f", {m['threads']} threads, "
            f"torch {m['torch']}" + (f", {m['gpu']}" if m["gpu"] else "") + (f", commit {m['commit']}" if m.get("commit") else ""))


def write_report(folder: str | Path, name: str, *, data: dict[str, Any], markdown: str,
                 plot: Callable[[Any], None] | None = None) -> list[Path]:
    """folder/name.json, folder/name.md and, when `plot` is given and matplotlib is installed,
    folder/name.png drawn by plot(figure). Returns the paths written."""
    folder = Path(folder)
    written = [write_json(folder / f"{name}.json", json.loads(json.dumps(data, default=str))),
               atomic_write(folder / f"{name}.md", lambda tmp: tmp.write_text(markdown))]
    if plot is not None:
        try:
            from matplotlib.figure import Figure
        except ImportError:
            return written
        figure = Figure(figsize=(7, 4.5))
        plot(figure)
        figure.tight_layout()
        with atomic_path(folder / f"{name}.png") as tmp:
            figure.savefig(tmp, format="png", dpi=110)
        written.append(folder / f"{name}.png")
    return written


def write_benchmark_report(path: str | Path, *, title: str, body: str, command: str,
                           data: dict[str, Any] | None = None, plot: Callable[[Any], None] | None = None) -> str:
    """A benchmark script's result: markdown titled with the date, machine, versions and commit, its body
    (tables and notes) and the command that measured it, printed and written as path (.md) beside a .json."""
    import onnxruntime

    path = Path(path)
    m = machine()
    report = (f"# {title} ({machine_line(m)}, onnxruntime {onnxruntime.__version__})\n\n{body.strip()}\n\n"
              f"Command: `{command}`\n")
    print("\n" + report)
    write_report(path.parent, path.stem, data={"title": title, "machine": m, "command": command, **(data or {})},
                 markdown=report, plot=plot)
    return report
