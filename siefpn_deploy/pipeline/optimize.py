"""Stage: `siefpn-deploy optimize`: the fastest artifact of one model within an AP budget, in one command.

    checkpoint (or its FP32 export) -> every candidate the target can run (made, or reused when current)
        -> parity: each candidate's AP beside PyTorch's, on the same images
        -> bench: each candidate's latency on the same scenes, at one batch and size, with eager PyTorch beside them
        -> the fastest within the budget (`parity.winner.choose`) -> DIR/best.<ext> + its meta.json, and
           DIR/optimize.{md,json,png}: every candidate with its ΔAP, latency, ratio to eager, and why it lost,
           and DIR/optimize.examples.png: the winner beside PyTorch on the images they agree least on (parity's grid)

The candidates per target:
- cpu: the FP32 graph in ONNX Runtime, OpenVINO (f32) and OpenVINO-bf16 (where the CPU computes bf16: the
  precision OpenVINO picks by default there); ONNX Runtime's CPU-INT8 and NNCF's INT8 (in OpenVINO, f32 and
  bf16 remainder); the AOTInductor package (.pt2, in Python); for Mask R-CNN the same graphs exported with
  `--max-det-masks` (the mask head on the best N rows); and, when every plain INT8 misses the budget, INT8 with
  the most sensitive layers kept out (`quantize --budget`).
- cpp: the .pt2 through the C++ runtime (siefpn-infer).
- cuda: the FP32 and FP16 graphs in ONNX Runtime's CUDA provider, and the CUDA .pt2.
- tensorrt: FP32, FP16 and INT8 engines.
A candidate this machine cannot make or run stays in the report as "not run" with its reason. A target with
nothing it can run here is refused in one line before any work.

The candidates are made in DIR/candidates/ through the stages' own reuse check (sidecar hashes): a rerun makes
only what changed. The measurements are always taken again.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import load_config
from ..core.contract import ShapeRange
from ..core.cpu import torch_threads
from ..core.errors import CannotRunHere, UserError
from ..core.fileio import atomic_write
from ..core.openvino import RUNTIMES
from ..core.reporting import markdown_table
from ..core.sidecar import ARTIFACT_SUFFIXES, BEST_NAME, ENGINE_SUFFIX, data_path, land, meta_path, read_meta
from ..core.staging import staging_dir
from ..export.options import EXPORT_DIR, ExportOptions
from ..parity.check import DEFAULT_BUDGETS
from ..parity.winner import OWN, Candidate
from ..quantize.options import INT8_SUFFIX, BudgetOptions, QuantizeOptions
from .bench import BenchJob, bench_artifacts
from .export import ExportJob, export_detector
from .parity import ParityJob, check_parity
from .quantize import QuantizeJob, quantize_detector

TARGETS = ("cpu", "cpp", "cuda", "tensorrt")
OUTPUT_DIR = EXPORT_DIR / "optimized"  # in the export stage's work folder
MASK_ROWS = 20  # Mask R-CNN's --max-det-masks candidate: masks for the best 20 detections
EXAMPLES_NAME = "optimize.examples.png"  # the winner's parity example grid, beside optimize.md


@dataclass(frozen=True)
class OptimizeJob:
    weights: Path  # the checkpoint: parity's reference and the source of every candidate
    config_file: str | Path | None = None  # None: config.yaml beside the weights (a training run's folder)
    onnx: Path | None = None  # an FP32 export of these weights to start from (else one is exported)
    target: str = "cpu"
    budget: float = DEFAULT_BUDGETS["int8"]  # AP points (0..100) the winner may lose against PyTorch
    batch: int = 1
    size: int | None = None  # square input side; None: the model's test resize (its largest input)
    dataset: tuple[Path, Path] | None = None  # parity's (images, instances JSON); None: the config's test split
    max_images: int | None = None  # parity on the first N images
    num_calib: int = 128  # INT8 calibration images (the train split)
    iters: int = 20  # timed runs per candidate
    pt2: bool = True  # make the AOTInductor package (minutes of compilation on a small CPU)
    mask_rows: int = MASK_ROWS
    overrides: tuple[str, ...] = ()
    output: Path = OUTPUT_DIR


@dataclass(frozen=True)
class OptimizeResult:
    best: Path | None  # DIR/best.<ext>; None when no candidate is within the budget
    runtime: str | None  # what runs it (meta.json's "runtime")
    choice: dict[str, Any]  # parity.winner.choose's result
    written: list[Path] = field(default_factory=list)
    summary: str = ""  # one line: the winner and its speed-ups, or why there is none


def config_of(job: OptimizeJob) -> Path:
    config = Path(job.config_file) if job.config_file else job.weights.parent / "config.yaml"
    if not job.config_file and not config.is_file():
        raise UserError(f"no config.yaml beside {job.weights}: give --config-file (the config the weights were "
                        "trained with)")
    return config


def check_target(job: OptimizeJob) -> None:
    """A one-line refusal, before any work, of a target this machine cannot run at all."""
    import torch

    if job.target not in TARGETS:
        raise UserError(f"--target must be one of {', '.join(TARGETS)}, got {job.target!r}")
    if job.target in ("cuda", "tensorrt") and not torch.cuda.is_available():
        raise UserError(f"--target {job.target} needs a CUDA device; this machine has none (try --target cpu)")
    if job.target == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
        raise UserError("--target tensorrt needs TensorRT: pip install 'siefpn-deploy[tensorrt]'")
    if job.budget < 0 or job.batch < 1 or (job.size is not None and job.size < 1) or job.iters < 1:
        raise UserError("--budget must be >= 0, and --batch, --size and --iters >= 1")
    if not job.weights.is_file():
        raise UserError(f"checkpoint not found: {job.weights}")


class Maker:
    """Makes (or reuses) the candidates' files in DIR/candidates/, each through its stage."""

    def __init__(self, job: OptimizeJob, config: Path, size: int, log) -> None:
        self.job, self.config, self.log = job, config, log
        self.folder = job.output / "candidates"
        self.name = job.weights.parent.name if job.weights.stem == "model_final" else job.weights.stem
        side = ShapeRange(min(64, size), size)
        self.shapes = {"batch": ShapeRange(1, max(job.batch, 1)), "height": side, "width": side}

    def export(self, suffix: str, *, shapes: dict[str, ShapeRange] | None = None, **options: Any) -> Path:
        out = self.folder / f"{self.name}{suffix}"
        return export_detector(ExportJob(self.config, weights=self.job.weights, overrides=self.job.overrides,
                                         options=ExportOptions(output=out, **(shapes or self.shapes), **options)),
                               log=self.log).path

    def package(self, suffix: str, **options: Any) -> Path:
        """The .pt2 compiled for the one batch and size optimize measures. Static shapes compile about five times
        faster (the demo RetinaNet: 85 s against 430 s on 2 cores): with a symbolic H and W, Inductor's CPU
        codegen spends minutes simplifying index expressions (benchmarks/results/aoti_cpu_notes.md)."""
        batch, side = ShapeRange(self.job.batch, self.job.batch), ShapeRange(self.shapes["height"].max,
                                                                             self.shapes["height"].max)
        return self.export(suffix, shapes={"batch": batch, "height": side, "width": side}, format="aoti", **options)

    @functools.cached_property
    def fp32(self) -> Path:
        """The FP32 graph every CPU recipe starts from: made (or its reuse checked, which hashes the weights) once."""
        if self.job.onnx is None:
            return self.export(".onnx", nms="onnx")
        meta = read_meta(self.job.onnx)
        if meta.get("precision", "fp32") != "fp32":
            raise UserError(f"--onnx {self.job.onnx} is {meta['precision']}; optimize starts from an FP32 export")
        if self.job.target == "cpu" and meta["postprocess"]["nms"] == "tensor":
            # the tensor NMS is a Loop of small ops, each step a call into the runtime: on the demo's RetinaNet at
            # 320 it cost ONNX Runtime 2 ms and OpenVINO 8 ms more than NonMaxSuppression
            self.log(f"[optimize] {self.job.onnx} has the tensor NMS (for TensorRT); the CPU candidates start from "
                     "an export of the same weights with ONNX's NonMaxSuppression, which ONNX Runtime and OpenVINO "
                     "run faster")
            return self.export(".onnx", nms="onnx")
        return self.job.onnx

    def int8(self, onnx: Path, target: str, budget: BudgetOptions | None = None) -> Path:
        stem = onnx.name.removesuffix(".onnx")
        output = self.folder / f"{stem}.{INT8_SUFFIX[target]}{'-budget' if budget else ''}.onnx"
        shapes = read_meta(onnx)["shapes"]["batch"]  # a static batch calibrates at that batch
        batch = shapes["max"] if shapes["min"] == shapes["max"] else QuantizeOptions.calib_batch
        options = QuantizeOptions(onnx=onnx, precision="int8", target=target, output=output, calib_batch=batch,
                                  num_calib=self.job.num_calib, calib_cache=self.folder / "calib")
        return quantize_detector(QuantizeJob(options, budget=budget), log=self.log).path

    def tensor_graph(self) -> Path:
        """The tensor-NMS graph, which every TensorRT flavour builds."""
        return self.export(".tensor.onnx", nms="tensor")

    def engine(self, onnx: Path) -> Path:
        from ..tensorrt.plan import BuildOptions
        from .build import BuildJob, build_detector_engine

        return build_detector_engine(BuildJob(BuildOptions(
            onnx=onnx, engine=self.folder / f"{onnx.name.removesuffix('.onnx')}.plan")), log=self.log).path

    def fp16(self, onnx: Path) -> Path:
        output = self.folder / f"{onnx.name.removesuffix('.onnx')}.fp16.onnx"
        return quantize_detector(QuantizeJob(QuantizeOptions(onnx=onnx, precision="fp16", output=output,
                                                             calib_cache=self.folder / "calib")), log=self.log).path


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "openvino-bf16": "OpenVINO bf16",
                 "c++": "C++ runtime"}


