"""`siefpn-deploy demo`: the end-to-end job on the embedded synthetic dataset, as a sequence of stages.

synthetic data -> train a small Dual SIE-FPN RetinaNet -> COCO evaluation -> ONNX export, verified in ONNX
Runtime -> FP16 and INT8 (Q/DQ) models -> TensorRT engines (where a builder is installed) -> parity: the COCO
AP of every artifact beside PyTorch's -> a latency benchmark -> `optimize --target cpu`: the fastest CPU artifact
within the INT8 budget, and its speed-up over eager PyTorch and over OpenVINO with its default settings. First,
it builds `serve`'s stub environment, the one part of serving that needs a package index.

Every stage returns what an earlier run left when it answers the same request from the same input, so a
rerun re-measures without redoing the slow parts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.errors import CannotRunHere, UserError, one_line
from ..export.options import EXPORT_DIR, ExportOptions
from ..parity.check import DEFAULT_BUDGETS
from ..quantize.options import CALIB_CACHE, QuantizeOptions
from ..tensorrt.plan import ENGINE_DIR, TIMING_CACHE, BuildOptions, engine_name
from .artifacts import Artifact
from .bench import BenchJob, bench_artifacts
from .build import BuildJob, build_detector_engine
from .dataset import DatasetOptions, synthetic_dataset
from .export import ExportJob, export_detector
from .optimize import OptimizeJob, optimize_detector
from .parity import ParityJob, check_parity
from .quantize import QuantizeJob, quantize_detector
from .train import TrainOptions, train_detector

# The bar the demo is held to on the synthetic val split (COCOeval fractions).
TARGET = {"AP": 0.30, "AP50": 0.60}
# The preset's schedule is sized for a small CPU; a GPU has the time to train longer, so it trains this many
# times the preset's iterations there (unless SOLVER.MAX_ITER is given).
GPU_ITER_FACTOR = 2
# The CPU presets load in the training process (configs/Base-Synth.yaml says why); on a GPU a worker overlaps
# loading with the step.
GPU_LOADER_WORKERS = 1
CALIBRATION_IMAGES = 128  # of the train split: enough for the demo's small model, a quarter of quantize's default


@dataclass(frozen=True)
class DemoOptions:
    data: Path = Path("datasets/synth-easy")  # the synthetic dataset (generated when missing)
    level: str = "easy"  # the scenes generated when `data` is missing (data.synth.LEVELS)
    regenerate: bool = False
    output: Path = Path("output/demo")  # the training run
    export_dir: Path = EXPORT_DIR
    engine_dir: Path = ENGINE_DIR
    calib_dir: Path = CALIB_CACHE  # preprocessed calibration images, cached
    report_dir: Path = Path("reports/demo")
    config_file: str = "configs/synth_retinanet_R18_demo.yaml"
    overrides: tuple[str, ...] = ()
    bench_batches: tuple[int, ...] = (1, 4)
    bench_iters: int = 10  # timed runs per setting: the demo reports, benchmarks/ measures
    budgets: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))
    optimize: bool = True  # the last stage: `optimize --target cpu` from the FP32 export (no .pt2: minutes to compile)
    optimize_dir: Path | None = None  # None: EXPORT_DIR/optimized/<run name>
    optimize_images: int = 100  # parity images per candidate: the demo reports, benchmarks/ measures
    serving: bool = True  # build `serve`'s stub environment now, so that serving needs no package index later
    python_env: Path | None = None  # where (None: serve's default, in the user cache)


@dataclass(frozen=True)
class DemoResult:
    metrics: dict  # the trained model's COCO metrics on val
    artifacts: list[Artifact]  # the FP32, FP16 and INT8 ONNX models, then the engines that were built
    parity_passed: bool
    target_met: bool
    written: list[Path]  # reports
    minutes: float


def _train_overrides(options: DemoOptions, dataset_overrides: list[str]) -> list[str]:
    given = set(options.overrides[::2])
    extra = []
    if torch.cuda.is_available():
        from ..core.config import load_config

        if "SOLVER.MAX_ITER" not in given:
            extra += ["SOLVER.MAX_ITER", str(load_config(options.config_file).SOLVER.MAX_ITER * GPU_ITER_FACTOR)]
        if "DATALOADER.NUM_WORKERS" not in given:
            extra += ["DATALOADER.NUM_WORKERS", str(GPU_LOADER_WORKERS)]
    return dataset_overrides + ["OUTPUT_DIR", str(options.output)] + extra + list(options.overrides)


def prepare_serving(python_env: Path | None, *, log=print) -> str:
    """`serve`'s stub environment, built now (it is the one part of serving that needs a package index);
    returns the summary's line. Serving not being installed is said, not raised: the demo does not need it."""
    from ..serve.python_env import ensure_python_env
    from ..serve.server import require_pytriton

    try:
        require_pytriton()
        return f"ready: the stub's environment is {ensure_python_env(python_env, log=log)}"
    except UserError as e:
        return f"not ready: {one_line(e)}"


