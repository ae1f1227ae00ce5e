"""`quantize --budget`: sensitivity-driven exclusions that hold an INT8 model to its AP budget by themselves."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
from conftest import FP32_AP_FLOOR
from onnx import numpy_helper

from siefpn_deploy.cli import main
from siefpn_deploy.core.contract import graph_inputs
from siefpn_deploy.core.ort import ort_session
from siefpn_deploy.core.sidecar import meta_path, read_meta, write_meta

SCALE = 1000.0
# two BasicBlocks' conv1 -> ReLU -> conv2 (BatchNorm is folded into the convolutions at export)
FRAGILE_BLOCKS = ("/backbone/body/layer1/0/", "/backbone/body/layer2/0/")


def make_fragile(source, target) -> list[str]:
    """The FP32 graph with two layers made fragile to INT8 and its function unchanged. In each block, one output
    channel of conv1 is scaled up 1000x and conv2's weights for that input channel down 1000x: ReLU passes a
    positive scale through, so FP32 computes the same, but INT8's one scale per activation tensor, stretched by
    that channel, rounds conv2's other input channels to zero. Returns the two conv2 nodes."""
    model = onnx.load(str(source))
    weights = {t.name: t for t in model.graph.initializer}
    produced_by = {o: n for n in model.graph.node for o in n.output}

    def scale(name, index, factor) -> None:
        array = numpy_helper.to_array(weights[name]).copy()
        array[index] *= factor
        weights[name].CopyFrom(numpy_helper.from_array(array, name))

    fragile = []
    for block in FRAGILE_BLOCKS:
        conv2 = next(n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith(block + "bn2/"))
        relu = produced_by[conv2.input[0]]
        conv1 = produced_by[relu.input[0]]
        assert (relu.op_type, conv1.op_type) == ("Relu", "Conv") and conv1.name.startswith(block + "bn1/")
        channel = int(np.argmax(numpy_helper.to_array(weights[conv1.input[2]])))  # the most positive bias: active
        scale(conv1.input[1], channel, SCALE)
        scale(conv1.input[2], channel, SCALE)
        scale(conv2.input[1], (slice(None), channel), 1 / SCALE)
        fragile.append(conv2.name)
    onnx.save(model, str(target))
    write_meta(target, {k: v for k, v in read_meta(source).items() if k not in ("format", "onnx", "sha256")})
    return fragile


def test_budget_finds_the_fragile_layers_keeps_them_out_and_fails_in_one_line_when_capped(detecting, tmp_path, capsys):
    source = detecting.onnx("fp32")
    fragile_path = tmp_path / "fragile.onnx"
    fragile = make_fragile(source, fragile_path)
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 128, 160)).astype(np.float32)
    feeds = graph_inputs(image, np.array([[128, 160]], np.int32))
    for a, b in zip(ort_session(source).run(None, feeds), ort_session(fragile_path).run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)  # the same function in FP32

    reports = tmp_path / "reports"
    command = ["quantize", "--onnx", str(fragile_path), "--precision", "int8", "--target", "ort-cpu", "--budget", "1.0",
               "--sensitivity-images", "6", "--num-calib", "10", "--calib-batch", "2", "--calib-cache", "",
               "--report-dir", str(reports)]
    assert main(command) == 0
    output = tmp_path / "fragile.int8-cpu.onnx"
    sensitivity = read_meta(output)["quantization"]["sensitivity"]
    first, *_, last = sensitivity["steps"]
    assert sensitivity["fp32_ap"]["bbox"] >= FP32_AP_FLOOR, "the budget needs a model that detects"
    # the fragile model breaks the budget; the ranking puts the two fragile layers first; keeping them out holds it
    assert first["excluded"] == [] and first["delta_ap"]["bbox"] < -1.0
    assert {layer["node"] for layer in sensitivity["layers"][:2]} == set(fragile)
    assert set(fragile) <= set(sensitivity["excluded"]) == set(last["excluded"])
    assert last["holds"] and last["delta_ap"]["bbox"] >= -1.0 and len(sensitivity["steps"]) >= 2
    model = onnx.load(str(output))
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:  # what was kept out reads FP32
        if node.name in sensitivity["excluded"]:
            assert all(produced_by.get(i) != "DequantizeLinear" for i in node.input)
    report = json.loads((reports / "fragile.int8-cpu.sensitivity.json").read_text())
    assert report["holds"] and report["steps"] == sensitivity["steps"]
    plotted = {".png"} if importlib.util.find_spec("matplotlib") else set()
    assert {p.suffix for p in reports.iterdir()} == {".json", ".md"} | plotted

    # two fragile layers and room for one: the budget cannot be met; one line, and nothing written
    capped = tmp_path / "capped.int8-cpu.onnx"
    capsys.readouterr()
    assert main(command + ["--max-excluded", "1", "--output", str(capped)]) == 2
    error = capsys.readouterr().err.strip().split("\n")[-1]  # after the progress bars
    assert error.startswith("error: INT8 of fragile.onnx loses ")
    assert "with the 1 most sensitive layers kept out of INT8 (budget 1, --max-excluded 1); nothing written" in error
    assert not capped.exists() and not meta_path(capped).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".budget.")]  # no scratch left behind


def test_budget_refuses_what_it_cannot_measure_in_one_line(exported, tmp_path, capsys):
    source = str(exported.onnx("retinanet", "onnx"))
    capsys.readouterr()
    assert main(["quantize", "--onnx", source, "--precision", "fp16", "--budget", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --budget is for --precision int8 (FP16 keeps its own range check)"
    folder = tmp_path / "images"
    folder.mkdir()
    assert main(["quantize", "--onnx", source, "--precision", "int8", "--budget", "1", "--calib-data", str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --budget measures AP on held-out train images and needs their annotations: give --calib-data an "
        f"instances JSON, not the folder {folder}")
    assert main(["quantize", "--onnx", source, "--precision", "int8", "--budget", "-1"]) == 2
    assert "--budget must be >= 0" in capsys.readouterr().err