def label(path: Path, runtime: str) -> str:
    """The report's name of a candidate, from its meta.json: "NNCF INT8, masks for the best 20, in OpenVINO"."""
    meta = read_meta(path)
    quantization = meta.get("quantization") or {}
    what = {"ort-cpu": "ONNX Runtime CPU-INT8", "openvino": "NNCF INT8", "tensorrt": "INT8 (Q/DQ)"}.get(
        quantization.get("target"), meta.get("precision", "fp32").upper()) if meta.get("precision") == "int8" else (
        meta.get("precision", "fp32").upper())
    if path.suffix == ".pt2":
        what = f"AOTInductor {what}"
    elif path.suffix == ".plan":
        what = f"TensorRT {what}"
    excluded = (quantization.get("sensitivity") or {}).get("excluded")
    if excluded:
        what += f", {len(excluded)} sensitive layers kept out"
    cut = meta.get("mask_detections")
    if cut and cut < meta.get("max_detections", cut):
        what += f", masks for the best {cut}"
    where = RUNTIME_NAMES.get(runtime, "its own runtime" if path.suffix == ".plan" else "Python")
    return f"{what} in {where}"


def each_runtime(path: Path, *runtimes: str) -> list[tuple[Path, str]]:
    """One file made once, a candidate in each runtime."""
    return [(path, runtime) for runtime in runtimes]


