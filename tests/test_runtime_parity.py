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
from conftest import FP32_AP_FLOOR
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from siefpn_deploy.cli import main
from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.contract import SCHEMA_VERSION
from siefpn_deploy.core.sidecar import read_meta, write_meta
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.evaluation.agreement import match_detections
from siefpn_deploy.evaluation.coco import coco_eval, coco_results
from siefpn_deploy.evaluation.loop import CocoSubset
from siefpn_deploy.model.checkpoint import load_trained_detector
from siefpn_deploy.parity.check import verdict
from siefpn_deploy.parity.examples import EXAMPLES
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.visualize import DEFAULT_MIN_SCORE, draw

# Quantization, engine builds and parity do not branch on the box head: Mask R-CNN's graph is Faster R-CNN's with
# the mask branch, so these two cover both (test_export.py exports and checks all three)
QUANTIZED_ARCHS = ["retinanet", "mask_rcnn"]
README = Path(__file__).parent.parent / "README.md"


def val(data: Path, arch: str = "retinanet") -> CocoDetection:
    images, annotations = split_paths(data, "val")
    return CocoDetection(image_dir=images, annotation_file=annotations, with_masks=arch == "mask_rcnn")


@pytest.mark.parametrize("arch", QUANTIZED_ARCHS)
def test_parity_passes_for_every_artifact_onnx_runtime_can_run(arch, seeded, exported, quantized, tmp_path, capsys):
    artifacts = [exported.onnx(arch, "onnx")] + [quantized.onnx(arch, p) for p in ("fp32", "fp16", "int8")]
    if arch == "retinanet":  # an engine this machine cannot run is listed, not dropped
        pytest.importorskip("tensorrt_rtx_bindings", reason="no TensorRT builder installed")
        engine = tmp_path / "retina.plan"
        assert main(["build", "--onnx", str(artifacts[1]), "--engine", str(engine), "--timing-cache", ""]) == 0
        artifacts.append(engine)
    report = tmp_path / "report"
    code = main(["parity", "--config-file", str(seeded.config(arch)), "--artifacts", *map(str, artifacts),
                 "--report", str(report), "--allow-not-run", "MODEL.WEIGHTS", str(seeded.weights(arch))])
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
    # the exports take 1800 box candidates, all that 300 proposals x 6 classes make, so the graph keeps what
    # the eager model keeps; the bound leaves room for near-equal scores trading places at the K-th detection
    assert fp32["matched_fraction"] >= 0.95 and fp32["box_abs_max"] < 1e-2 and abs(rows[1]["delta"]["bbox"]) < 0.01
    if arch == "retinanet":  # whatever this host can do with it: run it, or say exactly why not
        assert rows[5]["kind"] == "tensorrt" and rows[5]["status"] in ("pass", "not run")
        if rows[5]["status"] == "not run":
            assert rows[5]["reason"] and f"not run: {rows[5]['reason']}" in (report / "parity.md").read_text()
    assert (report / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| pass |" in out and "Result: **PASS**" in out
    # each artifact that ran: a grid of the images it agrees least on, worst first, shown by parity.md
    markdown = (report / "parity.md").read_text()
    for row in rows[1:5]:
        grid = report / row["examples"]["grid"]
        assert Image.open(grid).format == "PNG" and f"]({grid.name})" in markdown
        chosen = [(e["agreement"], e["agreement_all"]) for e in row["examples"]["images"]]
        assert len(chosen) == min(EXAMPLES, data["images"]) and chosen == sorted(chosen)
    ran = [r for r in rows if r["status"] not in ("reference", "not run")]
    assert sorted(report.glob("parity.examples.*.png")) == sorted(report / r["examples"]["grid"] for r in ran)


def test_a_damaged_artifact_breaks_its_budget(detecting, tmp_path, capsys):
    """On the model that detects: a damaged head loses AP it really had."""
    source = detecting.onnx("fp32")
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
    write_meta(damaged, {k: v for k, v in meta.items() if k not in ("format", "onnx", "sha256")})
    code = main(["parity", "--config-file", str(detecting.config), "--artifacts", str(source),
                 str(damaged), "--budget", "fp32=0.05", "--report", str(tmp_path / "r"),
                 "MODEL.WEIGHTS", str(detecting.weights)])
    assert code == 1
    data = json.loads((tmp_path / "r" / "parity.json").read_text())
    reference, intact, broken = data["artifacts"]
    assert 100 * reference["metrics"]["bbox"]["AP"] >= FP32_AP_FLOOR
    assert intact["status"] == "pass" and broken["status"] == "fail" and not data["passed"]
    assert broken["delta"]["bbox"] < 0 and broken["agreement"]["matched_fraction"] == 0.0
    assert "Result: **FAIL**" in capsys.readouterr().out

    # bench --parity ranks the same files by speed within each budget, each with the AP cost parity measured
    weights = detecting.weights
    assert main(["bench", "--artifacts", str(source), str(damaged), str(weights), "--batch", "1", "--imgsz", "128",
                 "--warmup", "1", "--iters", "2", "--device", "cpu", "--parity", str(tmp_path / "r" / "parity.json"),
                 "--report", str(tmp_path / "b")]) == 0
    ranking = json.loads((tmp_path / "b" / "ranking.json").read_text())
    cost = {r["artifact"]: r["ap_cost"] for r in ranking["rows"]}
    assert cost == {source.name: pytest.approx(-intact["delta"]["bbox"]), damaged.name: -broken["delta"]["bbox"],
                    weights.name: 0.0}
    eager = next(r for r in ranking["rows"] if r["artifact"] == weights.name)
    assert eager["e2e_vs_eager"] == 1.0 and ranking["budgets"] == [0.05, 0.2, 0.5, 1.0]  # fp32=0.05 from the parity run
    for entry in ranking["fastest"]:
        within = [r for r in ranking["rows"] if r["ap_cost"] <= entry["budget"]]
        assert entry["best"]["e2e_p50_ms"] == min(r["e2e_p50_ms"] for r in within)
        assert damaged.name not in {r["artifact"] for r in within} or cost[damaged.name] <= entry["budget"]
    assert "The fastest artifact within each AP budget" in (tmp_path / "b" / "ranking.md").read_text()


def test_the_ranking_picks_the_fastest_artifact_within_each_budget():
    """Four artifacts and eager PyTorch: the ranking follows each one's AP cost and end-to-end p50."""
    from siefpn_deploy.parity.rank import rank

    def row(name, variant, ms):
        return {"artifact": name, "variant": variant, "batch": 1, "size": 384, "model_p50_ms": ms - 5,
                "model_p99_ms": ms, "e2e_p50_ms": ms, "e2e_p99_ms": ms + 1}

    bench = {"rows": [row("m.pth", "pytorch fp32", 100.0), row("a.onnx", "onnxruntime fp32", 60.0),
                      row("b.onnx", "onnxruntime int8", 40.0), row("c.onnx", "onnxruntime int8", 20.0),
                      row("d.onnx", "onnxruntime fp16", 10.0), row("a.pt2", "c++ aoti fp32", 50.0),
                      row("a.onnx", "openvino fp32", 15.0)]}  # fast, but its own parity row fails every budget
    parity = {"budgets": {"fp32": 0.1, "fp16": 0.2, "int8": 1.0}, "artifacts": [
        {"path": "out/m.pth", "kind": "pytorch", "status": "reference"},
        {"path": "export/a.onnx", "kind": "onnxruntime", "status": "pass", "delta": {"bbox": -0.05}},
        {"path": "export/b.onnx", "kind": "onnxruntime", "status": "pass", "delta": {"bbox": 0.1, "segm": -0.5}},
        {"path": "export/c.onnx", "kind": "onnxruntime", "status": "fail", "delta": {"bbox": -3.0}},
        {"path": "export/a.pt2", "kind": "aoti", "status": "pass", "delta": {"bbox": -0.15}},
        {"path": "export/a.onnx", "kind": "openvino", "status": "fail", "delta": {"bbox": -2.0}}]}
    ranking = rank(bench, parity)
    best = {f["budget"]: (f["best"]["artifact"], f["best"]["variant"]) for f in ranking["fastest"]}
    assert best == {0.1: ("a.onnx", "onnxruntime fp32"), 0.2: ("a.pt2", "c++ aoti fp32"),
                    1.0: ("b.onnx", "onnxruntime int8")}
    assert ranking["no_parity"] == ["d.onnx (onnxruntime fp16)"]  # not evaluated: never ranked, however fast
    by_name = {r["artifact"]: r for r in ranking["rows"]}
    assert by_name["b.onnx"]["ap_cost"] == 0.5 and by_name["b.onnx"]["e2e_vs_eager"] == 0.4
    # the same file in two runtimes: each row carries its own runtime's parity
    assert {(r["variant"], r["ap_cost"]) for r in ranking["rows"] if r["artifact"] == "a.onnx"} == {
        ("onnxruntime fp32", 0.05), ("openvino fp32", 2.0)}


def test_coco_eval_ap_equals_the_definition_on_a_crafted_case():
    """AP from the COCO definition, by hand: 101-point interpolated precision, averaged over IoU .50:.95.

    One image, two ground-truth boxes of one class. Three detections: A (score .9) matches gt1 at IoU 1.0;
    B (score .8) lies inside gt2, 20 x 12.4 of its 20 x 20: IoU 0.62; C (score .7) overlaps nothing.
    Ranked A, B, C:
      IoU threshold t in .50, .55, .60 (3 of 10): A and B are hits, recall reaches 1.0 at precision 1
        -> interpolated precision 1 at every recall point -> AP 1.0;
      t in .65 .. .95 (7 of 10): A is a hit, B and C are not: recall stops at 0.5, at precision 1
        -> the recall points 0, .01 .. .50 (51 of 101) have precision 1, the rest 0 -> AP 51/101.
    AP = (3 * 1 + 7 * 51/101) / 10."""
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
          "categories": [{"id": 7, "name": "thing"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0}]}
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    results = coco_results(1, np.array([[0, 0, 20, 20], [50, 50, 70, 62.4], [80, 0, 95, 15]], float),
                           np.array([0.9, 0.8, 0.7]), [7, 7, 7])
    metrics = coco_eval(CocoSubset(coco, [1]), results, "bbox", verbose=False)
    assert metrics["AP"] == pytest.approx((3 * 1.0 + 7 * 51 / 101) / 10, abs=1e-12)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(51 / 101)
    assert metrics["per_class"] == {"7": pytest.approx(metrics["AP"])}


