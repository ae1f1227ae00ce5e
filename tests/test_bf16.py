"""bf16 as a precision of its own: runtime openvino-bf16 computes a .onnx in bfloat16 where the CPU does so
natively (core/openvino.py), is refused in one line elsewhere (and parity lists it as not run), and is held to
the bf16 parity budget; "openvino" stays FP32. The tests pass on a CPU with or without bf16 units and with
SIEFPN_CPU_BF16 unset, 0 or 1; what cannot be checked on this CPU is skipped with the library's own reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from siefpn_deploy.cli import main
from siefpn_deploy.core.contract import SCORES, image_rows
from siefpn_deploy.core.cpu import BF16_ENV, bf16_units, native_bf16
from siefpn_deploy.core.errors import CannotRunHere, UserError
from siefpn_deploy.core.openvino import RUNTIMES
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.evaluation.agreement import Agreement
from siefpn_deploy.export.verify import FP32_TOLERANCES
from siefpn_deploy.parity.check import DEFAULT_BUDGETS, budget_name, parse_budgets
from siefpn_deploy.parity.rank import rank, runtime_kind
from siefpn_deploy.runtime import Detector

OPENVINO = "OpenVINO is not installed (the [openvino] extra)"


def val_images(tiny_synth, count: int = 2) -> list:
    images_dir, annotations = split_paths(tiny_synth, "val")
    dataset = CocoDetection(image_dir=images_dir, annotation_file=annotations)
    return [dataset.image(i) for i in range(count)]


def agreement(want: dict[str, np.ndarray], got: dict[str, np.ndarray], batch: int) -> Agreement:
    found = Agreement()
    for b in range(batch):
        found.add(image_rows(want, b), image_rows(got, b), min_iou=0.5, score_thresh=0.05, max_det=100)
    return found


def test_openvino_bf16_computes_in_bf16_and_openvino_stays_fp32(exported, tiny_synth, tmp_path, monkeypatch):
    """(a) Where the CPU computes bf16 natively: openvino-bf16 runs, its detections are close to FP32 OpenVINO's
    but not bit-identical (the hint took effect), and FP32 OpenVINO, compiled after it into the same cache, still
    equals ONNX Runtime within the export tolerances (neither compile reuses the other's blob)."""
    pytest.importorskip("openvino", reason=OPENVINO)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a cache of this test's own
    path = exported.onnx("retinanet", "onnx")
    try:
        bf16 = Detector.from_path(path, runtime="openvino-bf16")
    except CannotRunHere as e:
        if bf16_units() and native_bf16():  # bf16 units, not turned off: it must run here
            raise
        pytest.skip(f"bf16 is not native here: {e}")
    f32, ort = Detector.from_path(path, runtime="openvino"), Detector.from_path(path)
    assert (bf16.kind, f32.kind, ort.kind) == ("openvino-bf16", "openvino", "onnxruntime")
    assert (bf16.precision, f32.precision) == ("fp32", "fp32")
    images = val_images(tiny_synth)
    for size in (160, 256):  # two canvases, batch 2
        canvas = ort.at_size(size).prepare(images)
        want, got32, got16 = ort.run_canvas(canvas), f32.run_canvas(canvas), bf16.run_canvas(canvas)
        # FP32 OpenVINO equals ONNX Runtime within the export tolerances: the bf16 compile did not leak into it
        same = agreement(want, got32, 2)
        assert same.reference > 10 and same.matched == same.reference and same.unmatched == 0
        assert same.max_box_rel <= FP32_TOLERANCES.box_rel and same.max_score_abs <= FP32_TOLERANCES.score_abs
        # bf16 is not FP32 under another name: its raw scores differ
        assert np.abs(got16[SCORES] - got32[SCORES]).max() > 0
        # ... but only by bf16's rounding: most detections match, with small score and box errors. A tiny
        # untrained model's detections sit close together, so a few swap places or cross the threshold: the
        # bounds are on the matched fraction, the medians and the sorted top scores, not on every row
        close = agreement(got32, got16, 2)
        assert close.non_finite == 0 and close.matched >= 0.75 * close.reference
        stats = close.statistics()
        assert stats["score_abs_median"] <= 0.03 and stats["box_rel_median"] <= 0.01, stats
        for b in range(2):
            top32, top16 = (np.sort(image_rows(out, b)[SCORES])[::-1][:10] for out in (got32, got16))
            n = min(len(top32), len(top16))
            assert n > 0 and np.abs(top32[:n] - top16[:n]).max() <= 0.15


def test_bf16_turned_off_is_refused_in_one_line_and_parity_lists_it_as_not_run(exported, seeded, tiny_synth, tmp_path,
                                                                              monkeypatch, capsys):
    """(b) SIEFPN_CPU_BF16=0: openvino-bf16 is refused with one line (before OpenVINO is even imported), infer
    says it as a one-line error, parity lists the row as "not run: <reason>" (failing the gate), and bench as
    skipped, beside the ONNX Runtime row that runs."""
    monkeypatch.setenv(BF16_ENV, "0")
    onnx_path = exported.onnx("retinanet", "onnx")
    with pytest.raises(CannotRunHere) as refused:
        Detector.from_path(onnx_path, runtime="openvino-bf16")
    reason = str(refused.value)
    assert reason == (f"openvino-bf16 is turned off here by {BF16_ENV}=0" if bf16_units() else
                      "openvino-bf16 needs a CPU that computes bf16 natively (AVX512-BF16 or AMX); this one has neither")
    image = min(split_paths(tiny_synth, "val")[0].iterdir())
    capsys.readouterr()  # the session fixtures' output
    assert main(["infer", "--artifact", str(onnx_path), "--source", str(image), "--runtime", "openvino-bf16"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {reason}"
    assert main(["parity", "--config-file", str(seeded.config("retinanet")), "--artifacts", str(onnx_path),
                 "--runtime", "onnxruntime", "openvino-bf16", "--max-images", "2", "--report", str(tmp_path / "p"),
                 "MODEL.WEIGHTS", str(seeded.weights("retinanet"))]) == 1
    rows = json.loads((tmp_path / "p" / "parity.json").read_text())["artifacts"]
    assert [(r["kind"], r["precision"], r["status"], r["reason"]) for r in rows[1:]] == [
        ("onnxruntime", "fp32", "pass", ""), ("openvino-bf16", "fp32", "not run", reason)]
    assert f"not run: {reason}" in (tmp_path / "p" / "parity.md").read_text()
    assert main(["bench", "--artifacts", str(onnx_path), "--runtime", "onnxruntime", "openvino-bf16", "--batch", "1",
                 "--imgsz", "128", "--warmup", "0", "--iters", "1", "--report", str(tmp_path / "b")]) == 0
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert [r["variant"] for r in bench["rows"]] == ["onnxruntime fp32"]
    assert [s["reason"] for s in bench["skipped"]] == [reason]
    capsys.readouterr()


def test_bf16_forced_on_without_bf16_units_is_refused_not_run_as_fp32(exported, monkeypatch):
    """SIEFPN_CPU_BF16=1 on a CPU without bf16 units: the project's belief says bf16, but OpenVINO does not
    emulate it (it would compile FP32 under the bf16 hint), so openvino-bf16 is refused in one line rather than
    report FP32 figures as bf16; FP32 OpenVINO still runs."""
    if bf16_units():
        pytest.skip(f"this CPU computes bf16 natively ({bf16_units()}): the forced-on case needs one that does not")
    pytest.importorskip("openvino", reason=OPENVINO)
    monkeypatch.setenv(BF16_ENV, "1")
    path = exported.onnx("retinanet", "onnx")
    with pytest.raises(CannotRunHere) as refused:
        Detector.from_path(path, runtime="openvino-bf16")
    assert str(refused.value) == (
        "openvino-bf16: OpenVINO's CPU plugin does not compute bf16 on this CPU (no BF16 in its "
        f"OPTIMIZATION_CAPABILITIES) ({BF16_ENV}=1 cannot add bf16 units); it would run FP32 under that name")
    assert Detector.from_path(path, runtime="openvino").kind == "openvino"


def test_bf16_budget_parses_and_is_routed_by_runtime_and_precision():
    """(c) --budget bf16=... parses, and a row's budget follows its arithmetic: an FP32 (or FP16) graph in
    openvino-bf16 gets bf16's, INT8 keeps int8's, every other runtime its file's precision."""
    assert DEFAULT_BUDGETS["fp16"] < DEFAULT_BUDGETS["bf16"] == 0.5 < DEFAULT_BUDGETS["int8"]
    assert parse_budgets([]) == DEFAULT_BUDGETS
    assert parse_budgets(["bf16=0.3", "int8=2"]) == {**DEFAULT_BUDGETS, "bf16": 0.3, "int8": 2.0}
    with pytest.raises(UserError, match=r"^--budget 'bf16=x': 'x' is not a number$"):
        parse_budgets(["bf16=x"])
    with pytest.raises(UserError, match="precision in fp32, fp16, bf16, int8"):
        parse_budgets(["bf32=1"])
    assert {(p, k): budget_name(p, k) for p in ("fp32", "fp16", "int8") for k in RUNTIMES} == {
        ("fp32", "onnxruntime"): "fp32", ("fp32", "openvino"): "fp32", ("fp32", "openvino-bf16"): "bf16",
        ("fp16", "onnxruntime"): "fp16", ("fp16", "openvino"): "fp16", ("fp16", "openvino-bf16"): "bf16",
        ("int8", "onnxruntime"): "int8", ("int8", "openvino"): "int8", ("int8", "openvino-bf16"): "int8"}
    assert budget_name("fp32", "tensorrt") == "fp32" and budget_name("?", "openvino") == "fp32"


def test_bench_variants_of_openvino_bf16_join_their_parity_rows():
    """A bench variant "openvino-bf16 fp32" / "openvino-bf16 int8" takes the AP cost of parity's openvino-bf16 row
    of the same file, never the FP32 OpenVINO row's."""
    row = lambda artifact, variant, ms: {"artifact": artifact, "variant": variant, "batch": 1, "size": 128,
                                         "model_p50_ms": ms, "model_p99_ms": ms, "e2e_p50_ms": ms, "e2e_p99_ms": ms}
    bench = {"rows": [row("m.pth", "pytorch fp32", 100.0), row("m.onnx", "openvino fp32", 50.0),
                      row("m.onnx", "openvino-bf16 fp32", 30.0), row("m.int8-ov.onnx", "openvino-bf16 int8", 20.0),
                      row("m.int8-ov.onnx", "openvino int8", 25.0)]}
    art = lambda path, kind, precision, delta: {"path": f"export/{path}", "kind": kind, "precision": precision,
                                                "status": "pass", "delta": {"bbox": delta}}
    parity = {"budgets": DEFAULT_BUDGETS, "artifacts": [
        {"path": "m.pth", "kind": "pytorch", "precision": "fp32", "status": "reference"},
        art("m.onnx", "openvino", "fp32", -0.05), art("m.onnx", "openvino-bf16", "fp32", -0.3),
        art("m.int8-ov.onnx", "openvino", "int8", -0.6), art("m.int8-ov.onnx", "openvino-bf16", "int8", -0.8)]}
    assert runtime_kind("openvino-bf16 int8") == "openvino-bf16"
    ranking = rank(bench, parity)
    cost = {(r["artifact"], r["variant"]): r["ap_cost"] for r in ranking["rows"]}
    assert cost == {("m.pth", "pytorch fp32"): 0.0, ("m.onnx", "openvino fp32"): pytest.approx(0.05),
                    ("m.onnx", "openvino-bf16 fp32"): pytest.approx(0.3),
                    ("m.int8-ov.onnx", "openvino-bf16 int8"): pytest.approx(0.8),
                    ("m.int8-ov.onnx", "openvino int8"): pytest.approx(0.6)}
    best = {f["budget"]: f["best"]["variant"] for f in ranking["fastest"]}
    assert best == {0.1: "openvino fp32", 0.2: "openvino fp32", 0.5: "openvino-bf16 fp32", 1.0: "openvino-bf16 int8"}


def test_the_onnx_nms_lowering_keeps_pad_slots_out_when_openvino_computes_in_bf16(tmp_path):
    """OpenVINO's bf16 rounds float32's lowest (the lowering's invalid key) to -inf in some ops and keeps it in
    others. The lowering pads TopK with K invalid slots whose indices lie past the rows: were a pad slot taken
    as valid, the GatherElements after it would read past the rows (OpenVINO stopped: "indices values of
    GatherElement exceed data size"). With 48 of 50 boxes kept and K = 100, 52 pad slots come out: each is
    invalid, its index is 0, and the valid ones are torchvision's NMS, in bf16 as in f32."""
    pytest.importorskip("openvino", reason=OPENVINO)
    import torch
    from torchvision.ops import nms

    from siefpn_deploy.core.openvino import compile_onnx
    from siefpn_deploy.export.nms import ONNX_TRANSLATIONS, OnnxNMS

    class KeepAndGather(torch.nn.Module):
        def forward(self, boxes, scores):  # boxes [1,N,4], scores [1,N]
            groups, valid = torch.zeros_like(scores, dtype=torch.int64), scores > 0.05
            keep, ok = torch.ops.siefpn.batched_nms(boxes, scores, groups, valid, 0.5, 100, 1, OnnxNMS.lowering)
            return boxes.gather(1, keep[..., None].expand(-1, -1, 4)), ok, keep

    g = torch.Generator().manual_seed(0)
    corner, extent = torch.rand(1, 50, 2, generator=g) * 200, torch.rand(1, 50, 2, generator=g) * 50 + 5
    boxes, scores = torch.cat([corner, corner + extent], -1), torch.rand(1, 50, generator=g)
    n = torch.export.Dim("n", min=2, max=5000)
    path = tmp_path / "nms.onnx"
    torch.onnx.export(KeepAndGather(), (boxes, scores), dynamo=True, custom_translation_table=ONNX_TRANSLATIONS,
                      dynamic_shapes=({1: n}, {1: n}), verbose=False).save(str(path))
    valid = scores[0] > 0.05
    want = torch.nonzero(valid).flatten()[nms(boxes[0, valid], scores[0, valid], 0.5)].tolist()
    assert len(want) < 50
    for precision in ("f32", "bf16"):
        try:
            compiled = compile_onnx(path, precision=precision, cache_dir=tmp_path / "cache")
        except CannotRunHere as e:
            if bf16_units() and native_bf16():
                raise
            pytest.skip(f"bf16 is not native here: {e}")
        picked, ok, keep = compiled({0: boxes.numpy(), 1: scores.numpy()}).values()
        assert keep[ok].tolist() == want and not keep[~ok].any() and ok.sum() == len(want)
        assert np.array_equal(picked[ok], boxes[0, want].numpy()), precision