def run_demo(options: DemoOptions, *, log=print) -> DemoResult:
    from ..parity.report import markdown as parity_markdown
    from ..runtime.bench import markdown as bench_markdown

    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, t: float) -> None:
        timings[name] = time.perf_counter() - t

    serving = prepare_serving(options.python_env, log=log) if options.serving else None
    data = synthetic_dataset(DatasetOptions(root=options.data, level=options.level, regenerate=options.regenerate),
                             log=log)
    run = train_detector(TrainOptions(config_file=options.config_file,
                                      overrides=tuple(_train_overrides(options, data.overrides()))), log=log)
    timed("train + eval", t0)

    t = time.perf_counter()
    onnx = export_detector(ExportJob(config_file=run.config, weights=run.weights, options=ExportOptions(
        output=options.export_dir / f"{run.run_dir.name}.onnx", nms="tensor")), log=log)
    timed("export + verify", t)

    t = time.perf_counter()
    # the tensor-NMS graph: ONNX Runtime runs it and every TensorRT flavour builds it; FP16's range check keeps
    # its default image count
    models = [onnx] + [quantize_detector(QuantizeJob(QuantizeOptions(
        onnx=onnx.path, precision=p, calib_cache=options.calib_dir,
        num_calib=CALIBRATION_IMAGES if p == "int8" else None)), log=log) for p in ("fp16", "int8")]
    timed("quantize fp16 + int8", t)

    t = time.perf_counter()
    engines: list[Artifact] = []
    notes = []
    for model in models:
        try:
            engine = build_detector_engine(BuildJob(BuildOptions(
                onnx=model.path, engine=options.engine_dir / engine_name(model.path),
                timing_cache=options.engine_dir / TIMING_CACHE.name)), log=log)
            engines.append(engine)
            notes.append(f"{engine.path}: " + ("built earlier" if engine.reused else
                                               f"built in {engine.meta['build']['seconds']:.1f} s"))
        except CannotRunHere as e:
            notes.append(f"not built: {e}")
    timed("build engines", t)

    t = time.perf_counter()
    artifacts = [m.path for m in models] + [e.path for e in engines]
    # the demo builds engines wherever a builder is installed, GPU or not; without a GPU they cannot run, and
    # the demo's gate accepts that (said here and in the report), where a bare `parity` would fail
    allow_not_run = not torch.cuda.is_available()
    if allow_not_run and engines:
        log("[demo] no CUDA device here: the TensorRT engines are built but not run, and parity accepts that "
            "(--allow-not-run); the report lists them as not run")
    parity = check_parity(ParityJob(config_file=run.config, weights=run.weights, artifacts=tuple(artifacts),
                                    budgets=dict(options.budgets), report_dir=options.report_dir,
                                    allow_not_run=allow_not_run), log=log)
    timed("parity", t)

    t = time.perf_counter()
    size = onnx.meta["shapes"]["height"]["max"]  # the test resize's long side, padded: the largest input
    bench = bench_artifacts(BenchJob(artifacts=(run.weights, *artifacts), batches=options.bench_batches,
                                     sizes=(size,), iters=options.bench_iters, config_file=run.config,
                                     report_dir=options.report_dir), log=log)
    timed("bench", t)

    best = None
    if options.optimize:
        t = time.perf_counter()
        best = optimize_detector(OptimizeJob(
            weights=run.weights, config_file=run.config, onnx=onnx.path, target="cpu",
            budget=options.budgets.get("int8", DEFAULT_BUDGETS["int8"]), batch=1, size=size, pt2=False,
            max_images=options.optimize_images, iters=options.bench_iters, num_calib=CALIBRATION_IMAGES,
            output=options.optimize_dir or options.export_dir / "optimized" / run.run_dir.name), log=log)
        timed("optimize", t)

    bbox = run.metrics["bbox"]
    met = all(bbox[k] >= v for k, v in TARGET.items())
    minutes = (time.perf_counter() - t0) / 60
    log("\n[demo] parity (every artifact beside PyTorch, on the synthetic val split)\n")
    log(parity_markdown({**parity.report, "date": time.strftime("%Y-%m-%d %H:%M")}))
    log(f"[demo] latency at {size}x{size} on this machine\n")
    log(bench_markdown(bench.report))
    target = ", ".join(f"{k} >= {v:.2f}" for k, v in TARGET.items())
    v = onnx.meta["verification"]
    log("[demo] summary")
    log("| stage | artifact | result | target |")
    log("|---|---|---|---|")
    log(f"| train + eval | {run.weights} | bbox AP {bbox['AP']:.3f}, AP50 {bbox['AP50']:.3f}, AP75 {bbox['AP75']:.3f} "
        f"| {target}: {'met' if met else 'NOT met'} |")
    log(f"| export + verify (ONNX Runtime) | {onnx.path} | {v['matched']}/{v['reference']} detections matched, "
        f"max box error {v['max_box_abs']:.1e} px, max score error {v['max_score_abs']:.1e} | "
        f"all matched: {'met' if v['passed'] else 'NOT met'} |")
    for model in models[1:]:
        log(f"| quantize | {model.path} | {model.meta['precision']}, {model.meta['quantization']['qdq_nodes']} "
            f"Q/DQ nodes | within its parity budget |")
    for note in notes:
        log(f"| build | | {note} | strongly typed engine |")
    log(f"| parity | {options.report_dir / 'parity.md'} | {'PASS' if parity.passed else 'FAIL'} | budgets "
        f"{', '.join(f'{k} {b:g}' for k, b in options.budgets.items())} AP points |")
    if serving is not None:
        log(f"| serve | | {serving} | `serve` starts with no package index |")
    if best is not None:
        log(f"| optimize --target cpu | {best.best or best.written[0]} | {best.summary} | the fastest within the INT8 "
            "budget |")
    log("\n[demo] time per stage: " + ", ".join(f"{k} {s / 60:.1f} min" for k, s in timings.items()))
    written = parity.written + bench.written + (best.written if best is not None else [])
    log(f"[demo] done in {minutes:.1f} min; reports: {', '.join(map(str, written))}")
    return DemoResult(metrics=run.metrics, artifacts=models + engines, parity_passed=parity.passed, target_met=met,
                      written=written, minutes=minutes)
