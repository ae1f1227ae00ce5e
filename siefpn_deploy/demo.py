"""`siefpn-deploy demo`: the end-to-end job on the embedded synthetic dataset.

synthetic data -> train a small Dual SIE-FPN RetinaNet on the CPU -> COCO evaluation -> ONNX export,
verified in ONNX Runtime -> FP16 and INT8 (Q/DQ) models -> TensorRT engines (where a builder is
installed) -> parity: the COCO AP of every artifact beside PyTorch's -> a latency benchmark.

Every stage reuses what an earlier run left when its inputs are unchanged (a finished training run, an
export of the same weights, quantized models and engines of the same export), so a rerun re-measures
without redoing the slow parts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from .core.config import Config, load_config, resolve_config_file
from .core.errors import UserError
from .core.sidecar import read_meta, sha256_of
from .data import generate_synthetic
from .data.synth import BENCHMARK, EASY, LEVELS, Level, generated_at, level_of, split_paths
from .export.exporter import ExportOptions, export_onnx
from .export.verify import verification_images
from .model.checkpoint import last_checkpoint
from .model.meta import default_size_range
from .train.trainer import train

# The bar the demo is held to on the synthetic val split (COCOeval fractions).
TARGET = {"AP": 0.30, "AP50": 0.60}
DEMO_LEVEL = EASY  # the scenes the demo generates (`data synth --level easy`); benchmarks use BENCHMARK
# On a GPU the demo trains this many times the preset's iterations (unless SOLVER.MAX_ITER is given): the
# preset's schedule is what fits 15 minutes on 2 CPU cores, and a GPU runs it in about 4.
GPU_ITER_FACTOR = 2
# On a GPU a loader worker overlaps loading with the step (the CPU presets load in the training process): the
# one worker the H100 runs of benchmarks/results/demo_level_h100.md had.
GPU_LOADER_WORKERS = 1
CALIBRATION_IMAGES = 128  # of the train split; the quantize command's default is 512
BENCH = {"batches": [1, 4], "warmup": 3, "iters": 10}


def dataset_overrides(data_dir: Path) -> list[str]:
    (train_images, train_json), (test_images, test_json) = (split_paths(data_dir, s) for s in ("train", "val"))
    return [
        "DATASETS.TRAIN_IMAGES", str(train_images), "DATASETS.TRAIN_ANNOTATIONS", str(train_json),
        "DATASETS.TEST_IMAGES", str(test_images), "DATASETS.TEST_ANNOTATIONS", str(test_json),
    ]


def ensure_synthetic(data_dir: Path, *, level: Level = BENCHMARK, regenerate: bool = False) -> bool:
    """Generate the synthetic dataset at `level` unless it is there; True when it was generated now. A dataset
    drawn at another level, or at an earlier version of this one, is refused rather than overwritten."""
    annotations = split_paths(data_dir, "val")[1]
    if regenerate or not annotations.is_file():
        print(f"[demo] generating the synthetic dataset ({level.name} level) in {data_dir}")
        generate_synthetic(data_dir, level=level)
        return True
    if not generated_at(annotations, level):
        found = level_of(annotations)
        what = (f"the {found} level, not the {level.name} level" if found != level.name
                else f"the {level.name} level as an earlier version drew it")
        raise UserError(f"{data_dir} holds synthetic data of {what}; rerun with --regenerate to rewrite it, "
                        "or give --data another folder")
    print(f"[demo] using the synthetic dataset in {data_dir} ({level.name} level)")
    return False


def synthetic_export(arch: str, args: argparse.Namespace, *, export_args: list[str]) -> tuple[Path, Path]:
    """(training run folder, ONNX or .pt2) of the synthetic preset of `arch`, trained `args.train_iters` iterations on
    `args.data` (generated if missing) and exported into `args.work` with `export_args`, each made once: what
    the benchmark scripts (options: `synthetic_benchmark_arguments`) measure."""
    from .cli import main as cli

    data, work, train_iters = Path(args.data), Path(args.work), args.train_iters
    ensure_synthetic(data)
    suffix = ".pt2" if "aoti" in export_args else ".onnx"  # export --format aoti writes a package
    run, onnx_path = work / arch, work / f"{arch}_{'_'.join(export_args) or 'default'}{suffix}".replace("-", "")
    if not (run / "model_final.pth").is_file():
        args = ["train", "--config-file", f"configs/synth_{arch}_R18.yaml", *dataset_overrides(data),
                "OUTPUT_DIR", str(run), "SOLVER.MAX_ITER", str(train_iters), "SOLVER.WARMUP_ITERS", str(train_iters // 4)]
        if cli(args) != 0:
            raise UserError(f"training the synthetic {arch} preset failed")
    if not onnx_path.is_file() and cli(["export", "--config-file", str(run / "config.yaml"), "--output", str(onnx_path),
                                        *export_args, "MODEL.WEIGHTS", str(run / "model_final.pth")]) != 0:
        raise UserError(f"exporting the synthetic {arch} model failed")
    return run, onnx_path


def synthetic_benchmark_arguments(description: str, report: str) -> argparse.ArgumentParser:
    """The options every per-detector benchmark script takes (benchmarks/bench_export.py, bench_quantize.py)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["retinanet", "faster_rcnn", "mask_rcnn"])
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    p.add_argument("--iters", type=int, default=20, help="timed runs per setting (median reported)")
    p.add_argument("--train-iters", type=int, default=60, help="brief training, for realistic candidate counts")
    p.add_argument("--data", default="datasets/synth")
    p.add_argument("--work", default="output/bench_export")
    p.add_argument("--report", default=report)
    return p


