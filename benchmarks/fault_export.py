"""Fault run: `siefpn-deploy export` and `siefpn-deploy quantize` killed with SIGKILL at random points. After each
kill, the project's reader must take no artifact that is not complete and matching, and a rerun must succeed.

    python benchmarks/fault_export.py                       # 10 kills of each, seed 0
    python benchmarks/fault_export.py --kills 20 --seed 1

The model is the demo's config (configs/synth_retinanet_R18_demo.yaml) shrunk as the tests shrink it (16-wide
pyramid, 96-160 px images) and trained 4 iterations: only its files matter here. It is exported static (batch 1,
128x128, verified on one image), the cheapest export, and quantized to INT8 (ModelOpt, the default target) on 2
or 3 images. Every run asks for something other than the pair on disk (export: --score-thresh 0.05 / 0.06;
quantize: --num-calib 2 / 3, alternately), so every run replaces the pair, through its staging folder.

Where the kills fall: uniformly over the part of a run that writes files, from 0 to 1.1 x its duration in an
uninterrupted run (measured first, on the same two requests): from the start for quantize, and for export from
the end of the trace (the log's "traced in" line: the minute of tracing before it writes nothing), to the line
that says the pair is in place.

After each kill:
- `read_meta` (what every runtime and the stages' reuse check read through) refuses the output in one line, or
  returns a meta.json whose sha256 hashlib finds in the file, whose request is one of the two asked for, and
  whose model ONNX Runtime loads and runs on one image;
- the temporary files and staging folders the killed run left are counted (`.NAME.siefpn-tmp.PID@HOST.*`);
- the same command is rerun to the end: it must exit 0, say in one line that it removed what the killed run left
  (when it left something), leave no temporary file, and its pair must be read as the request it was given.
Writes a table with date, machine and commit to --report; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from siefpn_deploy.core.errors import UserError, one_line
from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.core.sidecar import read_meta
from siefpn_deploy.core.staging import TAG
from siefpn_deploy.data.synth import split_paths
from siefpn_deploy.pipeline import DatasetOptions, TrainOptions, synthetic_dataset, train_detector
from siefpn_deploy.runtime import Detector

CLI = [sys.executable, "-m", "siefpn_deploy"]


@dataclasses.dataclass
class Stage:
    """One command that writes `output`, in two variants (two requests) that alternate."""

    name: str
    output: Path
    variants: list[list[str]]  # the command line of each request
    section: str  # meta.json's section that records the request: export.request, quantization.request
    marker: str | None  # the log line after which the run writes files (None: from the start)
    done: str  # the log line that says the pair is in place
    requests: list[str] = dataclasses.field(default_factory=list)  # each variant's request, from a whole run
    seconds: float = 0.0  # an uninterrupted run
    writing: float = 0.0  # of which from the marker to the done line


def tiny_model(work: Path) -> tuple[Path, Path]:
    """(config, weights) of the demo's RetinaNet config, shrunk and trained 4 iterations (reused when there)."""
    data = synthetic_dataset(DatasetOptions(root=work / "data", level="easy", num_train=16, num_val=4, seed=0,
                                            min_side=96, max_side=160, progress=False), log=lambda *_: None)
    (train_images, train_json), (val_images, val_json) = split_paths(data.root, "train"), split_paths(data.root, "val")
    overrides = {"MODEL.FPN_OUT_CHANNELS": 16, "INPUT.MIN_SIZE_TRAIN": "[96, 128]", "INPUT.MAX_SIZE_TRAIN": 160,
                 "INPUT.MIN_SIZE_TEST": 128, "INPUT.MAX_SIZE_TEST": 160, "SOLVER.IMS_PER_BATCH": 2,
                 "SOLVER.MAX_ITER": 4, "SOLVER.WARMUP_ITERS": 2, "SOLVER.CHECKPOINT_PERIOD": 100,
                 "DATALOADER.NUM_WORKERS": 0, "DATASETS.TRAIN_IMAGES": train_images,
                 "DATASETS.TRAIN_ANNOTATIONS": train_json, "DATASETS.TEST_IMAGES": val_images,
                 "DATASETS.TEST_ANNOTATIONS": val_json, "OUTPUT_DIR": work / "run"}
    run = train_detector(TrainOptions("configs/synth_retinanet_R18_demo.yaml",
                                      overrides=tuple(str(x) for kv in overrides.items() for x in kv)),
                         log=lambda *_: None)
    return run.config, run.weights