def recipes(job: OptimizeJob) -> list[tuple[str, Any]]:
    """What the target makes, in order: (step name, recipe), recipe(maker) -> [(path, runtime), ...]. Each step
    is one tick of the progress bar; a step that cannot be made here is reported and skipped."""
    cfg = load_config(config_of(job), list(job.overrides) + ["MODEL.WEIGHTS", str(job.weights)])
    openvino = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
    if job.target == "cpp":
        return [("AOTInductor package", lambda m: [(m.package("_aoti.pt2"), "c++")])]
    if job.target == "cuda":
        return [("FP32 graph", lambda m: [(m.fp32, "onnxruntime")]),
                ("FP16 graph", lambda m: [(m.fp16(m.fp32), "onnxruntime")]),
                ("AOTInductor CUDA package", lambda m: [(m.package("_aoti_cuda.pt2", device="cuda"), OWN)])]
    if job.target == "tensorrt":
        return [("TensorRT FP32 engine", lambda m: [(m.engine(m.tensor_graph()), OWN)]),
                ("TensorRT FP16 engine", lambda m: [(m.engine(m.fp16(m.tensor_graph())), OWN)]),
                ("TensorRT INT8 engine", lambda m: [(m.engine(m.int8(m.tensor_graph(), "tensorrt")), OWN)])]
    steps: list[tuple[str, Any]] = [
        ("FP32 graph", lambda m: each_runtime(m.fp32, "onnxruntime", "openvino", "openvino-bf16")),
        ("ONNX Runtime CPU-INT8", lambda m: [(m.int8(m.fp32, "ort-cpu"), "onnxruntime")])]
    if openvino:
        steps.append(("NNCF INT8", lambda m: each_runtime(m.int8(m.fp32, "openvino"), "openvino", "openvino-bf16")))
    if cfg.MODEL.has_masks:
        def cut(m: Maker) -> list[tuple[Path, str]]:
            graph = m.export(f".masks{job.mask_rows}.onnx", nms="onnx", max_det_masks=job.mask_rows)
            found = [(graph, "onnxruntime"), (m.int8(graph, "ort-cpu"), "onnxruntime")]
            return found + ([(m.int8(graph, "openvino"), "openvino")] if openvino else [])
        steps.append((f"--max-det-masks {job.mask_rows}", cut))
    if job.pt2:
        steps.append(("AOTInductor package", lambda m: [(m.package("_aoti.pt2"), OWN)]))
    return steps


