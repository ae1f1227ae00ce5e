"""Export benchmark: per detector, export time and ONNX size, and ONNX Runtime CPU latency beside
PyTorch eager CPU latency for the same weights and the same input canvases.

    python benchmarks/bench_export.py                      # 3 detectors x {320, 640} x batch {1, 4}
    python benchmarks/bench_export.py --archs retinanet --sizes 320 --iters 20

Models are the synthetic presets (ResNet-18, 64-wide pyramid), briefly trained once into
--work/<arch> so that postprocessing sees real candidate counts (random weights give none). Both
runtimes get the same val images on the same canvases (the runtime's preprocessing); PyTorch runs the detector's own eager postprocessing.
Prints a markdown table and writes it, with date and machine, to --report.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import torch

from siefpn_deploy.cli import main as cli
from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.core.sidecar import read_meta
from siefpn_deploy.core.timing import measure
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.data.preprocess import Preprocess
from siefpn_deploy.demo import dataset_overrides, ensure_synthetic
from siefpn_deploy.export.exporter import load_trained_detector
from siefpn_deploy.model.inference import detect_on_canvas


def trained_weights(arch: str, data: Path, work: Path, iters: int) -> Path:
    out = work / arch
    if not (out / "model_final.pth").is_file():
        args = ["train", "--config-file", f"configs/synth_{arch}_R18.yaml", *dataset_overrides(data),
                "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(iters), "SOLVER.WARMUP_ITERS", str(iters // 4)]
        if cli(args) != 0:
            sys.exit(f"training {arch} failed")
    return out


def detector_arguments(description: str, report: str) -> argparse.ArgumentParser:
    """The options every per-detector benchmark takes (bench_export.py, bench_quantize.py)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["retinanet", "faster_rcnn", "mask_rcnn"])
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    p.add_argument("--iters", type=int, default=20, help="timed runs per setting (median reported)")
    p.add_argument("--train-iters", type=int, default=60, help="brief training, for realistic candidate counts")
    p.add_argument("--data", default="datasets/synth")
    p.add_argument("--work", default="output/bench_export")
    p.add_argument("--report", default=report)
    return p


def main() -> None:
    p = detector_arguments(__doc__, "benchmarks/results/export_cpu.md")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()

    data, work = Path(args.data), Path(args.work)
    ensure_synthetic(data)
    threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    rows = []
    for arch in args.archs:
        run = trained_weights(arch, data, work, args.train_iters)
        cfg = load_config(run / "config.yaml", ["MODEL.WEIGHTS", str(run / "model_final.pth")])
        detector, _ = load_trained_detector(cfg, config_name=arch)
        dataset = CocoDetection(image_dir=cfg.DATASETS.TEST_IMAGES, annotation_file=cfg.DATASETS.TEST_ANNOTATIONS)
        onnx_path = work / f"{arch}.onnx"
        if cli(["export", "--config-file", str(run / "config.yaml"), "--output", str(onnx_path),
                "--dynamic-batch", str(max(args.batches)), "--dynamic-size", "64", str(max(args.sizes)),
                "MODEL.WEIGHTS", str(run / "model_final.pth")]) != 0:
            sys.exit(f"exporting {arch} failed")
        meta = read_meta(onnx_path)
        preprocess = Preprocess.from_meta(meta)
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        for size in args.sizes:
            for batch in args.batches:
                # the runtime's preprocessing with the resize set to fill a size x size canvas
                fill = replace(preprocess, min_size=size, max_size=size)
                canvas = fill([dataset[i][0] for i in range(batch)], canvas=(size, size)).images
                feed = {"images": canvas.numpy()}
                with torch.inference_mode():
                    eager = measure(lambda: detect_on_canvas(detector, canvas / fill.input_scale),
                                    warmup=args.warmup, iters=args.iters)
                onnx_rt = measure(lambda: session.run(None, feed), warmup=args.warmup, iters=args.iters)
                dets = int(session.run(None, feed)[0].sum())
                rows.append([arch, f"{size}x{size}", batch, f"{meta['export']['seconds']:.1f}",
                             f"{onnx_path.stat().st_size / 2**20:.1f}", dets, f"{eager.median_ms:.0f}",
                             f"{onnx_rt.median_ms:.0f}", f"{onnx_rt.median_ms / eager.median_ms:.2f}"])
                print(" | ".join(map(str, rows[-1])), flush=True)

    header = ["detector", "input", "batch", "export s", "ONNX MiB", "detections", "PyTorch eager ms",
              "ORT CPU ms", "ORT / PyTorch"]
    write_benchmark_report(
        args.report, title="Export benchmark", data={"header": header, "rows": rows},
        body=markdown_table(header, rows) + "\n\n" + f"Synthetic presets (ResNet-18, 64-wide Dual SIE-FPN), trained {args.train_iters} iterations; "
        f"ONNX with `--nms onnx`, dynamic batch and size; median of {args.iters} runs after {args.warmup} warm-up "
        "runs, whole detector with postprocessing, same canvases for both runtimes.",
        command=f"python benchmarks/bench_export.py {' '.join(sys.argv[1:])}".strip(),
    )


if __name__ == "__main__":
    main()