def stages(work: Path, config: Path, weights: Path) -> list[Stage]:
    out = work / "out"
    onnx = out / "m.onnx"
    export = [[*CLI, "export", "--config-file", str(config), "--output", str(onnx), "--batch", "1", "--imgsz", "128",
               "--verify-images", "1", "--score-thresh", thresh, "MODEL.WEIGHTS", str(weights)]
              for thresh in ("0.05", "0.06")]
    quantize = [[*CLI, "quantize", "--onnx", str(onnx), "--precision", "int8", "--output", str(out / "m.int8.onnx"),
                 "--num-calib", count, "--calib-batch", "1", "--calib-size", "128", "128", "--calib-cache", ""]
                for count in ("2", "3")]
    return [Stage("export", onnx, export, "export", marker="[export] traced in", done="[export] wrote"),
            Stage("quantize", out / "m.int8.onnx", quantize, "quantization", marker=None, done="[quantize] wrote")]


def wait_for(line: str | None, log: Path, child: subprocess.Popen) -> float:
    """When `line` appears in the log (at once for None; at the exit if it never does)."""
    while line and child.poll() is None and line not in log.read_text(errors="replace"):
        time.sleep(0.05)
    return time.perf_counter()


def run(command: list[str], log: Path, stage: Stage, *, kill_after: float | None = None
        ) -> tuple[int | None, float, float]:
    """(exit status, or None when it was killed; seconds in all; seconds from stage.marker to stage.done). The kill
    comes kill_after seconds after the marker. Its own process group, so a kill takes any child too."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with log.open("w") as f:
        child = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        marked = wait_for(stage.marker, log, child)
        done = wait_for(stage.done, log, child) if kill_after is None else marked
        try:
            status = child.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            status = None
    return status, time.perf_counter() - t0, done - marked


def leftovers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if f".{TAG}." in p.name)


def size_of(paths: list[Path]) -> int:
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return sum(f.stat().st_size for f in files)


def read_as(stage: Stage) -> tuple[str, list[str]]:
    """What the reader makes of stage.output: (state, problems). A pair it accepts must be complete and matching."""
    try:
        meta = read_meta(stage.output)
    except UserError as e:
        text = one_line(e)
        return "refused: " + ("no meta.json" if "has no" in text else "sha256 differs" if "sha256" in text
                              else "no model" if "not found" in text else text[:60]), []
    problems = []
    if hashlib.sha256(stage.output.read_bytes()).hexdigest() != meta["sha256"]:
        problems.append("accepted a meta.json whose sha256 is not the file's")
    request = meta[stage.section]["request"]
    if request not in stage.requests:
        problems.append(f"accepted a pair of an unknown request {request}")
    try:
        Detector.from_path(stage.output, device="cpu").predict(np.zeros((128, 128, 3), np.uint8))
    except Exception as e:  # noqa: BLE001 - whatever the runtime says about an incomplete model is the finding
        problems.append(f"accepted a model ONNX Runtime cannot run: {type(e).__name__}: {one_line(e)[:80]}")
    return f"good: request {stage.requests.index(request) + 1}", problems


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    text = lines[-1] if lines else "(nothing yet)"
    text = (text[:70] + "...") if len(text) > 70 else text
    return text.replace("|", "\\|")  # a progress bar's bars would split the table's cell


def measure(stage: Stage, logs: Path) -> None:
    """Both variants run to the end: each one's request, and the uninterrupted duration."""
    for i, command in enumerate(stage.variants):
        status, seconds, writing = run(command, logs / f"{stage.name}_reference{i}.log", stage)
        if status != 0:
            raise SystemExit(f"{stage.name} failed uninterrupted (exit {status}); see {logs}/{stage.name}_reference{i}.log")
        stage.requests.append(read_meta(stage.output)[stage.section]["request"])
        stage.seconds, stage.writing = max(stage.seconds, seconds), max(stage.writing, writing)
    print(f"[fault] {stage.name}: an uninterrupted run takes {stage.seconds:.1f} s, {stage.writing:.1f} s of it "
          "writing", flush=True)