def test_the_gate_passes_and_fails_at_hand_computed_ap():
    """The parity gate on constructed detections, no model: one image with ten boxes of one class.
    The reference returns all ten exactly (AP 1). Artifacts, with their AP by the COCO definition:
      - nine of the ten: recall stops at 0.9 with precision 1, so 91 of the 101 recall points -> AP 91/101,
        a drop of 100 * 10/101 = 9.90 points: it passes a 10-point budget and fails a 9.8-point one;
      - all ten and one false positive scored last: precision 1 up to recall 1 -> AP 1, passes a 0 budget;
      - all ten and one false positive scored first: precision k/(k+1) after k hits, whose best at any recall is
        10/11 -> AP 10/11 at every IoU threshold, a drop of 9.09 points;
      - a NaN score fails whatever its AP."""
    boxes = np.array([[10.0 * i, 0, 10.0 * i + 8, 8] for i in range(10)])
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "file_name": "a.jpg", "width": 120, "height": 40}],
                    "categories": [{"id": 3, "name": "thing"}],
                    "annotations": [{"id": i + 1, "image_id": 1, "category_id": 3, "bbox": [10 * i, 0, 8, 8],
                                     "area": 64, "iscrowd": 0} for i in range(10)]}
    coco.createIndex()

    def ap(rows: np.ndarray, scores: list[float]) -> dict:
        results = coco_results(1, rows, np.array(scores), [3] * len(rows))
        return {"bbox": coco_eval(CocoSubset(coco, [1]), results, "bbox", verbose=False)}

    false_positive = np.array([[100.0, 20, 110, 30]])
    reference = ap(boxes, [1 - 0.01 * i for i in range(10)])
    nine = ap(boxes[:9], [1 - 0.01 * i for i in range(9)])
    fp_last = ap(np.concatenate([boxes, false_positive]), [1 - 0.01 * i for i in range(11)])
    fp_first = ap(np.concatenate([false_positive, boxes]), [1 - 0.01 * i for i in range(11)])
    assert reference["bbox"]["AP"] == pytest.approx(1.0) and nine["bbox"]["AP"] == pytest.approx(91 / 101)
    assert fp_last["bbox"]["AP"] == pytest.approx(1.0) and fp_first["bbox"]["AP"] == pytest.approx(10 / 11)

    assert verdict(reference, nine, budget=10.0, non_finite=0) == ("pass", {"bbox": pytest.approx(-1000 / 101)})
    assert verdict(reference, nine, budget=9.8, non_finite=0)[0] == "fail"
    assert verdict(reference, fp_last, budget=0.0, non_finite=0) == ("pass", {"bbox": pytest.approx(0.0)})
    assert verdict(reference, fp_first, budget=9.0, non_finite=0)[0] == "fail"
    assert verdict(reference, fp_first, budget=9.1, non_finite=0) == ("pass", {"bbox": pytest.approx(-100 / 11)})
    assert verdict(reference, reference, budget=1.0, non_finite=1)[0] == "fail"
    assert verdict(nine, reference, budget=0.0, non_finite=0)[0] == "pass"  # gaining AP never fails
    # Mask R-CNN: the worst of bbox and segm decides
    both = lambda bbox, segm: {"bbox": bbox["bbox"], "segm": segm["bbox"]}
    assert verdict(both(reference, reference), both(reference, nine), budget=5.0, non_finite=0)[0] == "fail"