def optimize_detector(job: OptimizeJob, *, log=print) -> OptimizeResult:
    from ..core.progress import progress_bar
    from ..core.reporting import write_report
    from ..parity.winner import markdown, speedup_line

    check_target(job)
    config = config_of(job)
    size = job.size or read_size(config, job)
    maker = Maker(job, config, size, log)
    candidates: list[Candidate] = []
    unmade: list[dict[str, str]] = []
    steps = recipes(job)
    for name, recipe in progress_bar(steps, desc=f"optimize --target {job.target}: candidates", unit="step"):
        try:
            candidates += [Candidate(label(path, runtime), path, runtime) for path, runtime in recipe(maker)]
        except CannotRunHere as e:
            unmade.append({"label": name, "why": str(e)})
            log(f"[optimize] {name}: not made here: {e}")
    choice = measure(job, config, size, candidates, log)
    if job.target == "cpu" and needs_budget_int8(choice):
        # every plain INT8 misses the budget: INT8 with its most sensitive layers kept out, then measure again
        try:
            fp32 = maker.fp32
            found = [(maker.int8(fp32, "ort-cpu", BudgetOptions(job.budget, report_dir=maker.folder / "sensitivity")),
                      "onnxruntime")]
            candidates += [Candidate(label(path, runtime), path, runtime) for path, runtime in found]
            choice = measure(job, config, size, candidates, log)
        except UserError as e:  # the loop could not hold the budget either: said in the report
            unmade.append({"label": "INT8 with sensitive layers kept out", "why": str(e)})
    choice["unmade"] = unmade
    rows = {"ONNX Runtime FP32": peer_row(choice, "onnxruntime", "fp32"),
            "OpenVINO FP32 (its default precision)": peer_row(choice, default_openvino(), "fp32")}
    peers = {name: row and row["timing"] for name, row in rows.items()}
    duel = head_to_head(job, config, size, choice["winner"], rows, log) if job.target == "cpu" else None
    choice["head_to_head"] = duel
    summary = speedup_line(choice, peers, duel)
    best, runtime = land_best(job, choice["winner"]) if choice["winner"] else (None, None)
    examples = winner_examples(job, choice["winner"])
    text = (f"# optimize --target {job.target}: {Path(job.weights)}\n\n{summary}.\n\n{markdown(choice)}"
            + duel_markdown(duel, job.iters)
            + "".join(f"\n- {u['label']}: not made: {u['why']}" for u in unmade)
            + (f"\n\nThe winner is {best} (meta.json's runtime: {runtime}).\n" if best else "\n")
            + (f"\nThe winner (right) beside PyTorch on the images where they agree least, worst first (parity's "
               f"example images):\n\n![the winner beside PyTorch]({EXAMPLES_NAME})\n" if examples else ""))
    written = write_report(job.output, "optimize", markdown=text, plot=lambda fig: plot(choice, fig),
                           data={**choice, "summary": summary, "best": str(best) if best else None,
                                 "runtime": runtime, "target": job.target}) + ([examples] if examples else [])
    log(f"[optimize] {summary}")
    return OptimizeResult(best=best, runtime=runtime, choice=choice, written=written, summary=summary)


def parity_reports(job: OptimizeJob) -> Path:
    """Where `measure` writes its parity report (and its example grids)."""
    return job.output / "reports" / "parity"


