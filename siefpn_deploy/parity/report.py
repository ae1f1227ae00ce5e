"""parity.json (everything), parity.md (a table a person reads), parity.png (AP per artifact and each
class's AP delta) and per artifact parity.examples.N.RUNTIME.png (the images it agrees least on with PyTorch,
`parity.examples`), written into the report folder: the grids first, then the report that shows them through the
one report writer (`core.reporting`)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.reporting import machine_line, markdown_table, write_report
from ..runtime.visualize import DEFAULT_MIN_SCORE
from .examples import EXAMPLES, SEEN_IOU, ExampleGrid, remove_stale_grids, write_grids


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    return (f"# Parity report ({report['date']})\n\n"
            f"{report['images']} images of `{report['dataset']}`; reference `{report['reference']}` (PyTorch eager). "
            f"AP in points (0..100); Δ is the artifact minus PyTorch; the budget is the largest drop allowed.\n\n"
            + table(report)
            + f"\n\nResult: **{'PASS' if report['passed'] else 'FAIL'}**{not_run_note(report)}. Machine: "
            f"{machine_line(env)}; device "
            f"{env['device']}; onnxruntime {env['onnxruntime']}, TensorRT {env['tensorrt']}.\n"
            + examples(report))


def examples(report: dict[str, Any]) -> str:
    """The example-image section: each artifact's grid (`parity.examples`), the worst-agreeing image first."""
    ran = [a for a in report["artifacts"] if a.get("examples")]
    if not ran:
        return ""
    return (f"\n## Example images\n\nPer artifact, the {EXAMPLES} images on which its detections agree least with "
            f"PyTorch's, worst first: PyTorch left, the artifact right, detections scoring at least "
            f"{DEFAULT_MIN_SCORE:g} drawn. Agreement: the detections drawn on both sides that pair up (same label, "
            f"IoU ≥ {SEEN_IOU:g}), as a share of all drawn; ties go to the same share over every detection at "
            f"IoU ≥ {report['match_iou']:g}.\n"
            + "".join(f"\n`{a['path']}` ({a['kind']}):\n\n![{a['kind']} beside PyTorch]({a['examples']['grid']})\n"
                      for a in ran))


def not_run_note(report: dict[str, Any]) -> str:
    count = sum(a["status"] == "not run" for a in report["artifacts"])
    if not count:
        return ""
    return f" ({count} not run: {'allowed by --allow-not-run' if report.get('allow_not_run') else 'that fails the gate'})"


def table(report: dict[str, Any]) -> str:
    """The parity table: one row per artifact (and runtime), the PyTorch reference first."""
    segm = any("segm" in a["metrics"] for a in report["artifacts"])
    head = ["artifact", "runtime", "precision", "bbox AP", "Δ bbox"] + (["segm AP", "Δ segm"] if segm else []) + [
        "budget", "matched (IoU≥0.9)", "box err max/median px", "score err max/median", "non-finite", "status"]
    rows = []
    for a in report["artifacts"]:
        if a["status"] == "not run":
            cells = [a["path"], a["kind"], a["precision"], "-", "-"] + (["-", "-"] if segm else []) + [
                "-", "-", "-", "-", "-", f"not run: {a['reason']}"]
        else:
            g = a["agreement"]
            precision = a["precision"] + (f" ({a['int8_target']})" if a.get("int8_target") else "")
            cells = [a["path"], a["kind"], precision, *_ap_cells(a, "bbox")] + (
                _ap_cells(a, "segm") if segm else []) + [
                f"{a['budget']:g}" if a["budget"] is not None else "-",
                f"{100 * g['matched_fraction']:.1f}%" if g else "-",
                f"{g['box_abs_max']:.2g} / {g['box_abs_median']:.2g}" if g else "-",
                f"{g['score_abs_max']:.2g} / {g['score_abs_median']:.2g}" if g else "-",
                str(g["non_finite"]) if g else "-", a["status"]]
        rows.append(cells)
    return markdown_table(head, rows)


def _ap_cells(artifact: dict[str, Any], iou_type: str) -> list[str]:
    """[AP in points, its delta vs PyTorch] of one artifact row, "-" where not measured."""
    m, d = artifact["metrics"], artifact["delta"]
    return [f"{100 * m[iou_type]['AP']:.2f}" if iou_type in m else "-", f"{d[iou_type]:+.2f}" if iou_type in d else "-"]


def plot(report: dict[str, Any], fig: Any) -> None:
    """AP per artifact, and per-class bbox AP delta vs PyTorch, on a matplotlib Figure."""
    ran = [a for a in report["artifacts"] if a["status"] != "not run"]
    names = [Path(a["path"]).name for a in ran]
    fig.set_size_inches(13, 4.5)
    left, right = fig.subplots(1, 2)
    left.bar(names, [100 * a["metrics"]["bbox"]["AP"] for a in ran],
             color=["#888" if a["status"] == "reference" else "#2a7" if a["status"] == "pass" else "#c33" for a in ran])
    left.set_ylabel("bbox AP")
    left.set_title("COCO bbox AP per artifact")
    left.tick_params(axis="x", rotation=20)
    reference = ran[0]["metrics"]["bbox"]["per_class"]
    classes = list(reference)
    width = 0.8 / max(1, len(ran) - 1)
    for i, a in enumerate(ran[1:]):
        per_class = a["metrics"]["bbox"]["per_class"]
        deltas = [100 * (per_class[c] - reference[c]) if reference[c] >= 0 else 0.0 for c in classes]
        right.bar([j + i * width for j in range(len(classes))], deltas, width=width, label=names[i + 1])
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(classes))],
                     [report["classes"].get(c, c) for c in classes], rotation=30)
    right.axhline(0, color="black", linewidth=0.8)
    right.set_ylabel("bbox AP delta vs PyTorch (points)")
    right.set_title("per-class AP delta")
    if len(ran) > 1:
        right.legend(fontsize=8)


def write_parity_report(report: dict[str, Any], folder: Path, grids: Sequence[ExampleGrid] = ()) -> list[Path]:
    """The grids, then parity.json, parity.md and parity.png, which show them. Returns the report's paths, then
    the grids'."""
    report = {**report, "date": datetime.datetime.now().isoformat(timespec="seconds")}
    drawn = write_grids(grids, Path(folder))
    written = write_report(folder, "parity", data=report, markdown=markdown(report), plot=lambda fig: plot(report, fig))
    remove_stale_grids(Path(folder), drawn)
    return written + drawn
