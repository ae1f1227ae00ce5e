"""OpenVINO as a second runtime for the same .onnx: its detections equal ONNX Runtime's within the export
tolerances, it sits beside ONNX Runtime in one parity run and one bench ranking, and without the package
every command says how to install it, in one line."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import onnx
import pytest
from conftest import FP32_AP_FLOOR, SMALL_SET_BUDGETS, broken_int8

from siefpn_deploy.cli import main
from siefpn_deploy.core.contract import image_rows
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.sidecar import read_meta
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.evaluation.agreement import Agreement
from siefpn_deploy.export.verify import FP32_TOLERANCES
from siefpn_deploy.quantize.precision import DEFAULT_EXCLUDES
from siefpn_deploy.runtime import Detector

ARCHS = ["retinanet", "faster_rcnn", "mask_rcnn"]


@pytest.mark.parametrize("arch", ARCHS)
def test_openvino_detections_equal_onnx_runtime_s(arch, exported, tiny_synth):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (the [openvino] extra)")
    path = exported.onnx(arch, "onnx")
    ov, ort = Detector.from_path(path, runtime="openvino"), Detector.from_path(path)
    assert (ov.kind, ort.kind) == ("openvino", "onnxruntime")
    images_dir, annotations = split_paths(tiny_synth, "val")
    dataset = CocoDetection(image_dir=images_dir, annotation_file=annotations)
    images = [dataset.image(i) for i in range(2)]
    agreement = Agreement()
    for size in (160, 256):  # two canvases, neither the export example's; batch 2
        canvas = ort.at_size(size).prepare(images)
        want, got = ort.run_canvas(canvas), ov.run_canvas(canvas)
        for b in range(2):
            agreement.add(image_rows(want, b), image_rows(got, b), min_iou=0.5, score_thresh=0.05, max_det=100)
    t = FP32_TOLERANCES
    assert agreement.reference > 10 and agreement.matched == agreement.reference and agreement.unmatched == 0
    assert agreement.max_box_rel <= t.box_rel and agreement.max_score_abs <= t.score_abs
    assert agreement.max_mask_abs <= t.mask_abs and (arch != "mask_rcnn" or agreement.max_mask_abs > 0)


def test_a_canvas_shape_three_calls_in_a_row_gets_a_compile_of_its_own_with_the_same_detections(
        exported, tiny_synth, monkeypatch):
    """OpenVINO runs the exported (dynamic) graph until a canvas shape comes FIX_AFTER (3) calls in a row, then
    that shape's own compile with the shape fixed, for at most `static_shapes` shapes; its detections equal ONNX
    Runtime's within the export tolerances, a shape OpenVINO cannot fix stays on the dynamic compile, shapes that
    alternate are never fixed, and parity's detectors (images of mixed sizes) fix none."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (the [openvino] extra)")
    from siefpn_deploy.runtime import backends

    path = exported.onnx("retinanet", "onnx")
    ov, ort = Detector.from_path(path, runtime="openvino"), Detector.from_path(path)
    backend = ov.backend
    backend.static_shapes = 2
    images_dir, annotations = split_paths(tiny_synth, "val")
    dataset = CocoDetection(image_dir=images_dir, annotation_file=annotations)
    images = [dataset.image(i) for i in range(2)]
    agreement = Agreement()
    for size in (160, 192, 256):
        canvas = ort.at_size(size).prepare(images)
        want = ort.run_canvas(canvas)
        for sighting in range(3):
            got = ov.run_canvas(canvas)
            for b in range(2):
                agreement.add(image_rows(want, b), image_rows(got, b), min_iou=0.5, score_thresh=0.05, max_det=100)
    fixed = [dict(shapes)["images"] for shapes in backend.fixed]
    assert fixed == [(2, 3, 160, 160), (2, 3, 192, 192)]  # the third shape stays dynamic: no room
    for request in backend.fixed.values():
        assert all(i.get_partial_shape().is_static for i in request.get_compiled_model().inputs)
    assert all(not i.get_partial_shape().is_static for i in backend.compiled.inputs)
    t = FP32_TOLERANCES
    assert agreement.reference > 10 and agreement.matched == agreement.reference and agreement.unmatched == 0
    assert agreement.max_box_rel <= t.box_rel and agreement.max_score_abs <= t.score_abs

    def refuse(*args, static=None, **kwargs):
        raise UserError("OpenVINO cannot load it: a shape it cannot fix")

    monkeypatch.setattr(backends, "compile_onnx", refuse)
    backend.static_shapes = 3  # room for 256, which OpenVINO now refuses to fix
    outputs = [backend.run(canvas.images.numpy(), canvas.image_sizes) for _ in range(3)]  # the 256 canvas
    assert [dict(shapes)["images"] for shapes, r in backend.fixed.items() if r is None] == [(2, 3, 256, 256)]
    assert all(np.array_equal(o["boxes"], outputs[0]["boxes"]) for o in outputs)
    monkeypatch.undo()
    # two shapes taking turns never come 3 in a row; a detector made with fix_shapes=False never fixes one
    for detector in (Detector.from_path(path, runtime="openvino"), Detector.from_path(path, runtime="openvino",
                                                                                     fix_shapes=False)):
        small, large = ort.at_size(160).prepare(images), ort.at_size(192).prepare(images)
        for canvas in [small, large] * 3 + ([small] * 3 if not detector.backend.static_shapes else []):
            detector.run_canvas(canvas)
        assert detector.backend.fixed == {}