def winner_examples(job: OptimizeJob, winner: dict[str, Any] | None) -> Path | None:
    """The winner's parity example grid copied to DIR/optimize.examples.png, written before the report that shows
    it; None (and an earlier run's copy removed) when there is no winner or parity drew none for it."""
    target = job.output / EXAMPLES_NAME
    if winner is None or not winner.get("examples"):
        target.unlink(missing_ok=True)
        return None
    return atomic_write(target, lambda tmp: shutil.copyfile(parity_reports(job) / winner["examples"], tmp))


def read_size(config: Path, job: OptimizeJob) -> int:
    """The model's largest input: its test resize's long side, padded to the divisibility."""
    from ..model.meta import default_size_range

    cfg = load_config(config, list(job.overrides) + ["MODEL.WEIGHTS", str(job.weights)])
    return default_size_range(cfg).max


def measure(job: OptimizeJob, config: Path, size: int, candidates: list[Candidate], log) -> dict[str, Any]:
    """Parity and bench of every candidate (each file once per runtime it is a candidate in), then the choice."""
    from ..parity.winner import choose

    runtimes = {}
    for c in candidates:
        runtimes.setdefault(c.path, [])
        if c.runtime in RUNTIMES and c.runtime not in runtimes[c.path]:
            runtimes[c.path].append(c.runtime)
    files = tuple(runtimes)
    per_file = {path: tuple(r) for path, r in runtimes.items() if r}
    reports = job.output / "reports"
    parity = check_parity(ParityJob(config, weights=job.weights, artifacts=files, overrides=job.overrides,
                                    dataset=job.dataset, max_images=job.max_images, batch=job.batch,
                                    runtimes=per_file, allow_not_run=True,
                                    report_dir=parity_reports(job)), log=log).report
    bench = bench_artifacts(BenchJob(artifacts=(job.weights, *files), batches=(job.batch,), sizes=(size,),
                                     iters=job.iters, device="cuda" if job.target in ("cuda", "tensorrt") else "cpu",
                                     config_file=config, cpp=job.target == "cpp", runtimes=per_file,
                                     report_dir=reports / "bench"), log=log).report
    return choose(candidates, bench, parity, budget=job.budget, batch=job.batch, size=size)


def needs_budget_int8(choice: dict[str, Any]) -> bool:
    """True when INT8 candidates ran and every one of them lost more than the budget."""
    int8 = [r for r in choice["rows"] if "INT8" in r["label"] and r["status"] != "not run"]
    return bool(int8) and all(r["status"] == "over budget" for r in int8)


def default_openvino() -> str:
    """The runtime that is OpenVINO with its default settings: on a CPU that computes bf16 natively its CPU plugin
    runs an FP32 model in bf16 (INFERENCE_PRECISION_HINT's default there), elsewhere in f32."""
    from ..core.cpu import bf16_units

    return "openvino-bf16" if bf16_units() else "openvino"


def peer_row(choice: dict[str, Any], runtime: str, precision: str) -> dict[str, Any] | None:
    """The candidate row of the FP32 graph (all masks) in `runtime`, when it was timed: a peer's default to compare
    the winner with."""
    for r in choice["rows"]:
        if (r["runtime"] == runtime and r["label"].startswith(precision.upper()) and "masks for" not in r["label"]
                and r["timing"] is not None):
            return r
    return None


DUEL_WARMUP = 3  # untimed calls before each block: the previous entry's runtime settles
DUEL_ROUNDS = 3  # blocks per entry, taking turns


