"""Report helpers shared by the parity report, the bench command and the benchmark scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .fileio import atomic_path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed (plots are optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: Path) -> None:
    """A PNG written atomically; the figure is closed."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)


def write_benchmark_report(path: str | Path, *, title: str, description: str, header: Sequence[str],
                           rows: Sequence[Sequence[Any]], command: str) -> str:
    """A benchmark's markdown: title with date, machine and versions, how it was measured, the table and
    the command that measured it; printed and written atomically to `path`."""
    import datetime
    import platform

    import onnxruntime
    import torch

    from .fileio import atomic_write

    report = (f"# {title} ({datetime.date.today().isoformat()}, {platform.machine()}, {torch.get_num_threads()} "
              f"threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__})\n\n{description}\n\n"
              f"{markdown_table(header, rows)}\n\nCommand: `{command}`\n")
    print("\n" + report)
    atomic_write(path, lambda tmp: tmp.write_text(report))
    return report
