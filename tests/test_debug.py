"""`debug compare` (siefpn_deploy.debug): an INT8 model with one layer broken on purpose is compared with its
FP32 export, and the command must name that layer; a model against itself shows no error; models of different
exports, bad images and a bad tolerance are one-line errors that write nothing."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import onnx
import pytest
from conftest import broken_int8

from siefpn_deploy.cli import build_parser, main
from siefpn_deploy.core.sidecar import read_meta, write_meta
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.quantize.options import QuantizeOptions

IMAGES = "2"  # --max-images: a few val images keep each comparison to seconds
METRICS = ("max_abs", "mean_abs", "cosine", "sqnr_db")


@pytest.fixture(scope="module")
def planted(quantized, tmp_path_factory) -> tuple[Path, Path, str]:
    """(the FP32 export, its INT8 (TensorRT layout) with one layer's weight scale x100, that layer's node name).
    The layer is the first convolution of ResNet stage 2: past the stem, with weights of its own (the neck's LFE
    and GAU weights are shared by every pyramid level), and with quantized layers before and after it."""
    int8 = quantized.onnx("retinanet", "int8")
    layer = next(n.name for n in onnx.load(str(int8)).graph.node if n.op_type == "Conv" and "/layer2/" in n.name)
    broken = tmp_path_factory.mktemp("planted") / "retinanet.int8-broken.onnx"
    broken_int8(int8, broken, layer=layer)
    return quantized.onnx("retinanet", "fp32"), broken, layer


def val_images(tiny_synth: Path) -> str:
    return str(split_paths(tiny_synth, "val")[0])


def test_names_a_planted_broken_layer_first_and_suggests_excluding_it(planted, tiny_synth, tmp_path, capsys):
    fp32, broken, layer = planted
    out = tmp_path / "report"
    assert main(["debug", "compare", str(fp32), str(broken), "--images", val_images(tiny_synth), "--max-images",
                 IMAGES, "--output", str(out)]) == 1  # over tolerance
    data = json.loads((out / "compare.json").read_text())
    assert data["first_over_tolerance"]["node"] == layer
    assert data["worst"][0]["node"] == layer
    assert f"first: {data['first_over_tolerance']['tensor']} from {layer}" in capsys.readouterr().out
    # every tensor of the graph before the broken layer is within tolerance: it is where the error starts
    rows = data["tensors"]
    first = next(i for i, r in enumerate(rows) if r["node"] == layer)
    assert rows[first]["over_tolerance"] and not any(r["over_tolerance"] for r in rows[:first])
    assert first > 0 and rows[first]["sqnr_db"] < data["tolerance"]["limit"] < min(r["sqnr_db"] for r in rows[:first])
    # the rows are in the FP32 graph's node order, with every metric
    nodes = [n.name for n in onnx.load(str(fp32)).graph.node]
    assert [r["position"] for r in rows] == sorted(r["position"] for r in rows)
    assert all(nodes[r["position"]] == r["node"] and all(isinstance(r[m], float) for m in METRICS) for r in rows)

    # the suggestion is that layer alone, as quantize matches node names (re.match), in quantize's own option
    assert len(data["suggested_excludes"]) == 1
    regex = data["suggested_excludes"][0]
    assert [name for name in nodes if re.match(regex, name)] == [layer]
    args = build_parser().parse_args(["quantize", "--onnx", str(fp32), "--precision", "int8", "--exclude", regex])
    assert args.exclude == [regex]
    assert regex in QuantizeOptions(onnx=fp32, precision="int8", exclude=args.exclude).excludes()
    assert f"--exclude '{regex}'" in data["quantize_command"]
    assert layer in (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 0


def test_a_model_against_itself_has_no_error(quantized, tiny_synth, tmp_path):
    fp32 = quantized.onnx("retinanet", "fp32")
    out = tmp_path / "report"
    assert main(["debug", "compare", str(fp32), str(fp32), "--images", val_images(tiny_synth), "--max-images",
                 IMAGES, "--output", str(out)]) == 0
    data = json.loads((out / "compare.json").read_text())
    rows = data["tensors"]
    assert len(rows) > 100  # the intermediate tensors, not only the outputs
    assert all(r["max_abs"] == 0 and r["cosine"] == 1 and r["sqnr_db"] == math.inf for r in rows)
    assert data["first_over_tolerance"] is None and data["over_tolerance"] == 0
    assert data["worst"] == [] and data["suggested_excludes"] == [] and data["integer_tensors"]["differing"] == []


def test_a_checkpoint_against_its_export_compares_the_outputs(quantized, tiny_synth, tmp_path):
    fp32 = quantized.onnx("retinanet", "fp32")
    weights = quantized.exported.seeded.weights("retinanet")
    out = tmp_path / "report"
    main(["debug", "compare", str(fp32), str(weights), "--images", val_images(tiny_synth), "--max-images", "1",
          "--output", str(out)])
    data = json.loads((out / "compare.json").read_text())
    assert data["scope"].startswith("the graph outputs")
    assert [r["tensor"] for r in data["tensors"]] == ["boxes", "scores"]  # num_dets and labels: checked for equality
    assert data["integer_tensors"]["count"] == 2


def _renamed(source: Path, target: Path, rename) -> Path:
    """A copy of the export, with its meta.json, with every tensor name `rename` (name -> name) changes changed
    wherever it appears in the main graph."""
    model = onnx.load(str(source))
    graph = model.graph
    for node in graph.node:
        node.input[:] = [rename(i) if i else i for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
    for value in (*graph.input, *graph.output):
        value.name = rename(value.name)
    onnx.save(model, str(target))
    write_meta(target, {k: v for k, v in read_meta(source).items() if k not in ("format", "onnx", "sha256")})
    return target


def test_refuses_other_exports_bad_images_and_a_bad_tolerance_in_one_line(quantized, tiny_synth, tmp_path, capsys):
    fp32 = quantized.onnx("retinanet", "fp32")
    inputs = {i.name for i in onnx.load(str(fp32)).graph.input}
    initializers = {t.name for t in onnx.load(str(fp32)).graph.initializer}
    other_names = _renamed(fp32, tmp_path / "other_names.onnx",
                           lambda n: n if n in inputs or n in initializers else f"other/{n}")
    other_inputs = _renamed(fp32, tmp_path / "other_inputs.onnx", lambda n: f"other/{n}" if n in inputs else n)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "broken.png").write_bytes(b"not a png")
    images = val_images(tiny_synth)
    cases = [
        ([str(tmp_path / "missing.onnx"), str(fp32), "--images", images], "not found: "),
        ([str(fp32), str(other_names), "--images", images], "share no tensor names"),
        ([str(fp32), str(other_inputs), "--images", images], "takes inputs"),
        ([str(fp32), str(fp32), "--images", str(unreadable)], "cannot read image"),
        ([str(fp32), str(fp32), "--images", str(tmp_path / "nowhere")], "image folder not found"),
        ([str(fp32), str(fp32), "--images", images, "--tol", "sqnr"], "--tol takes METRIC=VALUE"),
    ]
    for argv, message in cases:
        out = tmp_path / "report"
        assert main(["debug", "compare", *argv, "--output", str(out)]) == 2, argv
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], (argv, errors)
        assert not out.exists(), argv
