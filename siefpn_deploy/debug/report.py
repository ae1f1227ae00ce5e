"""`debug compare`'s report: compare.json (every compared tensor, in graph order, and the findings), compare.md
and compare.png (the error along depth), through `core.reporting.write_report`."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from ..core.reporting import machine, machine_line, markdown_table, write_report
from .compare import WORST, Comparison, Row

NAME = "compare"  # compare.json, compare.md, compare.png
EXAMPLES = 3  # skipped tensors named per reason


def default_folder(a: Path, b: Path) -> Path:
    return Path("reports/debug") / f"{a.stem}_vs_{b.stem}"


def row_data(c: Comparison, row: Row) -> dict[str, Any]:
    e = row.error
    return {"tensor": row.tensor, "position": row.producer.position, "node": row.producer.node, "op": row.producer.op,
            "reduced_precision": row.reduced, "shape": list(row.shape), "max_abs": e.max_abs, "mean_abs": e.mean_abs,
            "cosine": e.cosine, "sqnr_db": e.sqnr_db, "nsr": e.nsr, "non_finite_mismatches": e.mismatched,
            "over_tolerance": c.over(row), "after_selection": row.after_selection, "added_error": c.added(row)}


def _precision(meta: dict[str, Any]) -> str:
    target = meta.get("quantization", {}).get("target")
    return meta.get("precision", "fp32") + (f" ({target})" if target and meta.get("precision") == "int8" else "")


def quantize_command(c: Comparison) -> str | None:
    """The quantize command that makes B again with the suggested exclusions, when B is a quantized A."""
    quantization = c.b.meta.get("quantization")
    if not c.suggested_excludes or not quantization:
        return None
    target = ["--target", quantization["target"]] if quantization.get("target") else []
    excludes = [arg for regex in c.suggested_excludes for arg in ("--exclude", regex)]
    return shlex.join(["siefpn-deploy", "quantize", "--onnx", str(c.a.path), "--precision", c.b.meta["precision"],
                       *target, *excludes])


def report_data(c: Comparison) -> dict[str, Any]:
    first = c.first_over
    return {
        "a": {"path": str(c.a.path), "precision": _precision(c.a.meta)},
        "b": {"path": str(c.b.path), "precision": _precision(c.b.meta)},
        "images": [str(p) for p in c.images],
        "scope": "the graph outputs (one side is a PyTorch checkpoint)" if c.outputs_only else "every tensor both graphs name alike",
        "tolerance": {"metric": c.tolerance.metric, "limit": c.tolerance.limit, "text": str(c.tolerance)},
        "first_over_tolerance": first and row_data(c, first),
        "worst": [row_data(c, r) for r in c.worst],
        "onsets": [r.tensor for r in c.onsets],
        "suggested_excludes": c.suggested_excludes,
        "quantize_command": quantize_command(c),
        "over_tolerance": len(c.over_tolerance),
        "after_selection": len(c.rows) - len(c.considered),
        "integer_tensors": {"count": len(c.integers), "differing": c.differing},
        "tensors": [row_data(c, r) for r in c.rows],
        "skipped": {why: {"count": len(names), "examples": names[:EXAMPLES]} for why, names in c.skipped.items()},
        "machine": machine(),
    }


def _num(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _db(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _cells(c: Comparison, row: Row) -> list[str]:
    e = row.error
    verdict = "after selection" if row.after_selection else "**over**" if c.over(row) else ""
    return [f"`{row.tensor}`", f"`{row.producer.node}`", row.producer.op, "yes" if row.reduced else "",
            _num(e.max_abs), _num(e.mean_abs), f"{e.cosine:.6f}", _db(e.sqnr_db), verdict]


CELLS = ["tensor", "node", "op", "reduced", "max abs", "mean abs", "cosine", "SQNR dB", "tolerance"]


def _line(c: Comparison, row: Row) -> str:
    worst_in = max(c.inputs(row), key=lambda i: c.tolerance.of.badness(i.error), default=None)
    value = c.tolerance.of.value
    return (f"`{row.tensor}` from `{row.producer.node}` ({row.producer.op}): {c.tolerance.of.label} "
            f"{_num(value(row.error))}" + (f" (its worst input: {_num(value(worst_in.error))})" if worst_in else ""))


def markdown(c: Comparison, data: dict[str, Any]) -> str:
    skipped = "; ".join(f"{v['count']} {why}" + (f" (e.g. `{v['examples'][0]}`)" if v["examples"] else "")
                        for why, v in data["skipped"].items() if v["count"])
    text = (f"# debug compare: {c.a.path.name} vs {c.b.path.name}\n\n"
            f"A `{c.a.path}` ({data['a']['precision']}), the reference; B `{c.b.path}` ({data['b']['precision']}); "
            f"{len(c.images)} images from `{c.images[0].parent}`. ONNX models ran in ONNX Runtime on the CPU without "
            f"graph optimisation (Q/DQ pairs compute what they describe in float). Compared: {len(c.rows)} tensors, "
            f"{data['scope']}, in A's graph order, and {len(c.integers)} integer or boolean tensors (shapes, "
            f"indices, selections) checked for equality. Not compared: {skipped or 'nothing'}.\n\n"
            f"Tolerance: {c.tolerance}. Over it: {data['over_tolerance']} of {len(c.considered)} tensors.\n\n")
    if c.differing:
        text += (f"{len(c.differing)} integer or boolean tensors differ in B (e.g. `{c.differing[0]}`): a TopK or the "
                 f"NMS picked other candidates. The {data['after_selection']} float tensors computed from them compare "
                 "other candidates, not rounding: they are marked \"after selection\" and left out of the findings.\n\n")
    first = c.first_over
    text += (f"**First over tolerance:** {_line(c, first)}.\n\n" if first else
             "**Nothing is over tolerance.**\n\n")
    if c.onsets:
        text += ("**Where the error starts** (over tolerance, every compared input within it): "
                 + ", ".join(f"`{r.tensor}` (`{r.producer.node}`)" for r in c.onsets[:WORST])
                 + (f" and {len(c.onsets) - WORST} more" if len(c.onsets) > WORST else "") + ".\n\n")
    if c.suggested_excludes:
        command = data["quantize_command"]
        text += ("## Suggested exclusions\n\nKeep the reduced-precision layers where the error starts in FP32 "
                 "(`quantize --exclude`, exact node names), quantize again and compare again:\n\n```bash\n"
                 + (command if command else " ".join(f"--exclude {r}" for r in c.suggested_excludes)) + "\n```\n\n")
    if c.worst:
        among = " among those B computes in reduced precision" if c.worst[0].reduced else ""
        text += (f"## The {len(c.worst)} layers that add the most error{among}\n\nEach tensor's error minus its "
                 f"worst input's ({c.tolerance.of.label}, on a linear scale): a layer that passes a broken input on "
                 "adds nothing.\n\n" + markdown_table(["rank", *CELLS], [[i + 1, *_cells(c, r)] for i, r in
                                                                   enumerate(c.worst)]) + "\n\n")
    text += ("## Every compared tensor, in graph order\n\n"
             + markdown_table(["node #", *CELLS], [[r.producer.position, *_cells(c, r)] for r in c.rows]) + "\n")
    return text + f"\nMachine: {machine_line(data['machine'])}.\n"



def plot(c: Comparison, fig: Any) -> None:
    """The tolerance metric of every tensor along A's graph (node index), the tolerance as a line, the first
    tensor over it and the layers that add the most error marked."""
    value = c.tolerance.of.value
    ax = fig.subplots()
    shown = [r for r in c.rows if math.isfinite(value(r.error))]
    kinds = ((lambda r: r.after_selection, "#ddd", "after a differing selection"),
             (lambda r: not r.after_selection and not r.reduced, "#999", "full precision in B"),
             (lambda r: not r.after_selection and r.reduced, "#49a", "reduced precision in B"))
    for kind, colour, label in kinds:
        points = [r for r in shown if kind(r)]
        ax.scatter([r.producer.position for r in points], [value(r.error) for r in points], s=8, c=colour,
                   label=label)
    worst = [r for r in c.worst if math.isfinite(value(r.error))]
    ax.scatter([r.producer.position for r in worst], [value(r.error) for r in worst], s=40, facecolors="none",
               edgecolors="#c33", label=f"the {len(worst)} adding the most error")
    first = c.first_over
    if first is not None:
        ax.axvline(first.producer.position, color="#c33", linestyle=":", label=f"first over: {first.producer.node}"[:70])
    ax.axhline(c.tolerance.limit, color="#c33", linewidth=1, label=f"tolerance ({c.tolerance})")
    hidden = len(c.rows) - len(shown)
    ax.set_xlabel("node index in A's graph (graph order)")
    ax.set_ylabel(c.tolerance.of.label)
    ax.set_title(f"{c.b.path.name} against {c.a.path.name}"
                 + (f"; {hidden} tensors at +-inf not shown" if hidden else ""), fontsize=9)
    ax.legend(fontsize=7)


def write(c: Comparison, folder: Path) -> list[Path]:
    data = report_data(c)
    return write_report(folder, NAME, data=data, markdown=markdown(c, data), plot=lambda fig: plot(c, fig))
