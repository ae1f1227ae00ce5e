"""The `siefpn-deploy` command line: one subcommand per stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .core.errors import UserError, one_line
from .core.openvino import RUNTIMES

EPILOG_TRAIN = """\
examples:
  siefpn-deploy train --config-file configs/synth_retinanet_R18.yaml
  siefpn-deploy train --config-file configs/retinanet_R50_1x.yaml --num-gpus 8 SOLVER.IMS_PER_BATCH 16 SOLVER.BASE_LR 0.01
  siefpn-deploy train --config-file configs/synth_retinanet_R18.yaml --resume      # after a kill or Ctrl-C
  siefpn-deploy train --config-file configs/synth_retinanet_R18.yaml --eval-only MODEL.WEIGHTS output/synth_retinanet_R18/model_final.pth

Any config key can be overridden with KEY VALUE pairs after the options (values are parsed as YAML).
Presets: see `siefpn-deploy train --list-presets`.
"""


def _cmd_synth(args: argparse.Namespace) -> int:
    from .data import generate_synthetic
    from .data.synth import LEVELS

    summary = generate_synthetic(
        args.output, num_train=args.num_train, num_val=args.num_val, seed=args.seed,
        min_side=args.min_side, max_side=args.max_side, level=LEVELS[args.level],
    )
    splits = ", ".join(f"{name}: {s['images']} images, {s['annotations']} objects" for name, s in summary["splits"].items())
    print(f"wrote {args.output} ({len(summary['categories'])} classes; {splits})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .core.config import PRESET_DIR, load_config, resolve_config_file
    from .train.launch import launch
    from .train.trainer import evaluate_only

    if args.list_presets:
        for p in sorted(PRESET_DIR.glob("*.yaml")):
            if not p.name.startswith("Base"):
                print(f"configs/{p.name}")
        return 0
    if args.config_file is None:
        raise UserError("--config-file is required (try --list-presets)")
    cfg = load_config(args.config_file, args.opts)
    name = str(resolve_config_file(args.config_file))
    if args.eval_only:
        evaluate_only(cfg, config_name=name)
        return 0
    launch(_train_entry, (cfg, name, args.resume), num_processes=args.num_gpus)
    return 0


def _train_entry(cfg, name: str, resume: bool, *, rank: int, world_size: int) -> None:
    from .train.trainer import train

    train(cfg, config_name=name, resume=resume, rank=rank, world_size=world_size)


EPILOG_EXPORT = """\
examples:
  siefpn-deploy export --config-file configs/synth_retinanet_R18.yaml MODEL.WEIGHTS output/demo/model_final.pth
  siefpn-deploy export --config-file configs/synth_mask_rcnn_R18.yaml --nms tensor --dynamic-batch 4 \\
      --dynamic-size 64 640 MODEL.WEIGHTS output/synth_mask_rcnn_R18/model_final.pth     # for TensorRT-RTX
  siefpn-deploy export --config-file configs/retinanet_R50_1x.yaml --batch 1 --imgsz 800 1344 \\
      --output export/retinanet_R50_800x1344.onnx MODEL.WEIGHTS model_final.pth      # one static shape
  siefpn-deploy export --format aoti --config-file configs/synth_retinanet_R18.yaml \\
      MODEL.WEIGHTS output/demo/model_final.pth           # export/synth_retinanet_R18_aoti.pt2, compiled

the graph (siefpn_deploy/core/contract.py):
{graph}

It has no data-dependent shapes. With --nms onnx it uses the standard NonMaxSuppression and RoiAlign ops
(ONNX Runtime, OpenVINO, TensorRT 10/11); with --nms tensor it is plugin-free: exact greedy NMS in plain
tensor ops and RoIAlign as a Gather and a batched MatMul (also TensorRT-RTX, which has neither layer).
NAME.meta.json beside the ONNX holds everything a runtime needs (see `export/README.md`).

--format aoti compiles the same graph with torch.export and AOTInductor into NAME.pt2 (--device cpu or
cuda), run by `Detector.from_path`, parity, bench and infer without ONNX Runtime. Its NMS is the same
exact greedy NMS as a torch.while_loop, and its RoIAlign is torchvision's kernel; the package's own
metadata holds the meta.json (key siefpn_deploy.meta).
"""


def _size_range(args: argparse.Namespace, default: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(height (min, max), width (min, max)) from --imgsz H [W] or --dynamic-size MIN MAX."""
    if args.imgsz:
        if len(args.imgsz) > 2:
            raise UserError(f"--imgsz takes H [W], got {len(args.imgsz)} values")
        h, w = (args.imgsz * 2)[:2]
        return (h, h), (w, w)
    lo, hi = args.dynamic_size or default
    return (lo, hi), (lo, hi)


