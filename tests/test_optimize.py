"""`siefpn-deploy optimize`: the choice on constructed reports (hand-computed), the refusals and the folder as an
artifact. The whole command runs as the demo's last stage: tests/test_demo.py checks what it makes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from siefpn_deploy.cli import main
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.sidecar import resolve_artifact
from siefpn_deploy.parity.winner import OWN, Candidate, choose, speedup_line
from siefpn_deploy.pipeline.optimize import EXAMPLES_NAME, OptimizeJob, parity_reports, winner_examples


def timing(name: str, variant: str, e2e: float) -> dict:
    return {"artifact": name, "variant": variant, "batch": 1, "size": 384, "model_p50_ms": e2e - 4,
            "model_p99_ms": e2e - 2, "e2e_p50_ms": e2e, "e2e_p99_ms": e2e + 3}


BENCH = {"rows": [timing("m.pth", "pytorch fp32", 120.0), timing("m.onnx", "onnxruntime fp32", 60.0),
                  timing("m.onnx", "openvino fp32", 40.0), timing("m.onnx", "openvino-bf16 fp32", 30.0),
                  timing("m.int8-cpu.onnx", "onnxruntime int8", 20.0), timing("m.int8-ov.onnx", "openvino int8", 24.0),
                  timing("m_aoti.pt2", "aoti fp32", 100.0),
                  timing("m.int8-cpu.onnx", "onnxruntime int8", 5.0) | {"batch": 4}],  # another batch: not ours
         "skipped": []}
PARITY = {"budgets": {"fp32": 0.1, "fp16": 0.2, "int8": 1.0, "bf16": 0.5}, "artifacts": [
    {"path": "out/m.pth", "kind": "pytorch", "status": "reference"},
    {"path": "c/m.onnx", "kind": "onnxruntime", "status": "pass", "delta": {"bbox": 0.0}},
    {"path": "c/m.onnx", "kind": "openvino", "status": "pass", "delta": {"bbox": -0.02}},
    {"path": "c/m.onnx", "kind": "openvino-bf16", "status": "pass", "delta": {"bbox": -0.4}},
    {"path": "c/m.int8-cpu.onnx", "kind": "onnxruntime", "status": "fail", "delta": {"bbox": -0.9, "segm": -1.6}},
    {"path": "c/m.int8-ov.onnx", "kind": "openvino", "status": "pass", "delta": {"bbox": -0.7, "segm": -0.3},
     "examples": {"grid": "parity.examples.5.openvino.png", "images": []}},
    {"path": "c/m_aoti.pt2", "kind": "aoti", "status": "pass", "delta": {"bbox": 0.0}},
    {"path": "c/m.fp16.onnx", "kind": "openvino", "status": "not run", "reason": "OpenVINO is not installed"}]}
CANDIDATES = [Candidate("FP32 in ONNX Runtime", Path("c/m.onnx"), "onnxruntime"),
              Candidate("FP32 in OpenVINO", Path("c/m.onnx"), "openvino"),
              Candidate("FP32 in OpenVINO bf16", Path("c/m.onnx"), "openvino-bf16"),
              Candidate("ORT CPU-INT8", Path("c/m.int8-cpu.onnx"), "onnxruntime"),
              Candidate("NNCF INT8", Path("c/m.int8-ov.onnx"), "openvino"),
              Candidate(".pt2", Path("c/m_aoti.pt2"), OWN),
              Candidate("FP16 in OpenVINO", Path("c/m.fp16.onnx"), "openvino")]


def test_the_winner_is_the_fastest_within_the_budget_and_every_loser_says_why():
    """By hand, at batch 1: ORT INT8 is fastest (20 ms) but loses 1.6 segm AP; NNCF INT8 (24 ms, worst ΔAP -0.7)
    is within 1.0 and wins; OpenVINO bf16 (30 ms, -0.4) is 1.25x it. With a 0.5 budget, bf16 wins."""
    choice = choose(CANDIDATES, BENCH, PARITY, budget=1.0, batch=1, size=384)
    rows = {r["label"]: r for r in choice["rows"]}
    assert choice["winner"]["label"] == "NNCF INT8"
    assert choice["winner"]["examples"] == "parity.examples.5.openvino.png"  # its parity row's example grid
    assert rows["ORT CPU-INT8"]["status"] == "over budget" and "1.60 AP points" in rows["ORT CPU-INT8"]["why"]
    assert rows["FP32 in OpenVINO bf16"]["why"] == "1.25x the winner's end-to-end p50"
    assert rows[".pt2"]["why"] == f"{100 / 24:.2f}x the winner's end-to-end p50"
    assert rows["FP16 in OpenVINO"]["status"] == "not run" and rows["FP16 in OpenVINO"]["why"] == "OpenVINO is not installed"
    assert choice["eager"]["e2e_p50_ms"] == 120.0
    assert rows["NNCF INT8"]["timing"]["e2e_vs_eager"] == pytest.approx(0.2)
    line = speedup_line(choice, {"ONNX Runtime FP32": rows["FP32 in ONNX Runtime"]["timing"]})
    assert "5.00x eager PyTorch" in line and "2.50x ONNX Runtime FP32" in line and "ΔAP -0.70" in line
    # timed again head to head (in blocks taking turns), the speed-ups are those figures': 50 / 10 and 30 / 10
    duel = {"winner": 10.0, "eager PyTorch": 50.0, "ONNX Runtime FP32": 30.0}
    line = speedup_line(choice, {"ONNX Runtime FP32": rows["FP32 in ONNX Runtime"]["timing"]}, duel)
    assert line == ("winner: NNCF INT8 (m.int8-ov.onnx), end-to-end p50 24.0 ms, ΔAP -0.70; head to head: 10.0 ms; "
                    "5.00x eager PyTorch; 3.00x ONNX Runtime FP32")

    assert choose(CANDIDATES, BENCH, PARITY, budget=0.5, batch=1, size=384)["winner"]["label"] == "FP32 in OpenVINO bf16"
    assert choose(CANDIDATES, BENCH, PARITY, budget=0.0, batch=1, size=384)["winner"]["label"] == "FP32 in ONNX Runtime"
    # nothing within a budget: no winner, and one line that says so
    nothing = choose(CANDIDATES[3:5], BENCH, PARITY, budget=0.1, batch=1, size=384)
    assert nothing["winner"] is None
    assert speedup_line(nothing, {}) == "no candidate is within the 0.1 AP budget at batch 1, 384px"


def test_the_head_to_head_times_each_entry_back_to_back_in_blocks_that_take_turns():
    """measure_rotating: per round, each callable's untimed warm-up calls then its share of the timed calls, back
    to back, the callables taking turns; 5 timed calls over 2 rounds are 3 then 2."""
    from siefpn_deploy.core.timing import measure_rotating

    calls = []
    found = measure_rotating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, iters=5,
                             rounds=2)
    assert "".join(calls) == "aaaa" + "bbbb" + "aaa" + "bbb"
    assert {name: len(latency.runs) for name, latency in found.items()} == {"a": 5, "b": 5}
    calls.clear()  # one timed run: one round, not rounds of warm-up alone
    measure_rotating({"a": lambda: calls.append("a")}, warmup=2, iters=1, rounds=3)
    assert calls == ["a"] * 3


def test_the_winners_example_grid_lands_beside_the_report(tmp_path):
    job = OptimizeJob(weights=tmp_path / "m.pth", output=tmp_path / "optimized")
    grid = parity_reports(job) / "parity.examples.5.openvino.png"
    grid.parent.mkdir(parents=True)
    grid.write_bytes(b"the grid parity drew")
    copied = winner_examples(job, {"examples": grid.name})
    assert copied == job.output / EXAMPLES_NAME and copied.read_bytes() == b"the grid parity drew"
    assert winner_examples(job, None) is None and not copied.exists()  # no winner: an earlier run's copy goes


def test_targets_this_machine_cannot_run_are_refused_before_any_work(tmp_path, capsys):
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"")
    (tmp_path / "config.yaml").write_text("MODEL:\n  META_ARCHITECTURE: retinanet\n")
    out = tmp_path / "optimized"
    if not torch.cuda.is_available():
        for target in ("cuda", "tensorrt"):
            assert main(["optimize", "--checkpoint", str(weights), "--target", target, "--output", str(out)]) == 2
            err = capsys.readouterr().err.strip()
            assert err == f"error: --target {target} needs a CUDA device; this machine has none (try --target cpu)"
    assert main(["optimize", "--checkpoint", str(tmp_path / "none.pth"), "--output", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["optimize", "--checkpoint", str(weights), "--budget", "-1", "--output", str(out)]) == 2
    assert "--budget must be >= 0" in capsys.readouterr().err
    assert not out.exists()  # nothing made


def test_a_folder_is_its_best_artifact(tmp_path):
    (tmp_path / "best.onnx").write_bytes(b"x")
    assert resolve_artifact(tmp_path) == tmp_path / "best.onnx"
    (tmp_path / "best.pt2").write_bytes(b"x")
    with pytest.raises(UserError, match="2 best.onnx/.pt2/.plan files"):
        resolve_artifact(tmp_path)
    assert resolve_artifact(tmp_path / "best.pt2") == tmp_path / "best.pt2"

