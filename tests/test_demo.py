"""The demo command, end to end on a tiny budget (the real demo trains for ~13 minutes)."""

from __future__ import annotations

import importlib.util
import json

from siefpn_deploy.cli import main
from siefpn_deploy.serve.python_env import python_env_ready


def test_demo_runs_end_to_end_and_prints_summary(demo, capsys):
    """The demo's first run (the `demo` fixture: run_demo with the options of this command line, built ahead by
    the background worker when there is one), then the command itself, which finds everything current."""
    first = demo.run()
    assert first.parity_passed and first.metrics["bbox"]["AP"] > 0
    o = demo.options
    out, export, engines, reports = o.output, o.export_dir, o.engine_dir, o.report_dir
    stamp = {p: p.stat().st_mtime_ns for p in (out / "model_final.pth", export / "demo.onnx", export / "demo.int8.onnx")}
    assert main(demo.argv) == 0
    text = capsys.readouterr().out
    assert "| train + eval |" in text and "bbox AP" in text
    assert (out / "metrics.json").is_file() and (out / "model_final.pth").is_file()
    # the trained model is exported and verified in ONNX Runtime
    row = next(line for line in text.splitlines() if line.startswith("| export + verify"))
    assert row.endswith(": met |") and " 0/0 " not in row
    meta = json.loads((export / "demo.meta.json").read_text())
    assert meta["verification"]["passed"] and meta["verification"]["matched"] == meta["verification"]["reference"]
    assert meta["shapes"]["height"] == {"min": 64, "max": 160}  # up to INPUT.MAX_SIZE_TEST, padded to 32
    # FP16 and INT8 models, engines where a builder is installed, a parity report and a benchmark
    assert (export / "demo.fp16.onnx").is_file() and (export / "demo.int8.onnx").is_file()
    parity = json.loads((reports / "parity.json").read_text())
    assert [a["status"] for a in parity["artifacts"][:4]] == ["reference", "pass", "pass", "pass"]
    # one checkpoint, one PyTorch AP: training's evaluation and parity's reference row agree exactly
    trained = json.loads((out / "metrics.json").read_text())["bbox"]
    assert parity["artifacts"][0]["metrics"]["bbox"]["AP"] == trained["AP"]
    assert parity["artifacts"][0]["metrics"]["bbox"]["AR100"] == trained["AR100"] > 0
    assert "| parity |" in text and "PASS" in text and (reports / "bench.md").is_file()
    if any(a["kind"] == "tensorrt" for a in parity["artifacts"]):
        assert sorted(p.name for p in engines.glob("*.plan")) == ["demo.fp16.plan", "demo.int8.plan", "demo.plan"]
    # the command, with the same config and data, returns the finished run instead of training again, and keeps
    # the export and the quantized models (their sidecars record the request they answer)
    assert "already holds a finished run of this config and data" in text
    assert "is already this export of these weights" in text and "is already the int8 model of" in text
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    # the closing `optimize --target cpu`, rerun by the command: its candidates were current, only measured again
    reused = [line for line in text.splitlines() if "is already the int8 model of" in line]
    for name in ("demo.int8.onnx", "candidates/demo.int8-cpu.onnx", "candidates/demo.int8-ov.onnx"):
        assert any(f"/{name} is already" in line for line in reused), (name, reused)
    assert_optimized(export / "optimized" / out.name, text)
    # `serve`'s stub environment is ready, so serving needs no package index (test_serve_server serves with it)
    if importlib.util.find_spec("pytriton") is not None:
        assert python_env_ready(o.python_env) == (True, o.python_env)
        assert f"| serve | | ready: the stub's environment is {o.python_env} |" in text
    else:
        assert "| serve | | not ready: serve needs tritonserver" in text


def assert_optimized(folder, text):
    """optimize's output: every CPU candidate measured; the winner, the fastest within the budget, landed as
    best.onnx with a meta.json that names its runtime; the folder loads as that runtime and detects as the
    candidate does."""
    import numpy as np

    from siefpn_deploy.core.sidecar import read_meta
    from siefpn_deploy.runtime import Detector

    report = json.loads((folder / "optimize.json").read_text())
    rows = {r["label"]: r for r in report["rows"]}
    assert {"FP32 in ONNX Runtime", "FP32 in OpenVINO", "FP32 in OpenVINO bf16", "ONNX Runtime CPU-INT8 in ONNX Runtime",
            "NNCF INT8 in OpenVINO", "NNCF INT8 in OpenVINO bf16"} == set(rows)
    bf16 = rows["FP32 in OpenVINO bf16"]
    assert bf16["status"] != "not run" or "bf16" in bf16["why"]  # runs where the CPU has it, else says why
    # ONNX Runtime FP32 computes what PyTorch computes: ΔAP 0 to rounding, so there is always a winner
    assert abs(rows["FP32 in ONNX Runtime"]["timing"]["ap_cost"]) < 0.05
    winner = report["winner"]
    within = [r for r in report["rows"] if r["status"] in ("winner", "slower")]
    assert winner["timing"]["e2e_p50_ms"] == min(r["timing"]["e2e_p50_ms"] for r in within)
    assert all(r["timing"]["ap_cost"] > report["budget"] for r in report["rows"] if r["status"] == "over budget")
    assert "| optimize --target cpu |" in text and "winner: " in text and "x eager PyTorch" in text
    # the summary's speed-ups come from the head-to-head timing of the winner, eager PyTorch and the peers
    duel = report["head_to_head"]
    assert {"winner", "eager PyTorch", "ONNX Runtime FP32"} <= set(duel) and min(duel.values()) > 0
    assert f"{duel['eager PyTorch'] / duel['winner']:.2f}x eager PyTorch" in report["summary"]
    best = folder / "best.onnx"
    meta = read_meta(best)  # the hash check: best.onnx and its meta.json landed together
    assert meta["runtime"] == winner["runtime"] and meta["optimize"]["source"] == winner["artifact"]
    assert report["best"] == str(best) and not [p.name for p in folder.iterdir() if "siefpn-tmp" in p.name]
    served = Detector.from_path(folder)  # the folder: its best.*, in the runtime that won
    chosen = Detector.from_path(winner["artifact"], runtime=winner["runtime"])
    assert served.kind == chosen.kind == winner["runtime"]
    image = np.random.default_rng(0).integers(0, 255, (128, 160, 3), dtype=np.uint8)
    np.testing.assert_array_equal(served.predict(image).boxes, chosen.predict(image).boxes)
