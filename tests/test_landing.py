"""A model and its meta.json land together (core/sidecar.py: `land`, and why that order): a reader takes a model
only with the meta.json that describes it, and what a killed export or quantize leaves beside its output is
removed by the next one (core/staging.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TINY_EXPORT, quiet
from onnx import TensorProto, helper, numpy_helper

from siefpn_deploy.core.contract import SCHEMA_VERSION
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.sidecar import REQUIRED, data_path, land, meta_path, read_meta, sha256_of
from siefpn_deploy.core.staging import staging_dir, staging_prefix
from siefpn_deploy.pipeline import ExportJob, export_detector
from siefpn_deploy.pipeline.reuse import current_meta

# the fields a reader requires, as placeholders: these tests are about which files belong together, not the contract
MODEL_META = {"schema_version": SCHEMA_VERSION, **{k: {} for k in REQUIRED}}


def stage_graph(output: Path, stage: Path, weight: float) -> Path:
    """A one-node graph whose weights live in NAME.onnx.data (as an export over 2 GB writes it), in `stage`."""
    w = numpy_helper.from_array(np.full((64, 64), weight, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], f"g{weight}",  # graphs differ too
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    staged = stage / output.name
    onnx.save_model(helper.make_model(graph), staged, save_as_external_data=True, location=output.name + ".data",
                    size_threshold=0)
    return staged


def refused(path: Path) -> str:
    with pytest.raises(UserError) as e:
        read_meta(path)
    assert len(str(e.value).splitlines()) == 1
    return str(e.value)


def test_a_reader_takes_a_model_only_with_the_meta_json_that_describes_it(tmp_path):
    """Each state a landing passes through, and each a crash or a hand can leave: the old pair and the new pair
    are read, every mix is refused in one line that says to re-export."""
    output = tmp_path / "m.onnx"
    with staging_dir(output) as stage:
        old = land(stage_graph(output, stage, 1.0), output, {**MODEL_META, "version": "old"})
    assert old["data_sha256"] == sha256_of(data_path(output)) and read_meta(output)["version"] == "old"
    files = {p.name: p.read_bytes() for p in (output, data_path(output), meta_path(output))}
    with staging_dir(output) as stage:
        new = stage_graph(output, stage, 2.0)
        new_files = {p.name: p.read_bytes() for p in (new, data_path(new))}

    def state(which: dict[str, str]) -> None:
        """The folder holding each file named in `which` from the "old" or the "new" export, and no other."""
        for name in files:
            (tmp_path / name).unlink(missing_ok=True)
        for name, version in which.items():
            (tmp_path / name).write_bytes({"old": files, "new": new_files}[version][name])

    state({"m.onnx": "new", "m.onnx.data": "old", "m.meta.json": "old"})  # new graph, old data and meta.json
    assert "does not match m.meta.json (sha256 differs): re-export" in refused(output)
    state({"m.onnx": "old", "m.onnx.data": "new", "m.meta.json": "old"})  # new data first, as a landing moves it
    assert "m.onnx.data does not match m.meta.json (sha256 differs): re-export" in refused(output)
    state({"m.onnx": "new", "m.onnx.data": "new", "m.meta.json": "old"})  # moved, meta.json not written yet
    assert "sha256 differs" in refused(output)
    assert current_meta(output, {}) is None  # nor do the stages take it as an artifact to reuse
    state({"m.onnx": "new", "m.onnx.data": "new"})  # a model without its meta.json
    assert "has no m.meta.json beside it; re-export" in refused(output)
    state({"m.onnx": "old", "m.meta.json": "old"})  # the data file lost
    assert "weights file m.onnx.data is missing: re-export" in refused(output)
    state({"m.meta.json": "old"})  # a meta.json without its model
    assert "ONNX model not found" in refused(output)
    state({"m.onnx": "old", "m.onnx.data": "old", "m.meta.json": "old"})
    assert read_meta(output)["version"] == "old"


def test_a_landing_cut_short_at_any_step_is_never_read_as_good(tmp_path, monkeypatch):
    """`land` killed after each of its steps (a rename, the meta.json write): the reader sees the old pair, the new
    pair, or refuses; the meta.json written describes the staged files, hashed before they moved."""
    output = tmp_path / "m.onnx"
    with staging_dir(output) as stage:
        land(stage_graph(output, stage, 1.0), output, {**MODEL_META, "version": "old"})
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace, seen = os.replace, []
    for steps in range(4):
        for name, content in old.items():  # back to the old pair
            (tmp_path / name).write_bytes(content)

        def replace(src, dst, steps=steps):  # the renames: the data file, the graph, meta.json's atomic write
            if len(seen) == steps:
                raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this step runs
            seen.append(Path(dst).name)
            real_replace(src, dst)

        seen.clear()
        with staging_dir(output) as stage:
            staged = stage_graph(output, stage, 2.0)
            monkeypatch.setattr(os, "replace", replace)
            with contextlib.suppress(KeyboardInterrupt):
                land(staged, output, {**MODEL_META, "version": "new"})
            monkeypatch.undo()
        try:
            version = read_meta(output)["version"]
        except UserError as e:
            version = f"refused: {e}"
        expected = ["old", "refused", "refused", "new"][steps]
        assert version.startswith(expected), (steps, seen, version)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def owned(folder: Path, name: str, pid: int, host: str = "") -> Path:
    """What a temporary file or staging folder beside `name` of process `pid` (on this machine, or on `host`) is
    called, with a random part as mkstemp makes it."""
    prefix = staging_prefix(name)
    if host:
        prefix = prefix[:prefix.index("@") + 1] + host + "."
    return folder / (prefix.replace(f".{os.getpid()}@", f".{pid}@") + "k3j_x9a1")


def test_the_next_export_removes_what_a_killed_one_left(seeded, exported, tmp_path):
    """A staging folder and a temporary meta.json of a process that has ended (on this machine) are removed by the
    next export into the folder, reused or not, in one line; a live process's and another machine's stay."""
    source = exported.onnx("retinanet", "tensor")
    out = tmp_path / "export"
    out.mkdir()
    for path in (source, meta_path(source)):
        shutil.copy(path, out / path.name)  # the request is the same: the export stage reuses the copy
    dead = dead_pid()
    stale_stage = owned(out, source.name, dead)
    stale_stage.mkdir()
    (stale_stage / source.name).write_bytes(b"\0" * 4096)  # half an export
    stale_meta = Path(f"{owned(out, meta_path(source).name, dead)}.tmp")  # meta.json's atomic write, cut short
    stale_meta.write_text("{")
    live, elsewhere = owned(out, source.name, os.getppid()), owned(out, source.name, dead, host="another-machine")
    live.mkdir()
    elsewhere.mkdir()
    lines: list[str] = []
    job = ExportJob(seeded.config("retinanet"), weights=seeded.weights("retinanet"),
                    options=dataclasses.replace(TINY_EXPORT, output=out / source.name, nms="tensor"))
    assert export_detector(job, log=lines.append).reused
    assert not stale_stage.exists() and not stale_meta.exists() and live.is_dir() and elsewhere.is_dir()
    removed = [line for line in lines if "removed" in line]
    assert len(removed) == 1 and removed[0].startswith(f"[export] removed 2 temporary file(s) of ended runs from {out}")
    assert read_meta(out / source.name)["sha256"] == read_meta(source)["sha256"]
    export_detector(job, log=quiet)  # nothing left to remove: no line