EPILOG_CONVERT = """\
examples:
  siefpn-deploy convert --from detectron2 retinanet_r50_dual_sie_fpn.pth --config-file retinanet_R50_1x
  siefpn-deploy convert --from detectron2 model_final.pth --config-file mask_rcnn_R101_1x \\
      --output output/imported/mask_rcnn_R101.pth
  siefpn-deploy convert --from detectron2 model_best.pth --config-file faster_rcnn_R50_1x \\
      --classes datasets/uavdt/annotations/instances_train.json       # a model trained on your own classes

then, unchanged:
  siefpn-deploy train --eval-only --config-file retinanet_R50_1x MODEL.WEIGHTS output/imported/retinanet_R50_1x.pth
  siefpn-deploy export --config-file retinanet_R50_1x MODEL.WEIGHTS output/imported/retinanet_R50_1x.pth

What is read: a .pth (torch.load weights_only=True; {'model': ...} with or without detectron2's trainer
state, or a bare state dict) or a .pkl of numpy arrays (a restricted unpickler: a pickle that asks for
anything but numpy's array reconstructors is refused before it runs). The architecture, ResNet depth,
class count and pyramid width are read from the tensors and checked against the config; every key must
map and every parameter must be filled, or nothing is written.
"""


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert.detectron2 import convert_checkpoint, read_classes
    from .core.config import load_config, resolve_config_file

    framework, checkpoint = args.source
    if framework != "detectron2":
        raise UserError(f"--from {framework}: only detectron2 checkpoints are supported")
    cfg = load_config(args.config_file, list(args.opts))
    stem = Path(str(args.config_file)).name.removesuffix(".yaml")
    output = Path(args.output or Path("output") / "imported" / f"{stem}.pth")
    if output.suffix != ".pth":
        raise UserError(f"--output must be a .pth file, got {output}")
    summary = convert_checkpoint(checkpoint, cfg, output=output, classes=read_classes(args.classes),
                                 config_name=str(resolve_config_file(args.config_file)))
    print(f"[convert] {checkpoint}: {summary['architecture']} R{summary['depth']}, {summary['num_classes']} "
          f"classes, {summary['keys']} tensors, every key mapped -> {output}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .core.config import load_config, resolve_config_file
    from .core.contract import ShapeRange
    from .export.exporter import ExportOptions, default_output_name, export_model
    from .export.verify import verification_images
    from .model.meta import default_size_range

    overrides = list(args.opts)
    for key, value in (("MODEL.DETECTIONS_PER_IMAGE", args.max_det), ("MODEL.SCORE_THRESH_TEST", args.score_thresh),
                       ("MODEL.NMS_THRESH_TEST", args.iou_thresh)):
        if value is not None:
            overrides += [key, str(value)]
    cfg = load_config(args.config_file, overrides)
    default = default_size_range(cfg)
    (h_lo, h_hi), (w_lo, w_hi) = _size_range(args, (default.min, default.max))
    batch = (args.batch, args.batch) if args.batch is not None else (1, args.dynamic_batch)
    nms = args.nms or ("loop" if args.format == "aoti" else "onnx")
    options = ExportOptions(
        output=Path(args.output or Path("export") / default_output_name(args.config_file, nms, args.format,
                                                                         args.precision)),
        format=args.format, device=args.device, precision=args.precision,
        batch=ShapeRange(*batch), height=ShapeRange(h_lo, h_hi), width=ShapeRange(w_lo, w_hi), divisibility=cfg.INPUT.SIZE_DIVISIBILITY,
        nms=nms, input_scale=float(args.input_range), opset=args.opset, box_candidates=args.box_candidates,
        simplify=args.simplify, roi_align=args.roi_align, roi_samples=args.roi_samples, max_det_masks=args.max_det_masks,
    )
    options.validate()
    images = None if args.no_verify else verification_images(cfg, count=args.verify_images)
    export_model(cfg, options, config_name=str(resolve_config_file(args.config_file)), verify_images=images)
    return 0


EPILOG_QUANTIZE = """\
examples:
  siefpn-deploy quantize --onnx export/synth_retinanet_R18.onnx --precision fp16
  siefpn-deploy quantize --onnx export/synth_retinanet_R18.onnx --precision int8     # train split from meta.json
  siefpn-deploy quantize --onnx export/synth_retinanet_R18.onnx --precision int8 --target ort-cpu   # ONNX Runtime, CPU
  siefpn-deploy quantize --onnx export/synth_retinanet_R18.onnx --precision int8 --target openvino  # NNCF, OpenVINO
  siefpn-deploy quantize --onnx export/retinanet_R50.onnx --precision int8 --num-calib 512 --calib-size 640 640 \\
      --calib-data datasets/coco/annotations/instances_train2017.json
  siefpn-deploy quantize --onnx export/synth_retinanet_R18.onnx --precision int8 --target ort-cpu --budget 0.5
      # AP within 0.5 points of FP32 on 200 held-out train images, most sensitive layers kept in FP32

FP16 is ModelOpt AutoCast (I/O stays float32); INT8 is explicit Q/DQ in the layout of the runtime that runs
it (--target): ModelOpt's for TensorRT, ONNX Runtime's static quantization, or NNCF's for OpenVINO. The
GAU attention logits and softmax, class-score sigmoids/softmaxes, box decoding, RoIAlign sampling and
NMS stay in FP32 (--no-default-excludes drops that; --exclude adds node-name regexes such as
'^/backbone/neck/mic/'). Calibration images come from the train split, are preprocessed exactly as the
runtime preprocesses them, and are cached in calib/ keyed by the ONNX sha256, the image list and the
preprocessing. The quantized model's meta.json records the method, image count and exclusions.
"""


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize.quantizer import QuantizeOptions, quantize_model

    options = QuantizeOptions(
        onnx=Path(args.onnx), precision=args.precision, output=Path(args.output) if args.output else None,
        calib_data=Path(args.calib_data) if args.calib_data else None,
        calib_image_dir=Path(args.calib_image_dir) if args.calib_image_dir else None, num_calib=args.num_calib,
        calib_method=args.calib_method, calib_batch=args.calib_batch, target=args.target,
        calib_size=tuple(args.calib_size) if args.calib_size else None,
        calib_cache=Path(args.calib_cache) if args.calib_cache else None,
        exclude=args.exclude, default_excludes=not args.no_default_excludes,
    )
    if args.budget is None:
        quantize_model(options)
        return 0
    from .parity.budget import quantize_within_budget
    from .quantize.options import BudgetOptions

    quantize_within_budget(options, BudgetOptions(budget=args.budget, sensitivity_images=args.sensitivity_images,
                                                  max_excluded=args.max_excluded, report_dir=Path(args.report_dir)))
    return 0


EPILOG_BUILD = """\
examples:
  siefpn-deploy build --onnx export/synth_retinanet_R18_tensornms.int8.onnx
  siefpn-deploy build --onnx export/retinanet_R50.fp16.onnx --min-shape 1,3,320,320 --opt-shape 1,3,800,1344 \\
      --max-shape 4,3,1344,1344 --workspace 4

The network is built strongly typed: precision comes from the ONNX (FP16 casts, INT8 Q/DQ), never from
builder flags, which TensorRT 11 removed. The same code serves TensorRT 10 (STRONGLY_TYPED flag), 11
and TensorRT-RTX, whichever is installed (full TensorRT first). TensorRT-RTX has no NMS layer: build
graphs exported with --nms tensor. The engine's NAME.engine.json holds its I/O, profile, TensorRT
flavour and version, precision, source ONNX sha256 and the model's meta.json.
"""


def _cmd_build(args: argparse.Namespace) -> int:
    from .tensorrt.plan import BuildOptions, build_engine, engine_name, parse_shape

    shape = lambda text, flag: parse_shape(text, flag) if text else None
    onnx = Path(args.onnx)
    build_engine(BuildOptions(
        onnx=onnx, engine=Path(args.engine) if args.engine else Path("engines") / engine_name(onnx),
        min_shape=shape(args.min_shape, "--min-shape"), opt_shape=shape(args.opt_shape, "--opt-shape"),
        max_shape=shape(args.max_shape, "--max-shape"), workspace_gib=args.workspace,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        optimization_level=args.builder_optimization_level, version_compatible=args.version_compatible,
    ))
    return 0


EPILOG_PARITY = """\
examples:
  siefpn-deploy parity --config-file output/demo/config.yaml MODEL.WEIGHTS output/demo/model_final.pth \\
      --artifacts export/demo.onnx export/demo.fp16.onnx export/demo.int8.onnx engines/demo.int8.plan
  siefpn-deploy parity --config-file configs/retinanet_R50_1x.yaml --artifacts export/r50.int8.onnx \\
      --dataset datasets/coco/val2017 datasets/coco/annotations/instances_val2017.json --max-images 500 \\
      --budget int8=1.5 MODEL.WEIGHTS model_final.pth

Every artifact and the PyTorch model see the same images through the same preprocessing. Per artifact:
COCO bbox AP (and segm AP for Mask R-CNN), its difference from PyTorch in AP points, pass/fail against
its precision's budget (defaults fp32=0.1 fp16=0.2 int8=1.0), and agreement with PyTorch's detections
(matched at IoU >= 0.9 with the same class; box and score errors; non-finite values). Writes
parity.json, parity.md and parity.png; exits 1 when a budget is broken (a CI or release gate).
"""


def _cmd_parity(args: argparse.Namespace) -> int:
    from .core.config import load_config
    from .data import CocoDetection
    from .parity.check import parse_budgets, run_parity
    from .parity.report import markdown, write_parity_report
    from .runtime import Detector

    budgets = parse_budgets(args.budget)
    cfg = load_config(args.config_file, args.opts)
    if not cfg.MODEL.WEIGHTS:
        raise UserError("no weights given: add MODEL.WEIGHTS path/to/model_final.pth")
    images, annotations = args.dataset or (cfg.DATASETS.TEST_IMAGES, cfg.DATASETS.TEST_ANNOTATIONS)
    dataset = CocoDetection(image_dir=images, annotation_file=annotations, with_masks=cfg.MODEL.has_masks)
    if len(dataset) == 0:
        raise UserError(f"{annotations} lists no images")
    reference = Detector.from_checkpoint(Path(cfg.MODEL.WEIGHTS), config=args.config_file, overrides=args.opts)
    report = run_parity(reference, [Path(a) for a in args.artifacts], dataset, budgets=budgets,
                        max_images=args.max_images, batch_size=args.batch or cfg.TEST.IMS_PER_BATCH,
                        runtimes=tuple(args.runtime) if args.runtime else None)
    written = write_parity_report(report, Path(args.report))
    print(markdown({**report, "date": "now"}))
    print(f"[parity] wrote {', '.join(map(str, written))}")
    return 0 if report["passed"] else 1


EPILOG_INFER = """\
examples:
  siefpn-deploy infer --artifact export/demo.onnx --source datasets/synth/val --save-vis out/vis --save-json out/dets.json
  siefpn-deploy infer --artifact export/demo.onnx --source datasets/synth/val --save-json out/results.json \
      --annotations datasets/synth/annotations/instances_val.json          # COCO results, ready for COCOeval
  siefpn-deploy infer --artifact output/demo/model_final.pth --source photo.jpg --save-vis out/

Labels are 1..C as in siefpn_deploy/core/contract.py; the JSON carries each label's COCO category_id.
"""


def _cmd_infer(args: argparse.Namespace) -> int:
    from .runtime import Detector
    from .runtime.infer import run_infer

    detector = Detector.from_path(args.artifact, device=args.device, config=args.config_file, runtime=args.runtime,
                                  threads=args.threads)
    run_infer(detector, Path(args.source), save_vis=Path(args.save_vis) if args.save_vis else None,
              save_json=Path(args.save_json) if args.save_json else None,
              annotations=Path(args.annotations) if args.annotations else None, batch_size=args.batch)
    return 0


EPILOG_BENCH = """\
examples:
  siefpn-deploy bench --artifacts export/demo.onnx export/demo.int8.onnx output/demo/model_final.pth
  siefpn-deploy bench --artifacts engines/r50.fp16.plan model_final.pth --config-file configs/retinanet_R50_1x.yaml \\
      --batch 1 4 8 --imgsz 640 800 --device cuda --gau-memory
  # every CPU artifact of one model, ranked against its AP cost (run parity on the same files first):
  siefpn-deploy parity --config-file output/demo/config.yaml --artifacts export/demo.onnx export/demo.fp16.onnx \
      export/demo.int8-cpu.onnx export/demo_aoti.pt2 --report reports/parity MODEL.WEIGHTS output/demo/model_final.pth
  siefpn-deploy bench --device cpu --imgsz 384 --cpp --parity reports/parity/parity.json --artifacts \
      output/demo/model_final.pth export/demo.onnx export/demo.fp16.onnx export/demo.int8-cpu.onnx export/demo_aoti.pt2

Inputs are deterministic synthetic scenes, resized to fill SIZE x SIZE. "model" times one preprocessed
batch through the artifact; "end-to-end" adds preprocessing, box mapping and mask pasting. On a GPU
the timer is CUDA events, and a checkpoint also runs under FP16 autocast, eagerly and with its backbone
and neck replayed as CUDA graphs (the PyTorch baselines an engine has to beat).
With --parity, each artifact also gets its AP cost from that parity report (the worst of its bbox and segm
deltas against PyTorch), and ranking.md names the fastest artifact within each AP budget (fp32 0.1, fp16 0.2,
int8 1.0 points by default) at each batch and size, by end-to-end p50, beside its ratio to eager FP32.
"""


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .parity.rank import markdown as ranking_markdown
    from .parity.rank import rank, read_parity_report, write_ranking
    from .runtime.bench import gau_memory, markdown, run_bench, write_bench_report

    parity = read_parity_report(args.parity) if args.parity else None  # before minutes of timing
    report = run_bench([Path(a) for a in args.artifacts], batches=args.batch, sizes=args.imgsz, warmup=args.warmup,
                       iters=args.iters, device=args.device, config=args.config_file, cpp=args.cpp,
                       runtimes=tuple(args.runtime) if args.runtime else None)
    if args.gau_memory:
        report["gau_memory"] = gau_memory(device="cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    written = write_bench_report(report, Path(args.report))
    print(markdown(report))
    if parity is not None:
        ranking = rank(report, parity)
        written += write_ranking(ranking, Path(args.report))
        print(ranking_markdown(ranking))
    print(f"[bench] wrote {', '.join(map(str, written))}")
    return 0


EPILOG_CPP = """\
examples:
  siefpn-deploy cpp build                                   # engines/cpp/build/siefpn-infer and libsiefpn.so
  engines/cpp/build/siefpn-infer --artifact export/demo_aoti.pt2 --source datasets/synth/val \\
      --annotations datasets/synth/annotations/instances_val.json --json out/cpp_results.json
  engines/cpp/build/siefpn-infer --artifact export/demo_aoti.pt2 --bench --batch 1 4 --size 384
  siefpn-deploy bench --artifacts export/demo_aoti.pt2 --cpp --imgsz 384   # Python and C++ side by side

The build uses the system C++ compiler and pip-installed pieces only: cmake, ninja and nlohmann-json (the
[cpp] extra), LibTorch's headers and libraries from the installed torch wheel, and torchvision's image
decoders. The TensorRT backend is compiled when NvInfer.h and libnvinfer are found (--tensorrt auto), or
required (--tensorrt on, with --tensorrt-root). See engines/cpp/README.md for the C++ API.
"""


EPILOG_TRITON_REPO = """\
examples:
  siefpn-deploy triton-repo --artifacts export/demo.onnx engines/demo.fp16.plan --output model_repository
  siefpn-deploy triton-repo --artifacts export/demo.onnx --output model_repository --instance-kind cpu \\
      --instances 2 --max-batch 4 --dynamic-batching-delay-us 2000

One model per artifact: MODEL/config.pbtxt (platform onnxruntime_onnx or tensorrt_plan; the contract's
input and output names, dtypes and dims; max_batch_size from the artifact's batch range or the engine's
profile; dynamic batching; an instance group), MODEL/1/model.onnx|model.plan and MODEL/meta.json. Every
config.pbtxt is parsed into Triton's own ModelConfig protobuf (from tritonclient) before anything is written.
Copy the folder to a Triton fleet unchanged: its README.md says how. --ensemble adds NAME_ensemble, which takes
encoded images (JPEG, PNG, ...) and returns `siefpn-deploy serve`'s outputs (boxes in original-image pixels,
category ids, RLE masks), so `siefpn-deploy client --model NAME_ensemble` talks to it.
"""


def _cmd_triton_repo(args: argparse.Namespace) -> int:
    from .serve.repository import RepositoryOptions, write_repository

    write_repository([Path(a) for a in args.artifacts], RepositoryOptions(
        output=Path(args.output), max_batch=args.max_batch, instances=args.instances,
        instance_kind=args.instance_kind, delay_us=args.dynamic_batching_delay_us, ensemble=args.ensemble,
        max_image_pixels=args.max_image_pixels))
    print(f"[triton-repo] wrote {args.output} ({len(args.artifacts)} model(s)); serve it with "
          f"tritonserver --model-repository={args.output}")
    return 0


EPILOG_SERVE = """\
examples:
  siefpn-deploy serve --artifact export/demo.onnx                  # HTTP :8000, gRPC :8001, metrics :8002
  siefpn-deploy serve --artifact engines/demo.fp16.plan --max-batch 16 --max-queue-delay-us 5000 --instances 2
  curl localhost:8000/v2/health/ready && curl localhost:8002/metrics
  siefpn-deploy client --url localhost:8000 --source datasets/synth/val --concurrency 8

A real Triton Inference Server (tritonserver from the nvidia-pytriton wheel, no container) runs the model in
this process through its Python backend, with dynamic batching, HTTP and gRPC, health and readiness endpoints,
statistics and Prometheus metrics. Any artifact kind is served (.onnx, .pt2, .plan, or a .pth), and it takes
encoded images: input `image` (BYTES [1], a JPEG/PNG/WebP file per row); outputs num_dets, boxes (original
image pixels), scores, labels, category_ids, class_names, image_size, masks (Mask R-CNN: COCO RLE counts) and
error (why an image was refused; it fails only its own row). SIGINT or SIGTERM stop it gracefully: requests in
flight finish, then it exits 0. Setup: pip install -e ".[serve]" && pip install --no-deps nvidia-pytriton==0.7.0
(its wheel pins numpy<2; its stub gets a numpy<2 environment of its own, built on first use: see
siefpn_deploy/serve/python_env.py). To hand a fleet the ONNX or engine itself, see `siefpn-deploy triton-repo`.
"""


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .runtime.detector import Detector
    from .serve.options import ServeOptions
    from .serve.server import DetectorServer, check_options

    options = ServeOptions(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
        max_image_pixels=args.max_image_pixels, exit_timeout_s=args.exit_timeout, model_name=args.model_name,
        python_env=Path(args.python_env) if args.python_env else None,
        log_file=Path(args.log_file) if args.log_file else None)
    check_options(options)  # before loading the artifact, which can take a while
    detector = Detector.from_path(args.artifact, device=args.device, config=args.config_file, threads=args.threads)
    stop = threading.Event()
    # this process is the server: SIGINT and SIGTERM end the wait, then the server drains and stops
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    with DetectorServer(detector, options) as server:
        server.wait(stop)
    print("[serve] stopped")
    return 0


EPILOG_CLIENT = """\
examples:
  siefpn-deploy client --url localhost:8000 --source datasets/synth/val --concurrency 8
  siefpn-deploy client --url localhost:8001 --grpc --source datasets/synth/val \\
      --annotations datasets/synth/annotations/instances_val.json --save-json out/served_results.json

Sends each image's file bytes to a `siefpn-deploy serve` server (tritonclient, HTTP or gRPC), CONCURRENCY
requests at a time, and prints throughput and latency percentiles. --save-json writes what
`siefpn-deploy infer --save-json` writes: COCO results with --annotations (COCO.loadRes takes them).
"""


def _cmd_client(args: argparse.Namespace) -> int:
    from .serve.client import run_client

    run_client(args.url, Path(args.source), grpc=args.grpc, model=args.model,
               annotations=Path(args.annotations) if args.annotations else None,
               save_json=Path(args.save_json) if args.save_json else None, concurrency=args.concurrency)
    return 0


def _cmd_cpp_build(args: argparse.Namespace) -> int:
    from .runtime.cpp import CppBuild, default_build_dir

    CppBuild(build_dir=Path(args.build_dir) if args.build_dir else default_build_dir(), tensorrt=args.tensorrt,
             tensorrt_root=Path(args.tensorrt_root) if args.tensorrt_root else None, jobs=args.jobs).run()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        data_dir=Path(args.data), output_dir=Path(args.output), export_dir=Path(args.export_dir),
        engine_dir=Path(args.engine_dir), calib_dir=Path(args.calib_dir), report_dir=Path(args.report),
        config_file=args.config_file, overrides=args.opts, regenerate=args.regenerate, level=args.level,
    )


def _command(sub: Any, name: str, func: Any, *, epilog: str, help: str, description: str | None = None
             ) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, epilog=epilog, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def _runtimes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", nargs="+", choices=RUNTIMES, metavar="R",
                        help="what runs each .onnx: onnxruntime and/or openvino (CPU), a row each (default: each "
                        "file's own, openvino for `quantize --target openvino`, else onnxruntime)")