def infer_then_cocoeval(onnx_path: Path, images: Path, annotations: Path, out: Path, iou_types: tuple[str, ...]):
    """`infer --save-json --annotations` (its own loop over image files), then pycocotools on its JSON, as is."""
    results = out / "results.json"
    assert main(["infer", "--artifact", str(onnx_path), "--source", str(images), "--annotations", str(annotations),
                 "--save-json", str(results)]) == 0
    records = json.loads(results.read_text())
    gt = COCO(str(annotations))
    assert records and {r["image_id"] for r in records} <= set(gt.getImgIds())
    assert {r["category_id"] for r in records} <= set(gt.getCatIds())  # COCO ids, not contract labels
    stats = {}
    for iou_type in iou_types:
        ev = COCOeval(gt, gt.loadRes(str(results)), iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
        stats[iou_type] = ev.stats
    return records, stats


def parity_row(config: Path, weights: Path, onnx_path: Path, report: Path) -> dict:
    assert main(["parity", "--config-file", str(config), "--artifacts", str(onnx_path), "--report", str(report),
                 "MODEL.WEIGHTS", str(weights)]) == 0
    return json.loads((report / "parity.json").read_text())["artifacts"][1]


def test_infer_coco_json_scored_by_cocoeval_equals_parity(detecting, seeded, exported, tiny_synth, tmp_path, capsys):
    """COCO results from `infer` go into COCO.loadRes unchanged, and COCOeval on them gives the AP parity
    reports for the same artifact: on a model that detects (bbox), and on a Mask R-CNN (RLE masks, segm)."""
    images, annotations = split_paths(tiny_synth, "train")  # what the `detecting` model is scored on
    _, direct = infer_then_cocoeval(detecting.onnx("fp32"), images, annotations, tmp_path, ("bbox",))
    row = parity_row(detecting.config, detecting.weights, detecting.onnx("fp32"), tmp_path / "r")
    assert direct["bbox"][0] > 0.05  # a real AP, not 0 == 0
    assert row["metrics"]["bbox"]["AP"] == pytest.approx(direct["bbox"][0], abs=1e-4)
    assert row["metrics"]["bbox"]["AR100"] == pytest.approx(direct["bbox"][8], abs=1e-4)

    images, annotations = split_paths(tiny_synth, "val")
    records, direct = infer_then_cocoeval(exported.onnx("mask_rcnn", "onnx"), images, annotations, tmp_path / "m",
                                          ("bbox", "segm"))
    assert set(records[0]) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    row = parity_row(seeded.config("mask_rcnn"), seeded.weights("mask_rcnn"), exported.onnx("mask_rcnn", "onnx"),
                     tmp_path / "rm")
    for iou_type in ("bbox", "segm"):
        assert row["metrics"][iou_type]["AP"] == pytest.approx(direct[iou_type][0], abs=1e-4)
        assert row["metrics"][iou_type]["AR100"] == pytest.approx(direct[iou_type][8], abs=1e-4)


def grow(masks: np.ndarray) -> np.ndarray:
    """Boolean masks [N, H, W] dilated by one pixel (3x3)."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
    h, w = masks.shape[1:]
    return np.any([padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


@pytest.mark.parametrize("arch", ["retinanet", "mask_rcnn"])
def test_predict_matches_the_torchvision_detector_in_image_pixels(arch, seeded, exported, tiny_synth):
    """Detector.predict (the runtime's preprocessing, the ONNX graph, box mapping, mask pasting) against
    the trained torchvision model called as users call it, with its own resize and postprocessing."""
    cfg = load_config(seeded.config(arch), ["MODEL.WEIGHTS", str(seeded.weights(arch))])
    model, _ = load_trained_detector(cfg, config_name="test")
    detector = Detector.from_path(exported.onnx(arch, "onnx"))
    images = [val(tiny_synth).image(i) for i in range(3)]
    compared = 0
    for image, got in zip(images, detector.predict(images, batch_size=1)):
        with torch.no_grad():
            want = model([image])[0]
        # detectron2's rule, which the runtime follows: boxes clipped to the image after NMS, empty ones dropped
        boxes = want["boxes"].clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.shape[2])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.shape[1])
        keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).numpy()
        # the R-CNNs clip proposals at the padded canvas (the graph has no image-size input; README), and their
        # tiny models fill all K slots with near-threshold scores, where one changed box shifts every rank after
        # it: compare the detections above 0.04 (their best score is ~0.07), which the cap does not reach
        floor = 0.0 if arch == "retinanet" else 0.04
        keep &= (want["scores"] > floor).numpy()
        ref = {"boxes": boxes.numpy()[keep], "scores": want["scores"].numpy()[keep], "labels": want["labels"].numpy()[keep]}
        if len(ref["boxes"]) == 0:
            assert (got.scores > floor).sum() <= 2
            continue
        assert got.category_ids == [detector.category_ids[i - 1] for i in got.labels]  # label 1 is the first class
        sel = got.scores > floor
        ours = {"boxes": got.boxes[sel], "scores": got.scores[sel], "labels": got.labels[sel]}
        pairs = match_detections(ref, ours, min_iou=0.99)  # one label numbering: torchvision's 1..C
        # near-equal scores of a barely trained model may swap order, and a proposal clipped at the canvas rather
        # than the image changes the RPN's NMS, so a few detections anywhere may differ: at most 2 per image
        assert abs(len(ours["boxes"]) - len(ref["boxes"])) <= 2 and len(pairs) >= len(ref["boxes"]) - 2
        compared += len(pairs)
        r, g = (np.array(x) for x in zip(*pairs))
        assert np.abs(ours["boxes"][g] - ref["boxes"][r]).max() < 0.05  # pixels
        assert np.abs(ours["scores"][g] - ref["scores"][r]).max() < 1e-3
        if arch == "mask_rcnn":
            assert got.masks.shape == (len(got), *image.shape[1:]) and got.masks.dtype == bool
            mine, theirs = got.masks[sel][g], want["masks"][keep][r, 0].numpy() > 0.5
            # the runtime pastes as detectron2 (grid_sample at pixel centres), torchvision expands the box by a
            # pixel and resizes: borders move by up to a pixel (a share of the mask that grows as masks shrink),
            # so each mask lies within the other grown by one pixel, but for the pixel or two that torchvision's
            # expansion gives a box under a pixel wide, where the runtime pastes nothing
            outside = [(a & ~grow(b)).sum(axis=(1, 2)) for a, b in ((mine, theirs), (theirs, mine))]
            assert max(o.max(initial=0) for o in outside) <= 2, outside
    assert compared > 20


def test_predict_accepts_paths_arrays_tensors_and_bgr(exported, tiny_synth):
    detector = Detector.from_path(exported.onnx("retinanet", "onnx"))
    path = min(split_paths(tiny_synth, "val")[0].iterdir())
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
    code = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    assert len(code.strip().splitlines()) <= 10
    (tmp_path / "export").mkdir()
    source = exported.onnx("retinanet", "onnx")
    for name in (source.name, source.name[:-5] + ".meta.json"):
        shutil.copy(source.with_name(name), tmp_path / "export" / name.replace(source.stem, "demo"))
    (tmp_path / "datasets").mkdir()
    os.symlink(tiny_synth, tmp_path / "datasets" / "synth")
    monkeypatch.chdir(tmp_path)
    # the copied sidecar names the original file; the sha256 still matches the bytes
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example, run as a user would
    assert re.search(r"\w+ +0\.\d\d \[", capsys.readouterr().out)


# ------------------------------------------------------------------ infer and bench


def test_infer_draws_the_confident_detections_and_writes_every_one(exported, tiny_synth, tmp_path, capsys):
    """The pictures show what --vis-score and --vis-top let through (default: score >= 0.5); the JSON keeps every
    detection above the model's own threshold, whatever is drawn."""
    source = split_paths(tiny_synth, "val")[0]
    onnx_path = exported.onnx("mask_rcnn", "onnx")
    assert main(["infer", "--artifact", str(onnx_path), "--source", str(source),
                 "--save-vis", str(tmp_path / "vis"), "--save-json", str(tmp_path / "dets.json")]) == 0
    assert f"drawn (score >= {DEFAULT_MIN_SCORE:g}) into" in capsys.readouterr().out
    files = sorted(source.iterdir())
    detector = Detector.from_path(onnx_path)
    found = dict(zip(files, detector.predict(files, batch_size=1)))  # one image per canvas, as infer runs them
    records = json.loads((tmp_path / "dets.json").read_text())
    assert records and {"file_name", "bbox", "score", "category_id", "segmentation"} <= set(records[0])
    scores = [r["score"] for r in records]
    assert len(records) == sum(len(d) for d in found.values())
    assert min(scores) < DEFAULT_MIN_SCORE and min(scores) >= detector.meta["postprocess"]["score_thresh"]
    for path, dets in found.items():
        image = Image.open(path).convert("RGB")
        picture = np.asarray(Image.open(tmp_path / "vis" / f"{path.stem}.png"))
        assert np.array_equal(picture, np.asarray(draw(image, dets, min_score=DEFAULT_MIN_SCORE)))
        if not (dets.scores >= DEFAULT_MIN_SCORE).any():  # nothing confident: the picture is the image itself
            assert np.array_equal(picture, np.asarray(image))

    # the old picture's threshold, the best one only: drawn on every image; the JSON is the same
    assert main(["infer", "--artifact", str(onnx_path), "--source", str(source), "--vis-score", "0.05",
                 "--vis-top", "1", "--save-vis", str(tmp_path / "top"), "--save-json", str(tmp_path / "top.json")]) == 0
    assert json.loads((tmp_path / "top.json").read_text()) == records
    for path, dets in found.items():
        image = Image.open(path).convert("RGB")
        picture = np.asarray(Image.open(tmp_path / "top" / f"{path.stem}.png"))
        assert np.array_equal(picture, np.asarray(draw(image, dets, min_score=0.05, top=1)))
        assert not np.array_equal(picture, np.asarray(image))


def test_infer_on_a_full_disk_is_one_line_and_keeps_the_old_results(exported, tiny_synth, tmp_path):
    """A full disk, stood in for by a file-size limit (RLIMIT_FSIZE: writes past it fail as ENOSPC would): one
    line, exit 2, the earlier dets.json intact and no temporary file left."""
    import resource
    import signal
    import subprocess
    import sys

    out = tmp_path / "dets.json"
    out.write_text("[]\n")
    limit = 4096  # the detections of the val images take more

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "siefpn_deploy", "infer", "--artifact",
                           str(exported.onnx("mask_rcnn", "onnx")), "--source", str(split_paths(tiny_synth, "val")[0]),
                           "--save-json", str(out)], capture_output=True, text=True, timeout=300,
                          preexec_fn=limited, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: cannot write {out}: File too large"
    assert out.read_text() == "[]\n" and sorted(p.name for p in tmp_path.iterdir()) == ["dets.json"]


def test_bench_writes_json_markdown_and_plot(exported, tmp_path, capsys):
    assert main(["bench", "--artifacts", str(exported.onnx("retinanet", "onnx")), "--batch", "1", "2",
                 "--imgsz", "128", "--warmup", "1", "--iters", "3", "--report", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["batch"], r["size"]) for r in report["rows"]] == [(1, 128), (2, 128)]
    for r in report["rows"]:
        assert 0 < r["model_p50_ms"] <= r["model_p99_ms"] and r["e2e_p50_ms"] > 0 and r["peak_rss_mib"] > 0
    assert (tmp_path / "bench.png").is_file() and "img/s" in (tmp_path / "bench.md").read_text()



def test_onnx_runtime_s_workers_stop_after_a_run_when_asked(exported):
    """spin_after_run=False (optimize's head-to-head): ONNX Runtime's session stops its workers when a run ends,
    so the process uses no CPU while it waits; by default they spin for a while (ONNX Runtime's own default)."""
    import time

    path = exported.onnx("retinanet", "onnx")
    image = np.random.default_rng(0).integers(0, 255, (128, 160, 3), dtype=np.uint8)
    used = {}
    for spin in (True, False):
        detector = Detector.from_path(path, device="cpu", threads=2, spin_after_run=spin)
        options = detector.backend.session.get_session_options()
        if spin:
            with pytest.raises(RuntimeError, match="does not have configuration"):  # ONNX Runtime's default
                options.get_session_config_entry("session.force_spinning_stop")
        else:
            assert options.get_session_config_entry("session.force_spinning_stop") == "1"
        detector.predict(image)
        cpu = []
        for _ in range(3):
            detector.predict(image)
            start = time.process_time()
            time.sleep(0.2)
            cpu.append(time.process_time() - start)
        used[spin] = min(cpu)
    assert used[False] < 0.005, used  # seconds of CPU in 0.2 s of waiting


def test_pytorch_gets_one_thread_while_another_runtime_computes_on_the_cpu(seeded, exported, tiny_synth,
                                                                            monkeypatch):
    """Where ONNX Runtime computes the model, bench times it, and infer runs it, with PyTorch (which then only pre-
    and postprocesses) on one thread, and PyTorch's count is back afterwards; where PyTorch computes the model it
    keeps its count. Seen from inside the backend's run and the infer loop."""
    from siefpn_deploy.runtime.bench import bench_detector

    onnx_detector = Detector.from_path(exported.onnx("retinanet", "onnx"))
    eager = Detector.from_path(seeded.weights("retinanet"), device="cpu")
    assert (onnx_detector.torch_threads, eager.torch_threads) == (1, None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that one thread is a change on any host
    try:
        for detector, expected in ((onnx_detector, 1), (eager, 2)):
            seen = []
            run = detector.backend.run
            monkeypatch.setattr(detector.backend, "run", lambda *a, run=run, seen=seen: (
                seen.append(torch.get_num_threads()), run(*a))[1])
            bench_detector(detector, label="x", variant="y", batch=1, size=96, warmup=1, iters=2)
            assert seen and set(seen) == {expected}
            assert torch.get_num_threads() == 2

        import siefpn_deploy.runtime.infer as infer_module

        in_infer = []
        monkeypatch.setattr(infer_module, "run_infer", lambda *a, **k: in_infer.append(torch.get_num_threads()))
        assert main(["infer", "--artifact", str(exported.onnx("retinanet", "onnx")), "--source",
                     str(split_paths(tiny_synth, "val")[0])]) == 0
        assert in_infer == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


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
    (tmp_path / "not_parity.json").write_text("[]")
    for parity in (tmp_path / "none.json", tmp_path / "not_parity.json"):
        line = run(capsys, "bench", "--artifacts", onnx_path, "--parity", str(parity))
        assert str(parity) in line
    corrupt = tmp_path / "images"
    corrupt.mkdir()
    (corrupt / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert "cannot read image" in run(capsys, "infer", "--artifact", onnx_path, "--source", str(corrupt))
    assert "broken.jpg" in run(capsys, "infer", "--artifact", onnx_path, "--source", str(corrupt / "broken.jpg"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images in" in run(capsys, "infer", "--artifact", onnx_path, "--source", str(empty))
    for option, value in (("--vis-score", "1.5"), ("--vis-top", "0")):  # refused before the model loads
        line = run(capsys, "infer", "--artifact", str(tmp_path / "none.onnx"), "--source", str(empty), option, value)
        assert line.startswith(f"error: {option} ") and value in line
    wrong = tmp_path / "model.txt"
    wrong.write_text("hello")
    assert "unknown artifact" in run(capsys, "infer", "--artifact", str(wrong), "--source", str(empty))
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(onnx_path, lonely)
    assert "has no lonely.meta.json" in run(capsys, "infer", "--artifact", str(lonely), "--source", str(empty))
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"engine bytes")
    assert "has no x.engine.json" in run(capsys, "infer", "--artifact", str(plan), "--source", str(empty))
    sidecar = {"format": "siefpn-deploy/engine-meta", "schema_version": SCHEMA_VERSION, "engine_sha256": "0", "io": [],
               "model": {}, "tensorrt": {}, "profile": {}}
    (tmp_path / "x.engine.json").write_text(json.dumps(sidecar))
    assert "does not match x.engine.json" in run(capsys, "infer", "--artifact", str(plan), "--source", str(empty))
    old = tmp_path / "old.plan"
    old.write_bytes(b"engine bytes")
    (tmp_path / "old.engine.json").write_text(json.dumps({**sidecar, "schema_version": "1.3"}))
    line = run(capsys, "infer", "--artifact", str(old), "--source", str(empty))
    assert "old.engine.json has schema_version '1.3'" in line and f"reads {SCHEMA_VERSION.split('.')[0]}.x" in line


def test_a_meta_of_another_contract_major_version_is_refused(exported, tmp_path, capsys):
    source = exported.onnx("retinanet", "onnx")
    copy = tmp_path / "m.onnx"
    shutil.copy(source, copy)
    meta = read_meta(source)
    major = int(SCHEMA_VERSION.split(".")[0])
    for version, expected in ((f"{major - 1}.0", f"schema_version '{major - 1}.0'"), (None, "schema_version None")):
        written = {k: v for k, v in meta.items() if k not in ("format", "onnx", "sha256", "schema_version")}
        write_meta(copy, written if version is None else {**written, "schema_version": version})
        line = run(capsys, "infer", "--artifact", str(copy), "--source", str(copy))
        assert "m.meta.json" in line and expected in line and "re-export" in line
    write_meta(copy, {**meta, "schema_version": f"{major}.7"})  # a newer minor version of the same contract reads fine
    assert Detector.from_path(copy).contract.max_detections == meta["max_detections"]
