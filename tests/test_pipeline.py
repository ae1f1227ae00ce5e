"""The typed stage API (siefpn_deploy/pipeline): each stage returns what an earlier run left only when its
sidecar says it answers the same request from the same input."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from conftest import PRESET, TINY_EXPORT, quiet, tiny_overrides

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.sidecar import read_meta, write_meta
from siefpn_deploy.export.exporter import export_request
from siefpn_deploy.pipeline import (
    DatasetOptions,
    ExportJob,
    QuantizeJob,
    TrainOptions,
    export_detector,
    quantize_detector,
    synthetic_dataset,
    train_detector,
)
from siefpn_deploy.pipeline.reuse import current_meta
from siefpn_deploy.pipeline.train import INPUTS, train_request
from siefpn_deploy.quantize.options import QuantizeOptions


def test_the_dataset_stage_generates_once_and_refuses_another_level(tmp_path):
    options = DatasetOptions(root=tmp_path / "d", level="easy", num_train=2, num_val=1, progress=False)
    first = synthetic_dataset(options, log=quiet)
    assert first.generated and first.val[1].is_file()
    stamp = first.val[1].stat().st_mtime_ns
    again = synthetic_dataset(options, log=quiet)
    assert not again.generated and again.val[1].stat().st_mtime_ns == stamp
    assert again.overrides()[again.overrides().index("DATASETS.TEST_ANNOTATIONS") + 1] == str(first.val[1])
    with pytest.raises(UserError, match="easy level, not the benchmark level"):
        synthetic_dataset(dataclasses.replace(options, level="benchmark"), log=quiet)
    with pytest.raises(UserError, match="--level"):
        synthetic_dataset(dataclasses.replace(options, level="hard"), log=quiet)


def test_the_train_stage_reuses_a_finished_run_of_the_same_request_only(synth_copy, tmp_path):
    opts = tuple(tiny_overrides(synth_copy, tmp_path / "run", SOLVER__MAX_ITER=1, SOLVER__CHECKPOINT_PERIOD=1))
    first = train_detector(TrainOptions(PRESET, overrides=opts), log=quiet)
    assert not first.reused and first.weights.is_file() and set(first.metrics) == {"bbox"}
    stamp = first.weights.stat().st_mtime_ns
    again = train_detector(TrainOptions(PRESET, overrides=opts), log=quiet)
    assert again.reused and again.metrics == first.metrics and first.weights.stat().st_mtime_ns == stamp
    # the run records what it answers: another config value is another request
    recorded = json.loads((first.run_dir / INPUTS).read_text())
    assert train_request(load_config(PRESET, list(opts))) == recorded
    assert train_request(load_config(PRESET, [*opts, "SOLVER.BASE_LR", "0.002"])) != recorded
    # and so is other training data at the same path: that one trains again
    train_json = synth_copy / "annotations" / "instances_train.json"
    content = json.loads(train_json.read_text())
    content["annotations"] = content["annotations"][:-1]
    train_json.write_text(json.dumps(content))
    assert not train_detector(TrainOptions(PRESET, overrides=opts), log=quiet).reused
    assert first.weights.stat().st_mtime_ns != stamp


def test_the_export_stage_reuses_only_an_intact_export_of_the_same_request(seeded, exported):
    path = exported.onnx("retinanet", "onnx")
    stamp = path.stat().st_mtime_ns
    job = ExportJob(seeded.config("retinanet"), weights=seeded.weights("retinanet"),
                    options=dataclasses.replace(TINY_EXPORT, output=path, nms="onnx"))
    again = export_detector(job, log=quiet)
    assert again.reused and path.stat().st_mtime_ns == stamp
    cfg = load_config(seeded.config("retinanet"), ["MODEL.WEIGHTS", str(seeded.weights("retinanet"))])
    options = job.options.resolved(cfg, str(seeded.config("retinanet")))
    meta = read_meta(path)
    assert meta["export"]["request"] == export_request(cfg, options)
    # another option, another config value or other weights: not this export
    assert export_request(cfg, dataclasses.replace(options, box_candidates=900)) != meta["export"]["request"]
    stricter = load_config(seeded.config("retinanet"), ["MODEL.SCORE_THRESH_TEST", "0.3"])
    assert export_request(stricter, options) != meta["export"]["request"]
    assert current_meta(path, {("source", "weights_sha256"): "0" * 64}) is None


def test_the_quantize_stage_reuses_the_same_request_and_redoes_another(quantized, tmp_path):
    source = quantized.onnx("retinanet", "fp32")
    path = quantized.onnx("retinanet", "fp16")
    stamp = path.stat().st_mtime_ns
    options = QuantizeOptions(onnx=source, precision="fp16", output=path, num_calib=8, calib_batch=4,
                              calib_size=(128, 160), calib_cache=quantized.root / "calib")
    assert quantize_detector(QuantizeJob(options), log=quiet).reused and path.stat().st_mtime_ns == stamp
    # a damaged sidecar (its sha256 no longer the model's) is never taken as current
    copy = tmp_path / "copy.fp16.onnx"
    shutil.copy(path, copy)
    write_meta(copy, {k: v for k, v in read_meta(path).items() if k not in ("format", "onnx", "sha256")})
    copy.write_bytes(copy.read_bytes() + b"\0")
    assert current_meta(copy, {}) is None