def test_parity_and_bench_put_openvino_beside_onnx_runtime(seeded, exported, tmp_path, capsys):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (the [openvino] extra)")
    onnx_path, weights = exported.onnx("retinanet", "onnx"), seeded.weights("retinanet")
    assert main(["parity", "--config-file", str(seeded.config("retinanet")), "--artifacts", str(onnx_path),
                 "--runtime", "onnxruntime", "openvino", "--max-images", "8", "--report", str(tmp_path / "p"),
                 "MODEL.WEIGHTS", str(weights)]) == 0
    rows = json.loads((tmp_path / "p" / "parity.json").read_text())["artifacts"]
    assert [(r["kind"], r["status"]) for r in rows] == [("pytorch", "reference"), ("onnxruntime", "pass"),
                                                        ("openvino", "pass")]
    assert "| openvino |" in (tmp_path / "p" / "parity.md").read_text()
    assert main(["bench", "--artifacts", str(onnx_path), str(weights), "--runtime", "onnxruntime", "openvino",
                 "--batch", "1", "--imgsz", "128", "--warmup", "1", "--iters", "2", "--device", "cpu",
                 "--parity", str(tmp_path / "p" / "parity.json"), "--report", str(tmp_path / "b")]) == 0
    ranking = json.loads((tmp_path / "b" / "ranking.json").read_text())
    cost = {r["variant"]: r["ap_cost"] for r in ranking["rows"]}
    assert cost == {"onnxruntime fp32": pytest.approx(-rows[1]["delta"]["bbox"]),
                    "openvino fp32": pytest.approx(-rows[2]["delta"]["bbox"]), "pytorch fp32": 0.0}
    capsys.readouterr()