def head_to_head(job: OptimizeJob, config: Path, size: int, winner: dict[str, Any] | None,
                 peers: dict[str, dict[str, Any] | None], log) -> dict[str, float] | None:
    """The winner, eager PyTorch and each peer row timed again end to end on the same scenes, in blocks that take
    turns (`core.timing.measure_rotating`: `iters` calls each, in DUEL_ROUNDS blocks), each with PyTorch's
    threads as it is deployed: name -> p50 ms. bench times the candidates one after another, and a change in the
    machine's speed between them moved the ratios by about a tenth; in blocks taking turns, it falls on all of
    them alike. None without a winner."""
    import torch

    from ..core.timing import measure_rotating
    from ..parity.winner import EAGER_NAME
    from ..runtime import Detector
    from ..runtime.bench import synthetic_batch

    if winner is None:
        return None
    entries = {"winner": (winner["artifact"], winner["runtime"]), EAGER_NAME: (job.weights, None),
               **{name: (row["artifact"], row["runtime"]) for name, row in peers.items() if row is not None}}
    calls = {}
    for name, (path, runtime) in entries.items():
        # ONNX Runtime's workers otherwise keep spinning after each run, on the cores the next entry then runs on:
        # the demo's FP32 graph in OpenVINO bf16 measured 7 ms slower right after it (docs/runtime.md)
        detector = Detector.from_path(Path(path), device="cpu", config=str(config), spin_after_run=False,
                                      runtime=runtime if runtime in RUNTIMES else "onnxruntime")
        detector, images, _ = synthetic_batch(detector, job.batch, size)
        calls[name] = functools.partial(predict_as_deployed, detector, images)
    log(f"[optimize] head to head, in blocks taking turns: {', '.join(calls)}")
    with torch.inference_mode():
        found = measure_rotating(calls, warmup=DUEL_WARMUP, iters=job.iters, rounds=DUEL_ROUNDS)
    return {name: 1e3 * latency.percentile(50) for name, latency in found.items()}


def predict_as_deployed(detector: Any, images: list[Any]) -> None:
    with torch_threads(detector.torch_threads):
        detector.predict(images)


def duel_markdown(duel: dict[str, float] | None, iters: int) -> str:
    if not duel:
        return ""
    rows = [[name, f"{ms:.1f}", f"{ms / duel['winner']:.2f}x"] for name, ms in duel.items()]
    return ("\n\nHead to head: the winner, eager PyTorch and the peers' defaults timed again end to end, back to "
            f"back in {DUEL_ROUNDS} blocks each that take turns ({iters} calls each in all, {DUEL_WARMUP} untimed "
            "before each block), so that a change in the machine's speed falls on all of them alike; the speed-ups "
            "above are these.\n\n"
            + markdown_table(["", "end-to-end p50 ms", "vs the winner"], rows))


def land_best(job: OptimizeJob, winner: dict[str, Any]) -> tuple[Path, str]:
    """The winner copied to DIR/best.<ext> with its meta.json (which names its runtime), through a staging
    folder: best.* and its meta.json land together. A best.* of another suffix from an earlier run goes."""
    source = Path(winner["artifact"])
    output = job.output / f"{BEST_NAME}{source.suffix}"
    runtime = winner["runtime"]
    meta = read_meta(source)
    meta["runtime"] = runtime if runtime in RUNTIMES else meta.get("runtime")  # the .onnx runtimes
    meta["optimize"] = {"source": str(source), "label": winner["label"], "budget": job.budget, "batch": job.batch,
                        "target": job.target, "ap_cost": winner["timing"]["ap_cost"],
                        "e2e_p50_ms": winner["timing"]["e2e_p50_ms"]}
    with staging_dir(output) as staging:
        staged = staging / output.name
        shutil.copyfile(source, staged)
        if data_path(source).is_file():
            shutil.copyfile(data_path(source), data_path(staged))
        land(staged, output, meta)
    for other in job.output.glob(f"{BEST_NAME}.*"):
        if other.suffix in (*ARTIFACT_SUFFIXES, ENGINE_SUFFIX) and other != output:
            other.unlink()
            meta_path(other).unlink(missing_ok=True)
    return output, meta["runtime"] or runtime


def plot(choice: dict[str, Any], fig) -> None:
    """ΔAP against end-to-end p50, one point per candidate that ran, the budget as a line."""
    ax = fig.add_subplot(1, 1, 1)
    for r in choice["rows"]:
        t = r["timing"]
        if t is None or t["ap_cost"] is None:
            continue
        ax.scatter(t["e2e_p50_ms"], -t["ap_cost"], marker="*" if r["status"] == "winner" else "o", s=80)
        ax.annotate(r["label"], (t["e2e_p50_ms"], -t["ap_cost"]), fontsize=6)
    ax.axhline(-choice["budget"], linestyle="--", color="gray", label=f"budget -{choice['budget']:g} AP")
    if choice["eager"] is not None:
        ax.axvline(choice["eager"]["e2e_p50_ms"], linestyle=":", color="black", label="eager PyTorch")
    ax.set_xlabel("end-to-end p50 (ms)")
    ax.set_ylabel("ΔAP against PyTorch (points)")
    ax.legend(fontsize=7)
