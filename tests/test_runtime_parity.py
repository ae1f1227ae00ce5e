"""The Python runtime (`Detector`), `siefpn-deploy parity`, `infer` and `bench`."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval
from siefpn_deploy.export.compare import match_detections
from siefpn_deploy.export.meta import read_meta, write_meta
from siefpn_deploy.parity.evaluate import evaluate_detector

from siefpn_deploy.cli import main
from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.fileio import write_json
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.export.exporter import load_trained_detector
from siefpn_deploy.runtime import Detector

ARCHS = ["retinanet", "faster_rcnn", "mask_rcnn"]
README = Path(__file__).parent.parent / "README.md"


def val(data: Path, arch: str = "retinanet") -> CocoDetection:
    images, annotations = split_paths(data, "val")
    return CocoDetection(image_dir=images, annotation_file=annotations, with_masks=arch == "mask_rcnn")


@pytest.mark.parametrize("arch", ARCHS)
def test_parity_passes_for_every_artifact_onnx_runtime_can_run(arch, trained, exported, quantized, tmp_path, capsys):
    artifacts = [exported.onnx(arch, "onnx")] + [quantized.onnx(arch, p) for p in ("fp32", "fp16", "int8")]
    if arch == "retinanet":  # an engine this machine cannot run is listed, not dropped
        pytest.importorskip("tensorrt_rtx_bindings", reason="no TensorRT builder installed")
        engine = tmp_path / "retina.plan"
        assert main(["build", "--onnx", str(artifacts[1]), "--engine", str(engine), "--timing-cache", ""]) == 0
        artifacts.append(engine)
    report = tmp_path / "report"
    code = main(["parity", "--config-file", str(trained.config(arch)), "--artifacts", *map(str, artifacts),
                 "--report", str(report), "MODEL.WEIGHTS", str(trained.weights(arch))])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads((report / "parity.json").read_text())
    rows = data["artifacts"]
    assert [r["status"] for r in rows[:5]] == ["reference", "pass", "pass", "pass", "pass"]
    assert data["passed"] and data["environment"]["torch"] == torch.__version__
    for row in rows[1:5]:
        assert set(row["metrics"]) == ({"bbox", "segm"} if arch == "mask_rcnn" else {"bbox"})
        assert len(row["metrics"]["bbox"]) == 13  # the 12 COCOeval numbers and per-class AP
        assert row["agreement"]["non_finite"] == 0 and row["agreement"]["reference"] > 0
    fp32 = rows[1]["agreement"]
    assert fp32["matched_fraction"] == 1.0 and fp32["box_abs_max"] < 1e-2 and abs(rows[1]["delta"]["bbox"]) < 0.01
    if arch == "retinanet":
        assert rows[5]["status"] == "not run" and "no CUDA device" in rows[5]["reason"]
        assert "not run: cannot run the TensorRT engine" in (report / "parity.md").read_text()
    assert (report / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| pass |" in out and "Result: **PASS**" in out


def test_a_damaged_artifact_breaks_its_budget(trained, exported, tmp_path, capsys):
    source = exported.onnx("retinanet", "onnx")
    model = onnx.load(str(source))
    damaged_tensors = 0
    for tensor in model.graph.initializer:  # class logits pushed far down: a conversion that lost the head
        if tensor.name.endswith("classification_head.cls_logits.bias"):
            tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) - 20.0, tensor.name))
            damaged_tensors += 1
    assert damaged_tensors == 1
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    meta = read_meta(source)
    write_meta(damaged, {k: v for k, v in meta.items() if k not in ("format", "version", "onnx", "sha256")})
    # the tiny model's AP is small, so the budget is zero: any drop fails
    code = main(["parity", "--config-file", str(trained.config("retinanet")), "--artifacts", str(source),
                 str(damaged), "--budget", "fp32=0", "--report", str(tmp_path / "r"),
                 "MODEL.WEIGHTS", str(trained.weights("retinanet"))])
    assert code == 1
    data = json.loads((tmp_path / "r" / "parity.json").read_text())
    reference, intact, broken = data["artifacts"]
    assert reference["metrics"]["bbox"]["AP"] > 0
    assert intact["status"] == "pass" and broken["status"] == "fail" and not data["passed"]
    assert broken["delta"]["bbox"] < 0 and broken["agreement"]["matched_fraction"] == 0.0
    assert "Result: **FAIL**" in capsys.readouterr().out


def test_our_ap_equals_a_direct_cocoeval_run(exported, tiny_synth, tmp_path):
    dataset = val(tiny_synth)
    evaluation = evaluate_detector(Detector.from_path(exported.onnx("retinanet", "onnx")), dataset, batch_size=2)
    results = tmp_path / "results.json"
    write_json(results, evaluation.results)
    coco_dt = dataset.coco.loadRes(str(results))
    ev = COCOeval(dataset.coco, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert len(evaluation.results) > 20
    assert evaluation.metrics["bbox"]["AP"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert evaluation.metrics["bbox"]["AR100"] == pytest.approx(ev.stats[8], abs=1e-12)


@pytest.mark.parametrize("arch", ["retinanet", "mask_rcnn"])
def test_predict_matches_the_torchvision_detector_in_image_pixels(arch, trained, exported, tiny_synth):
    """Detector.predict (the runtime's preprocessing, the ONNX graph, box mapping, mask pasting) against
    the trained torchvision model called as users call it, with its own resize and postprocessing."""
    cfg = load_config(trained.config(arch), ["MODEL.WEIGHTS", str(trained.weights(arch))])
    model, _ = load_trained_detector(cfg, config_name="test")
    detector = Detector.from_path(exported.onnx(arch, "onnx"))
    images = [val(tiny_synth)[i][0] for i in range(3)]
    compared = 0
    for image, got in zip(images, detector.predict(images, batch_size=1)):
        with torch.no_grad():
            want = model([image])[0]
        ref = {"boxes": want["boxes"].numpy(), "scores": want["scores"].numpy(), "labels": want["labels"].numpy()}
        if len(ref["boxes"]) == 0:
            assert len(got) <= 2
            continue
        pairs = match_detections(ref, {"boxes": got.boxes, "scores": got.scores, "labels": got.labels + 1},
                                 min_iou=0.99)  # near-equal scores of a barely trained model may swap order
        # torchvision clips boxes to the resized image before NMS, the graph to the padded canvas (its
        # contract has no per-image size), so a box at the image's edge can rarely take another NMS path
        assert abs(len(got) - len(ref["boxes"])) <= 2 and len(pairs) >= 0.95 * len(ref["boxes"])
        compared += len(pairs)
        r, g = (np.array(x) for x in zip(*pairs))
        assert np.abs(got.boxes[g] - ref["boxes"][r]).max() < 0.05  # pixels
        assert np.abs(got.scores[g] - ref["scores"][r]).max() < 1e-3
        assert got.category_ids == [detector.category_ids[i] for i in got.labels]
        if arch == "mask_rcnn":
            assert got.masks.shape == (len(got), *image.shape[1:]) and got.masks.dtype == bool
            mine, theirs = got.masks[g], want["masks"][r, 0].numpy() > 0.5
            assert (mine & theirs).sum() / max(1, (mine | theirs).sum()) > 0.99
    assert compared > 20


def test_predict_accepts_paths_arrays_tensors_and_bgr(exported, tiny_synth):
    detector = Detector.from_path(exported.onnx("retinanet", "onnx"))
    path = sorted(split_paths(tiny_synth, "val")[0].iterdir())[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    from_path = detector.predict(path)
    from_array = detector.predict(rgb)
    from_bgr = detector.predict(rgb[..., ::-1].copy(), color="BGR")
    from_tensor = detector.predict(torch.from_numpy(rgb.copy()).permute(2, 0, 1))  # CHW uint8
    for other in (from_array, from_bgr, from_tensor):
        assert np.allclose(other.boxes, from_path.boxes) and np.allclose(other.scores, from_path.scores)
    batch = detector.predict(np.stack([rgb, rgb, rgb, rgb, rgb]))  # more than the exported batch of 4
    assert len(batch) == 5 and all(np.allclose(d.boxes, from_path.boxes, atol=1e-3) for d in batch)


def test_readme_python_example_runs(exported, tiny_synth, tmp_path, monkeypatch, capsys):
    code = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    (tmp_path / "export").mkdir()
    source = exported.onnx("retinanet", "onnx")
    for name in (source.name, source.name[:-5] + ".meta.json"):
        shutil.copy(source.with_name(name), tmp_path / "export" / name.replace(source.stem, "demo"))
    (tmp_path / "datasets").mkdir()
    os.symlink(tiny_synth, tmp_path / "datasets" / "synth")
    monkeypatch.chdir(tmp_path)
    # the copied sidecar names the original file; the sha256 still matches the bytes
    exec(compile(code, "README.md", "exec"), {})
    assert re.search(r"\w+ +0\.\d\d \[", capsys.readouterr().out)


# ------------------------------------------------------------------ infer and bench


def test_infer_writes_drawings_and_json(exported, tiny_synth, tmp_path, capsys):
    source = split_paths(tiny_synth, "val")[0]
    assert main(["infer", "--artifact", str(exported.onnx("mask_rcnn", "onnx")), "--source", str(source),
                 "--save-vis", str(tmp_path / "vis"), "--save-json", str(tmp_path / "dets.json")]) == 0
    drawn = sorted((tmp_path / "vis").glob("*.png"))
    assert len(drawn) == len(list(source.iterdir()))
    records = json.loads((tmp_path / "dets.json").read_text())
    assert records and {"file_name", "bbox", "score", "category_id", "segmentation"} <= set(records[0])
    original = np.asarray(Image.open(source / Path(records[0]["file_name"]).name).convert("RGB"))
    assert not np.array_equal(np.asarray(Image.open(drawn[0]).convert("RGB")), original)  # something was drawn
    assert "detections in" in capsys.readouterr().out


def test_bench_writes_json_markdown_and_plot(exported, tmp_path, capsys):
    assert main(["bench", "--artifacts", str(exported.onnx("retinanet", "onnx")), "--batch", "1", "2",
                 "--imgsz", "128", "--warmup", "1", "--iters", "3", "--report", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["batch"], r["size"]) for r in report["rows"]] == [(1, 128), (2, 128)]
    for r in report["rows"]:
        assert 0 < r["model_p50_ms"] <= r["model_p99_ms"] and r["e2e_p50_ms"] > 0 and r["peak_rss_mib"] > 0
    assert (tmp_path / "bench.png").is_file() and "img/s" in (tmp_path / "bench.md").read_text()


# ------------------------------------------------------------------ bad input: one line each


def run(capsys, *args: str) -> str:
    """The command fails with exit code 2 and one error line (progress-bar lines aside)."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"^[\w .()-]+: +\d+%\|", line)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_runtime_inputs(exported, tiny_synth, tmp_path, capsys):
    onnx_path = str(exported.onnx("retinanet", "onnx"))
    corrupt = tmp_path / "images"
    corrupt.mkdir()
    (corrupt / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert "cannot read image" in run(capsys, "infer", "--artifact", onnx_path, "--source", str(corrupt))
    assert "broken.jpg" in run(capsys, "infer", "--artifact", onnx_path, "--source", str(corrupt / "broken.jpg"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images in" in run(capsys, "infer", "--artifact", onnx_path, "--source", str(empty))
    wrong = tmp_path / "model.txt"
    wrong.write_text("hello")
    assert "unknown artifact" in run(capsys, "infer", "--artifact", str(wrong), "--source", str(empty))
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(onnx_path, lonely)
    assert "has no lonely.meta.json" in run(capsys, "infer", "--artifact", str(lonely), "--source", str(empty))
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"engine bytes")
    assert "has no x.engine.json" in run(capsys, "infer", "--artifact", str(plan), "--source", str(empty))
    sidecar = {"format": "siefpn-deploy/engine-meta", "engine_sha256": "0", "io": [], "model": {}, "tensorrt": {}}
    (tmp_path / "x.engine.json").write_text(json.dumps(sidecar))
    assert "does not match x.engine.json" in run(capsys, "infer", "--artifact", str(plan), "--source", str(empty))