def test_without_openvino_each_command_says_how_to_install_it(exported, tiny_synth, seeded, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    onnx_path = str(exported.onnx("retinanet", "onnx"))
    image = min(split_paths(tiny_synth, "val")[0].iterdir())
    assert main(["infer", "--artifact", onnx_path, "--source", str(image), "--runtime", "openvino"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: OpenVINO is not installed: pip install 'siefpn-deploy[openvino]'"
    # parity lists the OpenVINO row as not run, with the reason, and still evaluates ONNX Runtime; an artifact
    # asked for and not run fails the gate, unless --allow-not-run
    parity = ["parity", "--config-file", str(seeded.config("retinanet")), "--artifacts", onnx_path, "--runtime",
              "onnxruntime", "openvino", "--max-images", "2", "--report", str(tmp_path / "p"),
              "MODEL.WEIGHTS", str(seeded.weights("retinanet"))]
    for allowed in (False, True):
        capsys.readouterr()
        argv = parity[:-2] + (["--allow-not-run"] if allowed else []) + parity[-2:]  # options before KEY VALUE
        assert main(argv) == (0 if allowed else 1)
        report = json.loads((tmp_path / "p" / "parity.json").read_text())
        rows = report["artifacts"]
        assert [(r["kind"], r["status"]) for r in rows[1:]] == [("onnxruntime", "pass"), ("openvino", "not run")]
        assert "pip install 'siefpn-deploy[openvino]'" in rows[2]["reason"]
        assert report["passed"] == report["allow_not_run"] == allowed
        assert "not run: OpenVINO is not installed" in (tmp_path / "p" / "parity.md").read_text()
        failed = [line for line in capsys.readouterr().err.splitlines() if "FAIL" in line]  # after progress bars
        assert failed == ([] if allowed else [(f"[parity] FAIL: 1 artifact(s) could not run here ({onnx_path}); "
                                              "--allow-not-run accepts that")])
    # bench too: the ONNX Runtime row is timed, the OpenVINO one is listed as not run
    assert main(["bench", "--artifacts", onnx_path, "--runtime", "onnxruntime", "openvino", "--batch", "1",
                 "--imgsz", "128", "--warmup", "0", "--iters", "1", "--report", str(tmp_path / "b")]) == 0
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert [r["variant"] for r in bench["rows"]] == ["onnxruntime fp32"]
    assert [s["reason"] for s in bench["skipped"]] == ["OpenVINO is not installed: pip install 'siefpn-deploy[openvino]'"]
    assert main(["infer", "--artifact", str(seeded.weights("retinanet")), "--source", str(image),
                 "--runtime", "openvino"]) == 2
    assert "runs .onnx files" in capsys.readouterr().err


def test_nncf_int8_runs_in_openvino_within_the_int8_budget_and_a_damaged_one_fails(detecting, tmp_path, capsys):
    """`quantize --target openvino` (NNCF) on a model that detects: the exclusions hold, the file runs in
    OpenVINO by default, and parity holds it to the INT8 budget, which the same model with its scales damaged
    breaks (so the gate can fail)."""
    pytest.importorskip("nncf", reason="NNCF is not installed (the [openvino] extra)")
    pytest.importorskip("openvino", reason="OpenVINO is not installed (the [openvino] extra)")
    path = detecting.onnx("int8-ov")
    model = onnx.load(str(path))
    produced_by = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [c for c in convs if produced_by.get(c.input[0]) is not None
                 and produced_by[c.input[0]].op_type == "DequantizeLinear"]
    assert len(quantized) >= 0.9 * len(convs)  # the backbone, neck and heads
    for node in model.graph.node:  # the same FP32 exclusions as every INT8 path
        if any(re.match(p, node.name) for p in DEFAULT_EXCLUDES.values()):
            assert all(produced_by.get(i) is None or produced_by[i].op_type != "DequantizeLinear" for i in node.input)
    q = read_meta(path)["quantization"]
    assert (q["target"], q["tool"], q["calibration"]["method"]) == ("openvino", "nncf.quantize", "max")
    assert Detector.from_path(path).kind == "openvino"  # its own runtime
    broken = tmp_path / "broken.int8-ov.onnx"
    broken_int8(path, broken)
    code = main(["parity", "--config-file", str(detecting.config), "--artifacts", str(path), str(broken),
                 "--budget", *SMALL_SET_BUDGETS, "--report", str(tmp_path / "r"), "MODEL.WEIGHTS", str(detecting.weights)])
    print(capsys.readouterr().out)
    reference, *rows = json.loads((tmp_path / "r" / "parity.json").read_text())["artifacts"]
    assert 100 * reference["metrics"]["bbox"]["AP"] >= FP32_AP_FLOOR, "the gate needs a model that detects"
    assert [(r["kind"], r["precision"], r["int8_target"], r["status"]) for r in rows] == [
        ("openvino", "int8", "openvino", "pass"), ("openvino", "int8", "openvino", "fail")]
    assert rows[0]["delta"]["bbox"] >= -2.0 > rows[1]["delta"]["bbox"] and code == 1


def test_nncf_quantize_refuses_what_it_cannot_do_in_one_line(exported, monkeypatch, capsys):
    source = str(exported.onnx("retinanet", "onnx"))
    capsys.readouterr()  # the session fixtures' training and export output
    assert main(["quantize", "--onnx", source, "--precision", "int8", "--target", "openvino",
                 "--calib-method", "entropy"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --calib-method entropy is not offered by NNCF "
                                               "(--target openvino); use max")
    monkeypatch.setitem(sys.modules, "nncf", None)  # not installed
    assert main(["quantize", "--onnx", source, "--precision", "int8", "--target", "openvino"]) == 2
    assert capsys.readouterr().err.strip() == "error: NNCF is not installed: pip install 'siefpn-deploy[openvino]'"