def fault_round(stage: Stage, index: int, rng: random.Random, logs: Path) -> tuple[list[object], list[str]]:
    """One kill, the checks after it, and the rerun: (table row, problems)."""
    variant = index % len(stage.variants)  # the pair on disk is the other variant's: this run replaces it
    command = stage.variants[variant]
    delay = rng.uniform(0.0, 1.1 * stage.writing)
    log = logs / f"{stage.name}_kill{index}.log"
    status, _, _ = run(command, log, stage, kill_after=delay)
    phase = "finished before the kill" if status is not None else last_line(log)
    state, problems = read_as(stage)
    left = leftovers(stage.output.parent)
    left_text = f"{len(left)} ({size_of(left) / 2**20:.1f} MiB)" if left else "0"

    rerun_log = logs / f"{stage.name}_rerun{index}.log"
    status, seconds, _ = run(command, rerun_log, stage)
    text = rerun_log.read_text(errors="replace")
    removed = [line for line in text.splitlines() if "temporary file(s) of ended runs" in line]
    if status != 0:
        problems.append(f"the rerun failed (exit {status}): {last_line(rerun_log)}")
    if left and len(removed) != 1:
        problems.append(f"the rerun did not say it removed {len(left)} left-over entries in one line")
    if leftovers(stage.output.parent):
        problems.append(f"left after the rerun: {[p.name for p in leftovers(stage.output.parent)]}")
    after, after_problems = read_as(stage)
    problems += after_problems
    if after != f"good: request {variant + 1}":
        problems.append(f"after the rerun the reader found {after}, not request {variant + 1}")
    row = [f"{stage.name} {index + 1}", f"{delay:.1f}" + (" after the trace" if stage.marker else ""), phase, state,
           left_text,
           f"exit {status}, {seconds:.0f} s" + (", removed them" if removed else ""), after,
           "ok" if not problems else "FAIL: " + "; ".join(problems)]
    print(" | ".join(map(str, row)), flush=True)
    return row, problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10, help="kills of each command (export, quantize)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="output/fault_export", help="the model, its data and the runs' folder")
    p.add_argument("--report", default="benchmarks/results/fault_export.md")
    args = p.parse_args()

    work, rng = Path(args.work), random.Random(args.seed)
    logs = work / "logs"
    shutil.rmtree(work / "out", ignore_errors=True)  # an earlier run's pair would be reused, not made again
    logs.mkdir(parents=True, exist_ok=True)
    config, weights = tiny_model(work)
    rows, failures, durations = [], 0, []
    t0 = time.perf_counter()
    for stage in stages(work, config, weights):
        measure(stage, logs)
        durations.append(f"{stage.name} took {stage.seconds:.0f} s, {stage.writing:.1f} s of it writing")
        for index in range(args.kills):
            row, problems = fault_round(stage, index, rng, logs)
            rows.append(row)
            failures += bool(problems)
    header = ["run", "killed at (s)", "its last line before the kill", "reader after the kill", "temporary entries left",
              "rerun", "reader after the rerun", "verdict"]
    killed = [r for r in rows if r[2] != "finished before the kill"]
    body = (markdown_table(header, rows) + "\n\n"
            f"{len(rows)} runs, {len(killed)} killed before they finished; {failures} failed a check. Uninterrupted, "
            + "; ".join(durations) + f". The whole fault run {time.perf_counter() - t0:.0f} s. 'request 1/2': the pair read is the one the "
            "first or second variant asked for (the pair on disk before a run is always the other variant's, so "
            "'good: request N' right after a kill of variant N means the run had landed before the kill, and the "
            "other one that nothing had moved yet). A kill can land between the model's rename and meta.json's "
            "write only by chance (milliseconds of a run); tests/test_landing.py cuts a landing short after each of "
            "its steps instead.")
    write_benchmark_report(args.report, title="Fault run: SIGKILL during export and quantize", body=body,
                           data={"header": header, "rows": rows, "failures": failures},
                           command=f"python benchmarks/fault_export.py {' '.join(sys.argv[1:])}".strip())
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