def current_meta(path: Path, key: tuple[str, ...], value: str) -> dict[str, Any] | None:
    """The meta.json of an existing artifact whose meta[key...] equals value, else None (make it again)."""
    try:
        meta = read_meta(path)
    except UserError:
        return None
    node: Any = meta
    for k in key:
        node = node.get(k, {}) if isinstance(node, dict) else {}
    return meta if node == value else None


def export_stage(cfg: Config, config_file: str, onnx_path: Path) -> dict[str, Any]:
    """The tensor-NMS variant: one graph that ONNX Runtime runs and every TensorRT flavour builds."""
    meta = current_meta(onnx_path, ("source", "weights_sha256"), sha256_of(cfg.MODEL.WEIGHTS))
    if meta is not None and meta.get("verification", {}).get("passed"):
        print(f"[demo] {onnx_path} is already the verified export of these weights")
        return meta
    print(f"[demo] exporting {cfg.MODEL.WEIGHTS} -> {onnx_path}")
    size = default_size_range(cfg)
    options = ExportOptions(output=onnx_path, height=size, width=size, divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
                            nms="tensor")
    export_onnx(cfg, options, config_name=str(resolve_config_file(config_file)), verify_images=verification_images(cfg))
    return read_meta(onnx_path)


def quantize_stage(onnx_path: Path, source_sha: str, precision: str, calib_dir: Path) -> Path:
    from .quantize.quantizer import QuantizeOptions, quantize_model

    # FP16's range check keeps its default 16 images
    options = QuantizeOptions(onnx=onnx_path, precision=precision, calib_cache=calib_dir,
                              num_calib=CALIBRATION_IMAGES if precision == "int8" else None)
    target = options.output_path()
    if current_meta(target, ("quantization", "source_sha256"), source_sha) is not None:
        print(f"[demo] {target} is already the {precision} model of this export")
        return target
    return quantize_model(options)[0]


def build_stage(onnx_path: Path, engine_dir: Path) -> tuple[Path | None, str]:
    """(engine, note); no engine and the reason where no TensorRT builder is installed."""
    from .tensorrt.builder import load_backend
    from .tensorrt.plan import BuildOptions, build_engine, engine_name, read_engine_meta

    try:
        load_backend()
    except UserError as e:
        return None, f"not built: {e}"
    options = BuildOptions(onnx=onnx_path, engine=engine_dir / engine_name(onnx_path),
                           timing_cache=engine_dir / "timing.cache")
    engine = options.engine
    try:
        if read_engine_meta(engine)["onnx_sha256"] == read_meta(onnx_path)["sha256"]:
            print(f"[demo] {engine} is already built from {onnx_path}")
            return engine, "built earlier"
    except UserError:
        pass
    _, sidecar = build_engine(options)
    return engine, f"built in {sidecar['build']['seconds']:.1f} s"


