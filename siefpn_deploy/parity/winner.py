"""`optimize`'s choice: of the candidates one model was made into, the fastest whose AP cost is within one budget,
at one batch and input size, and for every other candidate the reason it lost.

A candidate is an artifact in one runtime (a .onnx in ONNX Runtime, OpenVINO or OpenVINO-bf16; a .pt2 in Python
or C++; an engine). Its AP cost comes from the parity report (the worst of its bbox and segm deltas against
PyTorch, AP points) and its latency from the bench report, joined by `parity.rank.rank`. Candidates are compared by
end-to-end p50 (preprocessing, the model, box mapping and mask pasting: what a caller waits for); the model-only
figures and p99 are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.openvino import RUNTIMES
from ..core.reporting import markdown_table
from .rank import EAGER_VARIANT, rank


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: `path` in `runtime` (core.openvino.RUNTIMES for a .onnx; else the file's own)."""

    label: str  # the report's name for it, e.g. "ONNX Runtime CPU-INT8"
    path: Path
    runtime: str


def variant_runtime(variant: str) -> str:
    """A bench row's runtime: "openvino-bf16 int8" -> openvino-bf16; "c++ aoti fp32" -> c++."""
    return variant.split()[0]


def choose(candidates: list[Candidate], bench: dict[str, Any], parity: dict[str, Any], *, budget: float,
           batch: int, size: int) -> dict[str, Any]:
    """{"rows": one per candidate (label, artifact, runtime, status, latency, ΔAP, ratios, why it lost, and its
    parity example grid's file name), "winner": the winning row or None, "eager": eager PyTorch's row, "budget",
    "batch", "size"}."""
    ranked = rank(bench, parity)["rows"]
    here = [r for r in ranked if (r["batch"], r["size"]) == (batch, size)]
    not_run = {(Path(a["path"]).name, _named(a["kind"])): a["reason"] for a in parity["artifacts"]
               if a["status"] == "not run"}
    skipped = {Path(s["artifact"]).name: s["reason"] for s in bench.get("skipped", [])}
    grids = {(Path(a["path"]).name, _named(a["kind"])): a["examples"]["grid"] for a in parity["artifacts"]
             if a.get("examples")}
    rows = []
    for c in candidates:
        timed = next((r for r in here if r["artifact"] == c.path.name and _runtime_of(r) == c.runtime), None)
        row: dict[str, Any] = {"label": c.label, "artifact": str(c.path), "runtime": c.runtime, "timing": timed,
                               # the C++ runtime runs the .pt2 that parity ran in Python
                               "examples": grids.get((c.path.name, OWN if c.runtime == "c++" else c.runtime))}
        reason = not_run.get((c.path.name, c.runtime)) or skipped.get(c.path.name)
        if timed is None or timed["ap_cost"] is None:
            row["status"] = "not run"
            row["why"] = reason or "no timing or no AP at this batch and size"
        elif timed["ap_cost"] > budget:
            row["status"] = "over budget"
            row["why"] = f"loses {timed['ap_cost']:.2f} AP points, over the {budget:g} budget"
        else:
            row["status"] = "within budget"
        rows.append(row)
    within = [r for r in rows if r["status"] == "within budget"]
    winner = min(within, key=lambda r: r["timing"]["e2e_p50_ms"]) if within else None
    for r in within:
        if r is winner:
            r["status"], r["why"] = "winner", "the fastest within the budget"
        else:
            ratio = r["timing"]["e2e_p50_ms"] / winner["timing"]["e2e_p50_ms"]
            r["status"], r["why"] = "slower", f"{ratio:.2f}x the winner's end-to-end p50"
    eager = next((r for r in here if r["variant"] == EAGER_VARIANT), None)
    return {"rows": rows, "winner": winner, "eager": eager, "budget": budget, "batch": batch, "size": size}


OWN = "own"  # a candidate's runtime for a file that has only its own: a .pt2 in Python, an engine


def _named(runtime: str) -> str:
    """A runtime as candidates name it: the .onnx runtimes and "c++" by name, every other one OWN."""
    return runtime if runtime in (*RUNTIMES, "c++") else OWN


def _runtime_of(row: dict[str, Any]) -> str:
    return _named(variant_runtime(row["variant"]))


def _ms(row: dict[str, Any] | None, key: str) -> str:
    return "-" if row is None else f"{row[key]:.1f}"


def speedup_line(choice: dict[str, Any], peers: dict[str, dict[str, Any] | None],
                 duel: dict[str, float] | None = None) -> str:
    """One line: the winner, its latency and its speed-up over eager PyTorch and over each peer row given. With
    `duel` (end-to-end p50 ms of "winner", "eager PyTorch" and peers by name, timed in blocks taking turns), the
    speed-ups are its."""
    w = choice["winner"]
    if w is None:
        return (f"no candidate is within the {choice['budget']:g} AP budget at batch {choice['batch']}, "
                f"{choice['size']}px")
    t = w["timing"]["e2e_p50_ms"]
    head = f"winner: {w['label']} ({Path(w['artifact']).name}), end-to-end p50 {t:.1f} ms"
    parts = [f"{head}, ΔAP {-w['timing']['ap_cost']:+.2f}"]
    if duel is not None:
        t = duel["winner"]
        parts.append(f"head to head: {t:.1f} ms")
        peers = {name: {"e2e_p50_ms": duel[name]} for name in peers if name in duel}
        eager = {"e2e_p50_ms": duel[EAGER_NAME]} if EAGER_NAME in duel else None
    else:
        eager = choice["eager"]
    if eager is not None:
        parts.append(f"{eager['e2e_p50_ms'] / t:.2f}x {EAGER_NAME}")
    parts += [f"{p['e2e_p50_ms'] / t:.2f}x {name}" for name, p in peers.items() if p is not None]
    return "; ".join(parts)


EAGER_NAME = "eager PyTorch"


def markdown(choice: dict[str, Any]) -> str:
    eager = choice["eager"]
    rows = sorted(choice["rows"], key=lambda r: (r["timing"] is None, r["timing"] and r["timing"]["e2e_p50_ms"]))
    table = markdown_table(
        ["candidate", "artifact", "runtime", "end-to-end p50 / p99 ms", "model p50 / p99 ms", "vs eager (e2e)",
         "ΔAP", "verdict"],
        [[r["label"], Path(r["artifact"]).name, r["runtime"],
          "-" if r["timing"] is None else f"{r['timing']['e2e_p50_ms']:.1f} / {r['timing']['e2e_p99_ms']:.1f}",
          "-" if r["timing"] is None else f"{r['timing']['model_p50_ms']:.1f} / {r['timing']['model_p99_ms']:.1f}",
          "-" if r["timing"] is None or r["timing"]["e2e_vs_eager"] is None else f"{r['timing']['e2e_vs_eager']:.2f}x",
          "-" if r["timing"] is None or r["timing"]["ap_cost"] is None else f"{-r['timing']['ap_cost']:+.2f}",
          f"**{r['status']}**: {r['why']}" if r["status"] == "winner" else f"{r['status']}: {r['why']}"]
         for r in rows])
    base = ("" if eager is None else
            f"Eager PyTorch FP32: end-to-end p50 {_ms(eager, 'e2e_p50_ms')} ms, model p50 {_ms(eager, 'model_p50_ms')} "
            "ms (the reference: ΔAP 0).\n\n")
    return (f"Batch {choice['batch']}, {choice['size']}x{choice['size']}; AP budget {choice['budget']:g} AP points (the "
            "worst of bbox and segm against PyTorch).\n\n" + base + table + "\n")