def build_parser() -> argparse.ArgumentParser:
    # the option dataclasses own the defaults; --help shows them, and paths default under the work folders
    from .core.contract import describe_graph
    from .export.options import FORMATS, PACKAGE_DEVICES, PACKAGE_PRECISIONS, ExportOptions
    from .quantize.options import DEFAULT_CALIB_METHOD, TARGETS, BudgetOptions, QuantizeOptions
    from .runtime.cpp import TENSORRT_CHOICES
    from .serve.options import ServeOptions

    parser = argparse.ArgumentParser(
        prog="siefpn-deploy",
        description="Train, evaluate and deploy Dual SIE-FPN detectors (RetinaNet, Faster R-CNN, Mask R-CNN).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="datasets: generate the embedded synthetic COCO dataset")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_sub.add_parser(
        "synth", help="write a deterministic synthetic COCO-format dataset (train/val images + instances JSON)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    synth.add_argument("--output", default="datasets/synth", help="dataset folder to write")
    synth.add_argument("--num-train", type=int, default=1200, help="training images")
    synth.add_argument("--num-val", type=int, default=200, help="validation images")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    synth.add_argument("--min-side", type=int, default=192, help="smallest image side in pixels")
    synth.add_argument("--max-side", type=int, default=352, help="largest image side in pixels")
    synth.add_argument("--level", choices=["benchmark", "easy"], default="benchmark",
                       help="benchmark: up to 8 objects from 10 px on busy backgrounds (every benchmark figure); "
                       "easy: up to 4 objects of 16 px to 0.35 of the short side on calmer backgrounds (the demo's)")
    synth.set_defaults(func=_cmd_synth)

    train = _command(sub, "train", _cmd_train, epilog=EPILOG_TRAIN,
                     help="train or evaluate a detector (same shape as detectron2's train_net.py)")
    train.add_argument("--config-file", metavar="FILE", help="YAML config, or the name of a shipped preset")
    train.add_argument("--num-gpus", type=int, default=1, metavar="N",
                       help="processes to train with (DDP: NCCL on GPUs, gloo on the CPU); default 1")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    train.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS on DATASETS.TEST_*")
    train.add_argument("--list-presets", action="store_true", help="list the shipped config presets and exit")
    train.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")

    convert = _command(sub, "convert", _cmd_convert, epilog=EPILOG_CONVERT,
                       help="import a detectron2 / official Dual SIE-FPN checkpoint (.pth or .pkl)",
                       description="Convert a checkpoint of the paper's official (detectron2) code into this "
                       "project's format: weights, config and classes in one .pth that every stage reads.")
    convert.add_argument("--from", dest="source", nargs=2, required=True, metavar=("FRAMEWORK", "CHECKPOINT"),
                         help="detectron2 and its model_final.pth, model_best.pth or model-zoo .pkl")
    convert.add_argument("--config-file", metavar="FILE", required=True,
                         help="the preset (or YAML) the model was trained with, e.g. retinanet_R50_1x")
    convert.add_argument("--output", metavar="PATH", help="default: output/imported/<config name>.pth")
    convert.add_argument("--classes", metavar="JSON",
                         help="a COCO instances JSON whose categories the model predicts (default: COCO's 80)")
    convert.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")

    export = _command(
        sub, "export", _cmd_export, epilog=EPILOG_EXPORT.format(graph=describe_graph()),
        help="export a trained detector to ONNX or an AOTInductor package (+ meta.json), verified against PyTorch",
        description="Export a trained RetinaNet / Faster R-CNN / Mask R-CNN with its postprocessing to one "
        "plugin-free ONNX graph with fixed-size outputs (or, with --format aoti, a compiled AOTInductor package), "
        "write NAME.meta.json beside it, and check it: onnx.checker and ONNX Runtime (or the loaded package) "
        "against PyTorch on two sizes at batch 2.",
    )
    export.add_argument("--format", choices=FORMATS, default=ExportOptions.format,
                        help="onnx: NAME.onnx; aoti: NAME.pt2, compiled by AOTInductor (default onnx)")
    export.add_argument("--device", choices=PACKAGE_DEVICES, default=ExportOptions.device,
                        help="--format aoti: the device the package is compiled for (default cpu)")
    export.add_argument("--precision", choices=PACKAGE_PRECISIONS, default=ExportOptions.precision,
                        help="--format aoti --device cuda: fp16 compiles the network under CUDA autocast (inputs and "
                        "outputs stay float32; verified against eager FP16 autocast); default fp32")
    export.add_argument("--config-file", metavar="FILE", required=True, help="the config the weights were trained with")
    export.add_argument("--output", metavar="PATH", help="NAME.onnx (NAME.pt2) to write (default: export/<config name>.onnx, "
                        "export/<config name>_tensornms.onnx with --nms tensor, export/<config name>_aoti.pt2 with "
                        "--format aoti)")
    batch = export.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, metavar="B", help="a static batch size")
    batch.add_argument("--dynamic-batch", type=int, default=ExportOptions.batch.max, metavar="MAX",
                       help=f"a dynamic batch 1..MAX (default {ExportOptions.batch.max})")
    size = export.add_mutually_exclusive_group()
    size.add_argument("--imgsz", type=int, nargs="+", metavar="PX",
                      help="a static input size: H [W] (multiples of 32; one value means square)")
    size.add_argument("--dynamic-size", type=int, nargs=2, metavar=("MIN", "MAX"),
                      help="dynamic H and W in MIN..MAX (multiples of 32; default 64..INPUT.MAX_SIZE_TEST padded to 32)")
    export.add_argument("--nms", choices=["onnx", "tensor", "loop"],
                        help="onnx: the NonMaxSuppression op (ONNX Runtime, TensorRT 10/11); tensor: exact greedy NMS "
                        "in plain ops (also TensorRT-RTX); loop: the same greedy NMS as a torch.while_loop (the only "
                        "one for --format aoti). All equal torchvision's batched_nms (default onnx, loop for aoti)")
    export.add_argument("--roi-align", choices=["onnx", "gather"],
                        help="R-CNN RoIAlign: onnx, the RoiAlign op (exact for every RoI; ONNX Runtime, OpenVINO, "
                        "TensorRT 10/11); gather, plugin-free Gather/MatMul (also TensorRT-RTX; exact for adaptive "
                        "sampling up to --roi-samples per bin). Default: onnx with --nms onnx, gather with --nms tensor")
    export.add_argument("--roi-samples", type=int, default=ExportOptions.roi_samples, metavar="S",
                        help="the gather RoIAlign's bound on adaptive samples per bin and axis: RoIs whose bins are at "
                        f"most S feature pixels a side are exact (default {ExportOptions.roi_samples})")
    export.add_argument("--max-det", type=int, metavar="K", help="K, detections per image (default MODEL.DETECTIONS_PER_IMAGE)")
    export.add_argument("--score-thresh", type=float, metavar="S", help="default MODEL.SCORE_THRESH_TEST")
    export.add_argument("--iou-thresh", type=float, metavar="T", help="NMS IoU threshold (default MODEL.NMS_THRESH_TEST)")
    export.add_argument("--input-range", type=int, choices=[255, 1], default=int(ExportOptions.input_scale),
                        help="pixel range the graph takes, 0..255 or 0..1 (default 255)")
    export.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 18 or newer (default: the exporter's)")
    export.add_argument("--box-candidates", type=int, default=ExportOptions.box_candidates, metavar="N",
                        help="R-CNN box head: best per-class candidates entering NMS, <= 3840 "
                        f"(default {ExportOptions.box_candidates})")
    export.add_argument("--max-det-masks", type=int, metavar="N",
                        help="Mask R-CNN: run the mask head on the N best-scoring of the K detections only; later rows' "
                        "masks are zeros (empty). The mask head's cost is per row, found or not: on the CPU, N=20 makes "
                        "a K=100 graph's mask branch 5x cheaper (default: all K, exact)")
    export.add_argument("--simplify", action="store_true", help="also run onnxslim on the graph")
    export.add_argument("--no-verify", action="store_true", help="skip the check against PyTorch")
    export.add_argument("--verify-images", type=int, default=4, metavar="N",
                        help="test-split images the check runs (synthetic renders if the split is absent; default 4)")
    export.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides; MODEL.WEIGHTS path/to/model_final.pth is required")

    quant = _command(sub, "quantize", _cmd_quantize, epilog=EPILOG_QUANTIZE,
                     help="make an FP16 or a calibrated INT8 (Q/DQ) model from an exported ONNX (NVIDIA ModelOpt)")
    quant.add_argument("--onnx", required=True, metavar="PATH", help="the FP32 export (NAME.onnx, with NAME.meta.json)")
    quant.add_argument("--precision", required=True, choices=["fp16", "int8"])
    quant.add_argument("--output", metavar="PATH", help="default: NAME.fp16.onnx / NAME.int8.onnx beside the source")
    quant.add_argument("--calib-data", metavar="DIR|JSON",
                       help="training images: a folder, or an instances JSON (default: the train split in meta.json)")
    quant.add_argument("--calib-image-dir", metavar="DIR", help="the images of --calib-data JSON "
                       "(default: COCO's layout, annotations/instances_X.json -> X/)")
    quant.add_argument("--num-calib", type=int, metavar="N",
                       help="calibration images, spread over the set (default 512 for int8, 16 for fp16's range check)")
    quant.add_argument("--target", choices=TARGETS, default=QuantizeOptions.target,
                       help="int8: tensorrt, ModelOpt's explicit Q/DQ that `build` takes (NAME.int8.onnx); ort-cpu, ONNX "
                       "Runtime's static quantization in the layout its x86 integer kernels fuse: uint8 activations, "
                       "per-channel int8 Conv weights (NAME.int8-cpu.onnx); openvino, NNCF's post-training quantization in "
                       "the layout OpenVINO's CPU plugin fuses, run with --runtime openvino (NAME.int8-ov.onnx; "
                       "pip install 'siefpn-deploy[openvino]'). Default tensorrt")
    quant.add_argument("--calib-method", choices=["entropy", "max"],
                       help="INT8 ranges (default: " + ", ".join(f"{m} for {t}" for t, m in DEFAULT_CALIB_METHOD.items()) + ")")
    quant.add_argument("--calib-batch", type=int, default=QuantizeOptions.calib_batch, metavar="B",
                       help=f"images per calibration step (default {QuantizeOptions.calib_batch})")
    quant.add_argument("--calib-size", type=int, nargs=2, metavar=("H", "W"),
                       help="calibration canvas (default: the largest exported size)")
    quant.add_argument("--calib-cache", default="calib", metavar="DIR",
                       help="cache of preprocessed images (default calib/; '' keeps none)")
    quant.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                       help="node names (regex, re.match) to keep in FP32; repeatable")
    quant.add_argument("--no-default-excludes", action="store_true",
                       help="quantize the GAU attention, score and decoding nodes too (not recommended)")
    budget = quant.add_argument_group(
        "AP budget (int8)", "measure the INT8 model's AP loss on held-out train images and keep the most sensitive "
        "layers out of INT8 until it is within the budget (see reports/quantize/NAME.sensitivity.md)")
    budget.add_argument("--budget", type=float, metavar="AP_POINTS",
                        help="largest AP loss (points, 0..100) against the FP32 model in ONNX Runtime, e.g. 1.0")
    budget.add_argument("--sensitivity-images", type=int, default=BudgetOptions.sensitivity_images, metavar="N",
                        help="the last N train images by id, held out of calibration and scored (default "
                        f"{BudgetOptions.sensitivity_images})")
    budget.add_argument("--max-excluded", type=int, default=BudgetOptions.max_excluded, metavar="N",
                        help="give up (and write nothing) once N layers are kept out and the budget still "
                        f"fails (default {BudgetOptions.max_excluded})")
    budget.add_argument("--report-dir", default=str(BudgetOptions.report_dir), metavar="DIR",
                        help=f"where NAME.sensitivity.{{json,md,png}} go (default {BudgetOptions.report_dir})")

    build = _command(sub, "build", _cmd_build, epilog=EPILOG_BUILD,
                     help="build a TensorRT engine (10.x, 11.x or TensorRT-RTX) from an FP32/FP16/INT8 ONNX")
    build.add_argument("--onnx", required=True, metavar="PATH", help="NAME[.fp16|.int8].onnx with its meta.json")
    build.add_argument("--engine", metavar="PATH", help="default: engines/NAME.plan (+ NAME.engine.json)")
    build.add_argument("--min-shape", metavar="B,3,H,W", help="default: the exported minimum")
    build.add_argument("--opt-shape", metavar="B,3,H,W", help="default: the smallest batch at the largest size")
    build.add_argument("--max-shape", metavar="B,3,H,W",
                       help="default: the exported maximum (image_sizes [B,2] follows these shapes' batch)")
    build.add_argument("--workspace", type=float, metavar="GiB", help="builder workspace limit (default: TensorRT's)")
    build.add_argument("--timing-cache", default="engines/timing.cache", metavar="PATH",
                       help="read if present, written after the build (default engines/timing.cache; '' disables)")
    build.add_argument("--builder-optimization-level", type=int, choices=range(6), metavar="N",
                       help="0..5, TensorRT's default 3; higher builds longer for faster engines")
    build.add_argument("--version-compatible", action="store_true",
                       help="an engine later TensorRT versions can run (with the lean runtime)")

    parity = _command(sub, "parity", _cmd_parity, epilog=EPILOG_PARITY,
                      help="COCO AP of every artifact beside PyTorch's, with budgets (exit 1 when one is broken)")
    parity.add_argument("--config-file", required=True, metavar="FILE", help="the config the weights were trained with")
    parity.add_argument("--artifacts", nargs="+", required=True, metavar="PATH",
                        help=".onnx (ONNX Runtime), .pt2 (AOTInductor) and .plan (TensorRT) artifacts to compare with PyTorch")
    parity.add_argument("--dataset", nargs=2, metavar=("IMAGES", "JSON"),
                        help="evaluation images and instances JSON (default: the config's DATASETS.TEST_*)")
    parity.add_argument("--budget", nargs="+", default=[], metavar="PREC=AP",
                        help="largest AP drop in points per precision, e.g. fp16=0.2 int8=1.0")
    parity.add_argument("--max-images", type=int, metavar="N", help="only the first N images")
    _runtimes_argument(parity)
    parity.add_argument("--batch", type=int, metavar="B",
                        help="images per canvas, the same for every artifact (default TEST.IMS_PER_BATCH, 1, as the "
                        "train command's evaluation, so its PyTorch AP is the one training printed)")
    parity.add_argument("--report", default="reports/parity", metavar="DIR", help="default reports/parity")
    parity.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides; MODEL.WEIGHTS path/to/model_final.pth is required")

    infer = _command(sub, "infer", _cmd_infer, epilog=EPILOG_INFER,
                     help="run any artifact on images: boxes, labels and masks drawn to PNGs, COCO-style JSON")
    infer.add_argument("--artifact", required=True, metavar="PATH", help=".onnx, .pt2, .plan or a .pth checkpoint")
    infer.add_argument("--source", required=True, metavar="PATH", help="an image or a folder of images")
    infer.add_argument("--save-vis", metavar="DIR", help="write NAME.png with the detections drawn")
    infer.add_argument("--save-json", metavar="FILE",
                       help="write the detections as JSON: COCO results with --annotations, else keyed by file_name")
    infer.add_argument("--annotations", metavar="JSON",
                       help="COCO instances file listing the --source images: --save-json then writes COCO results "
                       "(image_id, category_id, bbox, score, RLE segmentation) that COCO.loadRes takes")
    infer.add_argument("--config-file", metavar="FILE", help="for a .pth: its config (default: config.yaml beside it)")
    infer.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default auto")
    infer.add_argument("--runtime", choices=RUNTIMES,
                       help="what runs a .onnx: onnxruntime, or openvino (CPU; pip install 'siefpn-deploy[openvino]'); "
                       "default: the file's own, openvino for `quantize --target openvino`, else onnxruntime")
    infer.add_argument("--threads", type=int, metavar="N", help="a .onnx runtime's threads (default: all cores)")
    infer.add_argument("--batch", type=int, metavar="B",
                       help="images per canvas (default 1, as training's evaluation and parity: a batch's padding "
                       "reaches the border detections of its smaller images)")

    bench = _command(sub, "bench", _cmd_bench, epilog=EPILOG_BENCH,
                     help="latency (p50/p90/p99), throughput and memory of artifacts over batch sizes and input sizes")
    bench.add_argument("--artifacts", nargs="+", required=True, metavar="PATH", help=".onnx, .pt2, .plan or .pth")
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 4], metavar="B", help="default 1 4")
    bench.add_argument("--imgsz", type=int, nargs="+", default=[320], metavar="PX", help="default 320")
    bench.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs first (default 3)")
    bench.add_argument("--iters", type=int, default=20, metavar="N", help="timed runs (default 20)")
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default auto")
    _runtimes_argument(bench)
    bench.add_argument("--config-file", metavar="FILE", help="for a .pth: its config (default: config.yaml beside it)")
    bench.add_argument("--gau-memory", action="store_true", help="also measure the GAU attention at 800x1333")
    bench.add_argument("--cpp", action="store_true",
                       help="also time each .pt2 through the C++ runtime (siefpn-infer; `siefpn-deploy cpp build` first)")
    bench.add_argument("--parity", metavar="JSON", help="a parity.json of the same artifacts: rank them by speed "
                       "within each AP budget (writes ranking.md/json beside bench.md)")
    bench.add_argument("--report", default="reports/bench", metavar="DIR", help="default reports/bench")

    repo = _command(sub, "triton-repo", _cmd_triton_repo, epilog=EPILOG_TRITON_REPO,
                    help="write a Triton Inference Server model repository (config.pbtxt from the graph contract)")
    repo.add_argument("--artifacts", nargs="+", required=True, metavar="PATH",
                      help=".onnx (onnxruntime_onnx) and .plan (tensorrt_plan) artifacts with their meta.json")
    repo.add_argument("--output", default="model_repository", metavar="DIR", help="default model_repository")
    repo.add_argument("--max-batch", type=int, metavar="N",
                      help="max_batch_size (default: the artifact's largest batch, an engine's profile maximum)")
    repo.add_argument("--instances", type=int, default=1, metavar="N", help="model instances per GPU (or in all on "
                      "the CPU); default 1")
    repo.add_argument("--instance-kind", choices=["gpu", "cpu"], default="gpu",
                      help="KIND_GPU or KIND_CPU (an engine: gpu only); default gpu")
    repo.add_argument("--dynamic-batching-delay-us", type=int, default=100, metavar="D",
                      help="the longest a request waits for others to batch with, in microseconds (default 100)")
    repo.add_argument("--ensemble", action="store_true",
                      help="also NAME_ensemble: encoded images in, `serve`'s detections out (Python-backend pre- and "
                      "postprocessing around the model; Triton's Python environment needs siefpn-deploy)")
    repo.add_argument("--max-image-pixels", type=int, default=ServeOptions.max_image_pixels, metavar="N",
                      help="--ensemble: larger images are refused before decoding "
                      f"(default {ServeOptions.max_image_pixels})")

    serve = _command(sub, "serve", _cmd_serve, epilog=EPILOG_SERVE,
                     help="serve any artifact with a local Triton Inference Server (dynamic batching, HTTP, gRPC)")
    serve.add_argument("--artifact", required=True, metavar="PATH", help=".onnx, .pt2, .plan or a .pth checkpoint")
    serve.add_argument("--config-file", metavar="FILE", help="for a .pth: its config (default: config.yaml beside it)")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default auto")
    serve.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads (default: its own)")
    serve.add_argument("--host", default=ServeOptions.host, help=f"address to listen on (default {ServeOptions.host})")
    serve.add_argument("--http-port", type=int, default=ServeOptions.http_port, metavar="P", help="default 8000")
    serve.add_argument("--grpc-port", type=int, default=ServeOptions.grpc_port, metavar="P", help="default 8001")
    serve.add_argument("--metrics-port", type=int, default=ServeOptions.metrics_port, metavar="P",
                       help="Prometheus metrics at /metrics (default 8002)")
    serve.add_argument("--max-batch", type=int, default=ServeOptions.max_batch, metavar="N",
                       help=f"images the dynamic batcher merges into one batch (default {ServeOptions.max_batch})")
    serve.add_argument("--max-queue-delay-us", type=int, default=ServeOptions.max_queue_delay_us, metavar="D",
                       help="the longest a request waits for others to batch with, in microseconds "
                       f"(default {ServeOptions.max_queue_delay_us})")
    serve.add_argument("--instances", type=int, default=ServeOptions.instances, metavar="N",
                       help="model instances running batches at once (default 1)")
    serve.add_argument("--max-image-pixels", type=int, default=ServeOptions.max_image_pixels, metavar="N",
                       help="larger images are refused from their header, before decoding "
                       f"(default {ServeOptions.max_image_pixels})")
    serve.add_argument("--exit-timeout", type=int, default=ServeOptions.exit_timeout_s, metavar="S",
                       help=f"on SIGINT/SIGTERM, how long in-flight requests may take (default {ServeOptions.exit_timeout_s})")
    serve.add_argument("--model-name", metavar="NAME", help="the Triton model name (default: from the file name)")
    serve.add_argument("--python-env", metavar="DIR", help="the Python-backend stub's environment (default: built "
                       "once under ~/.cache/siefpn-deploy)")
    serve.add_argument("--log-file", metavar="FILE", help="tritonserver's log (default: a file in the temp folder)")

    client = _command(sub, "client", _cmd_client, epilog=EPILOG_CLIENT,
                      help="send images to a `serve` server (HTTP or gRPC): detections as COCO JSON, latency")
    client.add_argument("--url", default="localhost:8000", help="host:port (default localhost:8000; gRPC: :8001)")
    client.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    client.add_argument("--model", metavar="NAME", help="the model (default: the server's only one)")
    client.add_argument("--source", required=True, metavar="PATH", help="an image or a folder of images")
    client.add_argument("--annotations", metavar="JSON", help="COCO instances file listing the images: --save-json "
                        "then writes COCO results with true image ids")
    client.add_argument("--save-json", metavar="FILE", help="write the detections as JSON")
    client.add_argument("--concurrency", type=int, default=1, metavar="N", help="requests in flight (default 1)")

    cpp = sub.add_parser("cpp", help="the C++ runtime (engines/cpp): build libsiefpn and siefpn-infer")
    cpp_sub = cpp.add_subparsers(dest="cpp_command", required=True, metavar="ACTION")
    cpp_build = _command(cpp_sub, "build", _cmd_cpp_build, epilog=EPILOG_CPP,
                         help="configure and build engines/cpp with CMake and Ninja (no root needed)",
                         description="Build libsiefpn (siefpn::Detector: .pt2 packages through LibTorch's AOTInductor "
                         "runtime, .plan engines through TensorRT) and the siefpn-infer CLI.")
    cpp_build.add_argument("--build-dir", metavar="DIR", help="default engines/cpp/build")
    cpp_build.add_argument("--tensorrt", choices=TENSORRT_CHOICES, default="auto",
                           help="the TensorRT backend: auto (when found), on (required) or off (default auto)")
    cpp_build.add_argument("--tensorrt-root", metavar="DIR", help="a TensorRT install with include/ and lib/")
    cpp_build.add_argument("--jobs", type=int, metavar="N", help="parallel compile jobs (default: ninja's)")

    demo = sub.add_parser(
        "demo", help="the end-to-end job on the embedded synthetic dataset",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Generate the synthetic dataset (once), train a small Dual SIE-FPN RetinaNet on the CPU, "
        "evaluate it with COCO metrics, export it to ONNX (verified in ONNX Runtime against PyTorch), make FP16 "
        "and INT8 models, build TensorRT engines where a builder is installed, check the COCO AP of every "
        "artifact against PyTorch's, benchmark them, and print a summary. Exits 1 when parity fails.",
    )
    demo.add_argument("--data", default="datasets/synth-easy", help="synthetic dataset folder (generated if missing)")
    demo.add_argument("--level", choices=["easy", "benchmark"], default="easy",
                      help="the scenes to generate when --data is missing (see `data synth --help`)")
    demo.add_argument("--output", default="output/demo", help="training output folder")
    demo.add_argument("--export-dir", default="export", help="where the ONNX models and their meta.json go")
    demo.add_argument("--engine-dir", default="engines", help="where the TensorRT engines go")
    demo.add_argument("--calib-dir", default="calib", help="where the preprocessed calibration images are cached")
    demo.add_argument("--report", default="reports/demo", help="where the parity and benchmark reports go")
    demo.add_argument("--config-file", default="configs/synth_retinanet_R18_demo.yaml",
                      help="training preset (on a GPU, twice its iterations unless SOLVER.MAX_ITER is given)")
    demo.add_argument("--regenerate", action="store_true", help="regenerate the dataset even if present")
    demo.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
