"""The demo command, end to end on a tiny budget (the real demo trains for ~13 minutes)."""

from __future__ import annotations

import json

from siefpn_deploy.cli import main


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
