"""The session's shared models, built ahead in one background process while the tests that need none of them
run (conftest.py orders those first).

Most of a shared model's build is one Python thread: torch.export's symbolic shapes, the ONNX optimiser,
AOTInductor's code generation. On a 2-core machine the second core is mostly idle meanwhile, so the suite
builds them in a second process. Correctness does not depend on it: a test that needs a model waits until
the worker has built it (or failed, or died), then calls the same fixture method, which returns the finished
artifact through the stages' own reuse check (sidecar hashes), or builds it itself if the worker could not.

Run by conftest.py as `python tests/prebuild.py SPEC.json`; SPEC names the session's folders and the items.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

# the order in which the tests reach them (conftest.py's ordering): the exports and the compiled package,
# then the seeded models' FP16 and INT8 versions, then the trained `detecting` model and its versions.
# The Faster R-CNN export and Mask R-CNN's --max-det-masks 3 export (about 70 s each here) are left to the test
# process: the worker's list is the longer of the two processes' work, so the last tests waited for it
# (benchmarks/results/test_suite.md), and the test process had that much time idle.
PLAN = (
    ("onnx", "retinanet", "onnx"), ("onnx", "mask_rcnn", "onnx"), ("package", "mask_rcnn"), ("demo",),
    ("onnx", "retinanet", "tensor"), ("onnx", "mask_rcnn", "tensor"),
    *(("quantized", arch, p) for arch in ("retinanet", "mask_rcnn") for p in ("fp16", "int8", "int8-cpu")),
    ("detecting", "fp32"), ("detecting", "fp16"), ("detecting", "int8"), ("detecting", "int8-cpu"),
    ("detecting", "int8-ov"),
)
WAIT_LIMIT_S = 1800  # past this, a waiting test builds the item itself


def key(item: tuple[str, ...]) -> str:
    return "-".join(item)


class Ahead:
    """What a fixture asks before it builds an item: `wait(item)` returns once the worker has built it, failed
    on it or ended. The default one waits for nothing (no worker: the fixture builds everything itself)."""

    def wait(self, item: tuple[str, ...]) -> None:
        pass


class Worker(Ahead):
    """The background process on spec["items"] (a subsequence of PLAN), reporting into `folder`."""

    def __init__(self, spec: dict, folder: Path) -> None:
        self.folder, self.items = folder, {tuple(item) for item in spec["items"]}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spec.json").write_text(json.dumps({**spec, "folder": str(folder)}))
        # one thread: the tests in the main process keep the other core, and its torch threads are not starved
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.log = (folder / "worker.log").open("w")
        self.process = subprocess.Popen([sys.executable, __file__, str(folder / "spec.json")], env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)

    def wait(self, item: tuple[str, ...]) -> None:
        if item not in self.items:  # not the worker's: the fixture builds it now
            return
        deadline = time.monotonic() + WAIT_LIMIT_S
        marks = (self.folder / f"{key(item)}.done", self.folder / f"{key(item)}.failed")
        while not any(m.exists() for m in marks) and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)

    def stop(self) -> list[str]:
        """Ends the worker; returns its per-item times ("[prebuild] KEY in S s"), for the session's summary."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()
        lines = (self.folder / "worker.log").read_text(errors="replace").splitlines()
        failed = [f"[prebuild] {m.name[:-len('.failed')]} failed" for m in sorted(self.folder.glob("*.failed"))]
        return [line for line in lines if line.startswith("[prebuild]")] + failed


def build(spec: dict) -> None:
    import torch
    from conftest import Demo, Detecting, Exported, Quantized, Seeded

    torch.set_num_threads(1)
    seeded = Seeded(Path(spec["synth"]), Path(spec["seeded"]))
    exported = Exported(seeded, Path(spec["exported"]))
    quantized = Quantized(exported, Path(spec["quantized"]))
    detecting = Detecting(Path(spec["synth"]), Path(spec["detecting"]))
    demo = Demo(Path(spec["synth_easy"]), Path(spec["demo"]))
    folder = Path(spec["folder"])
    start = time.perf_counter()
    for item in map(tuple, spec["items"]):
        t0 = time.perf_counter()
        try:
            kind, *args = item
            if kind == "onnx":
                exported.onnx(*args[:2], *map(int, args[2:]))
            elif kind == "package":
                exported.package(*args)
            elif kind == "quantized":
                quantized.onnx(*args)
            elif kind == "demo":
                demo.run()
            else:
                detecting.onnx(*args)
        except Exception:  # noqa: BLE001 - the waiting test builds it itself and shows the error there
            (folder / f"{key(item)}.failed").write_text(traceback.format_exc())
            continue
        (folder / f"{key(item)}.done").write_text(f"{time.perf_counter() - t0:.1f} s\n")
        print(f"[prebuild] {key(item)} in {time.perf_counter() - t0:.1f} s (done at {time.perf_counter() - start:.0f} s)",
              flush=True)


if __name__ == "__main__":
    build(json.loads(Path(sys.argv[1]).read_text()))
