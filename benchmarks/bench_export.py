"""Export benchmark: per detector, export time and ONNX size, and ONNX Runtime CPU latency beside
PyTorch eager CPU latency for the same weights and the same input canvases.

    python benchmarks/bench_export.py                      # 3 detectors x {320, 640} x batch {1, 4}
    python benchmarks/bench_export.py --archs retinanet --sizes 320 --iters 20

Models are the synthetic presets (ResNet-18, 64-wide pyramid), briefly trained once into
--work/<arch> so that postprocessing sees real candidate counts (random weights give none). Both
runtimes get the same val images on the same canvases (the runtime's preprocessing); PyTorch runs the
detector's own eager postprocessing. The export time is the one meta.json recorded when the export was made.
Prints a markdown table and writes it, with date and machine, to --report.
"""

from __future__ import annotations

import sys
from functools import partial

import torch
from common import shapes, synthetic_benchmark_arguments, synthetic_model

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.contract import IMAGE_SIZES, INPUT, GraphContract, graph_inputs
from siefpn_deploy.core.ort import ort_session
from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.core.timing import measure
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.data.preprocess import Preprocess
from siefpn_deploy.model.checkpoint import load_trained_detector
from siefpn_deploy.model.inference import EagerBackend
from siefpn_deploy.pipeline import ExportOptions


def main() -> None:
    p = synthetic_benchmark_arguments(__doc__, "benchmarks/results/export_cpu.md")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()

    rows = []
    for arch in args.archs:
        run, onnx = synthetic_model(arch, args, ExportOptions(**shapes(max(args.batches), max(args.sizes))))
        onnx_path, meta = onnx.path, onnx.meta
        cfg = load_config(run.config, ["MODEL.WEIGHTS", str(run.weights)])
        detector, _ = load_trained_detector(cfg, config_name=arch)
        dataset = CocoDetection(image_dir=cfg.DATASETS.TEST_IMAGES, annotation_file=cfg.DATASETS.TEST_ANNOTATIONS)
        contract = GraphContract.from_meta(meta, source=str(onnx_path))
        eager_backend = EagerBackend(detector, contract, torch.device("cpu"))
        session = ort_session(onnx_path, threads=torch.get_num_threads())
        for size in args.sizes:
            for batch in args.batches:
                # the runtime's preprocessing with the resize set to fill a size x size canvas
                fill = Preprocess(contract.preprocess).at_size(size)
                canvas = fill([dataset.image(i) for i in range(batch)], canvas=(size, size))
                feeds = graph_inputs(canvas.images.numpy(), canvas.image_sizes)
                eager = measure(partial(eager_backend.run, feeds[INPUT], feeds[IMAGE_SIZES]), warmup=args.warmup,
                                iters=args.iters)
                onnx_rt = measure(partial(session.run, None, feeds), warmup=args.warmup, iters=args.iters)
                dets = int(session.run(None, feeds)[0].sum())
                rows.append([arch, f"{size}x{size}", batch, f"{meta['export']['seconds']:.1f}",
                             f"{onnx_path.stat().st_size / 2**20:.1f}", dets, f"{eager.median_ms:.0f}",
                             f"{onnx_rt.median_ms:.0f}", f"{onnx_rt.median_ms / eager.median_ms:.2f}"])
                print(" | ".join(map(str, rows[-1])), flush=True)

    header = ["detector", "input", "batch", "export s", "ONNX MiB", "detections", "PyTorch eager ms",
              "ORT CPU ms", "ORT / PyTorch"]
    write_benchmark_report(
        args.report, title="Export benchmark", data={"header": header, "rows": rows},
        body=markdown_table(header, rows) + "\n\nSynthetic presets (ResNet-18, 64-wide Dual SIE-FPN), trained "
        f"{args.train_iters} iterations; ONNX with `--nms onnx`, dynamic batch and size; median of {args.iters} runs "
        f"after {args.warmup} warm-up runs, whole detector with postprocessing, same canvases for both runtimes.",
        command=f"python benchmarks/bench_export.py {' '.join(sys.argv[1:])}".strip(),
    )


if __name__ == "__main__":
    main()
