"""The fastest artifact within each AP budget: `bench` timings joined with a `parity` report's AP deltas.

`siefpn-deploy bench --artifacts ... --parity reports/parity/parity.json` times every artifact of one model
(eager PyTorch, .pt2 in Python and C++, ONNX Runtime FP32 / FP16 / INT8 ...) and ranks them here. An
artifact's AP cost is the worst of its bbox (and segm) deltas against PyTorch, in AP points, from the parity
report: the same file, evaluated on the parity run's dataset. A C++ row is its .pt2's package, so it carries
the .pt2's delta (tests/test_cpp.py holds the C++ detections equal to Python's). Rows are ranked by
end-to-end p50 (preprocessing, the model, box mapping and mask pasting: what a caller waits for), and each
is also shown against eager PyTorch FP32 at the same batch and size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.fileio import read_json
from ..core.reporting import markdown_table, write_report

EAGER_VARIANT = "pytorch fp32"  # the baseline every row is compared with


def read_parity_report(path: str | Path) -> dict[str, Any]:
    """A parity.json as `siefpn-deploy parity` writes it, or a one-line error naming the file."""
    report = read_json(path, "parity report")
    if not isinstance(report, dict) or not isinstance(report.get("artifacts"), list) or "budgets" not in report:
        raise UserError(f"{path} is not a parity report (write one with `siefpn-deploy parity ... --report DIR`)")
    return report


def _cost(artifact: dict[str, Any]) -> float | None:
    """AP points lost against PyTorch, the worst over bbox and segm (0 for the reference; None if not run)."""
    if artifact["status"] == "reference":
        return 0.0
    deltas = artifact.get("delta") or {}
    return -min(deltas.values()) if deltas else None


def runtime_kind(variant: str) -> str:
    """A bench variant's runtime, as parity names it: "openvino fp32" -> openvino, "openvino-bf16 int8" ->
    openvino-bf16 (both are `Detector.kind`); a C++ row ("c++ aoti fp32") runs the .pt2 that parity ran as aoti."""
    words = variant.split()
    return words[1] if words[0] == "c++" else words[0]


def rank(bench: dict[str, Any], parity: dict[str, Any]) -> dict[str, Any]:
    """Each bench row with its AP cost and its ratio to eager FP32, and per (batch, size) and budget the fastest
    row whose cost is within the budget."""
    cost = {(Path(a["path"]).name, a["kind"]): _cost(a) for a in parity["artifacts"]}
    eager = {(r["batch"], r["size"]): r for r in bench["rows"] if r["variant"] == EAGER_VARIANT}
    rows = []
    for r in bench["rows"]:
        base = eager.get((r["batch"], r["size"]))
        rows.append({**r, "ap_cost": cost.get((r["artifact"], runtime_kind(r["variant"]))),
                     "model_vs_eager": r["model_p50_ms"] / base["model_p50_ms"] if base else None,
                     "e2e_vs_eager": r["e2e_p50_ms"] / base["e2e_p50_ms"] if base else None})
    budgets = sorted({float(v) for v in parity["budgets"].values()})
    fastest = []
    for batch, size in sorted({(r["batch"], r["size"]) for r in rows}):
        here = [r for r in rows if (r["batch"], r["size"]) == (batch, size) and r["ap_cost"] is not None]
        for budget in budgets:
            within = [r for r in here if r["ap_cost"] <= budget]
            best = min(within, key=lambda r: r["e2e_p50_ms"]) if within else None
            fastest.append({"batch": batch, "size": size, "budget": budget, "best": best})
    return {"parity": {"dataset": parity.get("dataset"), "images": parity.get("images"),
                       "reference": parity.get("reference")},
            "budgets": budgets, "budget_names": {str(k): v for k, v in parity["budgets"].items()},
            "rows": rows, "fastest": fastest,
            "no_parity": sorted({f"{r['artifact']} ({r['variant']})" for r in rows if r["ap_cost"] is None})}


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _cost_text(v: float | None) -> str:
    return "-" if v is None else f"{-v:+.2f}"


def markdown(ranking: dict[str, Any]) -> str:
    names = {v: [k for k, b in ranking["budget_names"].items() if b == v] for v in ranking["budgets"]}
    rows = sorted(ranking["rows"], key=lambda r: (r["batch"], r["size"], r["e2e_p50_ms"]))
    lines = [("Every artifact, fastest first (ΔAP: the worst of bbox and segm against PyTorch, AP points, from "
             f"{ranking['parity']['images']} images of {ranking['parity']['dataset']}):"), "",
             markdown_table(["batch", "size", "artifact", "variant", "model p50 / p99 ms", "end-to-end p50 / p99 ms",
                             "model vs eager", "e2e vs eager", "ΔAP"], [
                 [r["batch"], r["size"], r["artifact"], r["variant"], f"{r['model_p50_ms']:.1f} / {r['model_p99_ms']:.1f}",
                  f"{r['e2e_p50_ms']:.1f} / {r['e2e_p99_ms']:.1f}", _x(r["model_vs_eager"]), _x(r["e2e_vs_eager"]),
                  _cost_text(r["ap_cost"])] for r in rows]),
             "", "The fastest artifact within each AP budget (by end-to-end p50):", "",
             markdown_table(["batch", "size", "budget (AP points)", "fastest", "end-to-end p50 ms", "e2e vs eager",
                             "model vs eager", "ΔAP"], [
                 [f["batch"], f["size"], f"{f['budget']:g} ({', '.join(names[f['budget']])})",
                  "none" if f["best"] is None else f"{f['best']['artifact']} ({f['best']['variant']})",
                  "-" if f["best"] is None else f"{f['best']['e2e_p50_ms']:.1f}",
                  _x(f["best"] and f["best"]["e2e_vs_eager"]), _x(f["best"] and f["best"]["model_vs_eager"]),
                  _cost_text(f["best"] and f["best"]["ap_cost"])] for f in ranking["fastest"]])]
    if ranking["no_parity"]:
        lines += ["", f"Not in the parity report, so unranked: {', '.join(ranking['no_parity'])}."]
    return "\n".join(lines) + "\n"


def write_ranking(ranking: dict[str, Any], folder: Path) -> list[Path]:
    """ranking.json and ranking.md beside bench.json."""
    return write_report(folder, "ranking", data=ranking, markdown=f"# Fastest within each AP budget\n\n{markdown(ranking)}")