def run_demo(*, data_dir: Path, output_dir: Path, export_dir: Path, config_file: str, overrides: list[str],
             regenerate: bool, engine_dir: Path, calib_dir: Path, report_dir: Path, level: str = DEMO_LEVEL.name) -> int:
    from .data import CocoDetection
    from .parity.check import DEFAULT_BUDGETS, run_parity
    from .parity.report import markdown as parity_markdown
    from .parity.report import write_parity_report
    from .runtime import Detector
    from .runtime.bench import markdown as bench_markdown
    from .runtime.bench import run_bench, write_bench_report

    t0 = time.perf_counter()
    fresh_data = ensure_synthetic(data_dir, level=LEVELS[level], regenerate=regenerate)
    cfg = load_config(config_file, dataset_overrides(data_dir) + ["OUTPUT_DIR", str(output_dir)] + list(overrides))
    if torch.cuda.is_available():
        if "SOLVER.MAX_ITER" not in overrides:
            cfg.SOLVER.MAX_ITER *= GPU_ITER_FACTOR
            print(f"[demo] CUDA: {cfg.SOLVER.MAX_ITER} iterations, {GPU_ITER_FACTOR}x the preset's (a GPU has the time)")
        if "DATALOADER.NUM_WORKERS" not in overrides:
            cfg.DATALOADER.NUM_WORKERS = GPU_LOADER_WORKERS
    # Rerunning with the same config and data resumes (or just re-evaluates a finished run); a changed config
    # or newly generated data starts over.
    saved = output_dir / "config.yaml"
    resume = not fresh_data and saved.is_file() and saved.read_text() == cfg.dump() and last_checkpoint(output_dir) is not None
    print(f"[demo] training {cfg.MODEL.META_ARCHITECTURE} ({cfg.MODEL.NECK}, {cfg.MODEL.BACKBONE}) "
          f"for {cfg.SOLVER.MAX_ITER} iterations -> {output_dir}" + (" (resuming)" if resume else ""))
    metrics = train(cfg, config_name=str(resolve_config_file(config_file)), resume=resume)
    bbox = metrics["bbox"]
    timings = {"train + eval": time.perf_counter() - t0}

    cfg.MODEL.WEIGHTS = str(output_dir / "model_final.pth")
    onnx_path = export_dir / f"{output_dir.name}.onnx"
    t = time.perf_counter()
    meta = export_stage(cfg, config_file, onnx_path)
    timings["export + verify"] = time.perf_counter() - t

    t = time.perf_counter()
    models = [onnx_path] + [quantize_stage(onnx_path, meta["sha256"], p, calib_dir) for p in ("fp16", "int8")]
    timings["quantize fp16 + int8"] = time.perf_counter() - t
    t = time.perf_counter()
    engines = [build_stage(m, engine_dir) for m in models]
    timings["build engines"] = time.perf_counter() - t

    t = time.perf_counter()
    dataset = CocoDetection(image_dir=cfg.DATASETS.TEST_IMAGES, annotation_file=cfg.DATASETS.TEST_ANNOTATIONS)
    reference = Detector.from_checkpoint(Path(cfg.MODEL.WEIGHTS), config=saved)
    artifacts = models + [e for e, _ in engines if e is not None]
    parity = run_parity(reference, artifacts, dataset, budgets=dict(DEFAULT_BUDGETS), max_images=None,
                        batch_size=cfg.TEST.IMS_PER_BATCH)
    written = write_parity_report(parity, report_dir)
    timings["parity"] = time.perf_counter() - t

    t = time.perf_counter()
    size = default_size_range(cfg).max
    bench = run_bench([Path(cfg.MODEL.WEIGHTS), *artifacts], batches=BENCH["batches"], sizes=[size],
                      warmup=BENCH["warmup"], iters=BENCH["iters"], device="auto", config=str(saved))
    written += write_bench_report(bench, report_dir)
    timings["bench"] = time.perf_counter() - t

    minutes = (time.perf_counter() - t0) / 60
    print("\n[demo] parity (every artifact beside PyTorch, on the synthetic val split)\n")
    print(parity_markdown({**parity, "date": time.strftime("%Y-%m-%d %H:%M")}))
    print(f"[demo] latency at {size}x{size} on this machine\n")
    print(bench_markdown(bench))
    print("[demo] summary")
    print("| stage | artifact | result | target |")
    print("|---|---|---|---|")
    met = all(bbox[k] >= v for k, v in TARGET.items())
    target = ", ".join(f"{k} >= {v:.2f}" for k, v in TARGET.items())
    print(f"| train + eval | {output_dir / 'model_final.pth'} | bbox AP {bbox['AP']:.3f} ({100 * bbox['AP']:.2f} points, "
          f"as parity's PyTorch row), AP50 {bbox['AP50']:.3f}, AP75 {bbox['AP75']:.3f} | {target}: "
          f"{'met' if met else 'NOT met'} |")
    v = meta["verification"]
    print(f"| export + verify (ONNX Runtime) | {onnx_path} | {v['matched']}/{v['reference']} detections matched, "
          f"max box error {v['max_box_abs']:.1e} px, max score error {v['max_score_abs']:.1e} | "
          f"all matched, box rel <= {v['tolerances']['box_rel']:g}, score <= {v['tolerances']['score_abs']:g}: "
          f"{'met' if v['passed'] else 'NOT met'} |")
    for model, (engine, note) in zip(models, engines):
        print(f"| quantize + build | {model} -> {engine or '-'} | {note} | strongly typed engine |")
    print(f"| parity | {report_dir / 'parity.md'} | {'PASS' if parity['passed'] else 'FAIL'} | budgets "
          f"{', '.join(f'{k} {v:g}' for k, v in DEFAULT_BUDGETS.items())} AP points |")
    print("\n[demo] time per stage: " + ", ".join(f"{k} {s / 60:.1f} min" for k, s in timings.items()))
    print(f"[demo] done in {minutes:.1f} min; reports: {', '.join(map(str, written))}")
    return 0 if parity["passed"] else 1
