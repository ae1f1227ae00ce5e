"""CUDA benchmark of the AOTInductor package: per detector, on one GPU, at --sizes and --batches, in one run:

    PyTorch eager FP32 | eager FP16 autocast | .pt2 FP16 (Python) | .pt2 FP16 (C++ siefpn-infer)

    python benchmarks/bench_aoti_cuda.py --report benchmarks/results/aoti_cuda_h200.md

Models: the synthetic presets (ResNet-18), trained --train-iters iterations on the GPU, exported with
`export --format aoti --device cuda --precision fp16` (verified against eager FP16 autocast). Each detector's
results are written as soon as it is done, so a run cut short keeps what it measured. The C++ runtime also
runs the package on the val images and its detections are compared with the Python runtime's.
Latency: median of --iters runs of the model alone (one preprocessed canvas in, the padded outputs back on
the host) after 3 warm-up runs, by the host clock, which includes the device-to-host copy for every runtime.
Goal (issue 12): the FP16 package >= 3x faster than eager FP32.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from common import invocation, shapes, synthetic_benchmark_arguments, synthetic_data, synthetic_model

from siefpn_deploy.core.errors import UserError
from siefpn_deploy.core.reporting import markdown_table, write_benchmark_report
from siefpn_deploy.core.timing import measure
from siefpn_deploy.data.image import load_image
from siefpn_deploy.model.inference import EagerBackend
from siefpn_deploy.pipeline import ExportOptions
from siefpn_deploy.runtime import Detector
from siefpn_deploy.runtime.bench import synthetic_batch
from siefpn_deploy.runtime.cpp import CppBuild, cpp_bench, default_build_dir, run_infer_cli


def cpp_agreement(package: Path, val: tuple[Path, Path], count: int) -> dict:
    """siefpn-infer on the first `count` val images against the Python runtime on the same package."""
    images, annotations = val
    files = sorted(Path(images).glob("*.jpg"))[:count]
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            (Path(tmp) / f.name).symlink_to(f.resolve())
        out = Path(tmp) / "cpp.json"
        done = run_infer_cli(["--artifact", str(package), "--source", tmp, "--annotations", str(annotations), "--json",
                              str(out), "--no-round"])
        if done.returncode != 0:
            return {"error": done.stderr.strip()}
        records = json.loads(out.read_text())
    ids = {i["file_name"]: i["id"] for i in json.loads(Path(annotations).read_text())["images"]}
    python = Detector.from_path(package).predict([load_image(f) for f in files], batch_size=1)
    box = score = 0.0
    same_count = True
    for f, want in zip(files, python):
        got = [r for r in records if r["image_id"] == ids[f.name]]
        same_count &= len(got) == len(want)
        if len(got) == len(want) and len(want):
            xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in got)])
            box = max(box, float(np.abs(xyxy - want.boxes).max()))
            score = max(score, float(np.abs(np.array([r["score"] for r in got]) - want.scores).max()))
    return {"images": len(files), "detections": len(records), "same_counts": same_count, "max_box_px": box,
            "max_score": score}


def main() -> None:
    p = synthetic_benchmark_arguments(__doc__, "benchmarks/results/aoti_cuda.md")
    p.set_defaults(sizes=[384], archs=["mask_rcnn", "faster_rcnn", "retinanet"], work="output/bench_aoti_cuda")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_aoti_cuda.py needs a CUDA device")
    t0 = time.perf_counter()
    try:
        CppBuild(build_dir=default_build_dir()).run()
        cpp_error = None
    except UserError as e:  # the Python columns are still measured
        cpp_error = f"C++ build failed: {e}"
        print(f"[bench] {cpp_error}", flush=True)
    fp16_package = ExportOptions(format="aoti", device="cuda", precision="fp16",
                                 **shapes(max(args.batches), max(args.sizes)))
    header = ["detector", "input", "batch", "eager FP32 ms", "eager FP16 autocast ms", ".pt2 FP16 (Python) ms",
              ".pt2 FP16 (C++) ms", "speed-up Python", "speed-up C++", "compile s"]
    rows, agreements = [], {}
    command = invocation()
    for arch in args.archs:
        try:
            run, exported = synthetic_model(arch, args, fp16_package)
        except UserError as e:  # kept and measured, with the failed verification reported
            agreements[f"{arch} verification"] = f"failed ({e}); measured the package exported without verification"
            run, exported = synthetic_model(arch, args, fp16_package, verify=False)
        package = exported.path
        compile_s = exported.meta["export"]["compile_seconds"]
        eager = Detector.from_path(run.weights, device="cuda")
        base = eager.backend
        fp16 = Detector(EagerBackend(base.detector, base.contract, base.device, autocast_dtype=torch.float16),
                        eager.meta, eager.path)
        runtimes = {"eager FP32": eager, "eager FP16": fp16, ".pt2 FP16": Detector.from_path(package)}
        for size in args.sizes:
            cpp = {}
            try:
                if cpp_error is None:
                    cpp = {r["batch"]: r["model"].median_ms
                           for r in cpp_bench(package, batches=args.batches, size=size, warmup=3, iters=args.iters)}
            except UserError as e:
                agreements[f"{arch} c++ bench"] = str(e)
            for batch in args.batches:
                ms = {}
                for name, detector in runtimes.items():
                    at, _, canvas = synthetic_batch(detector, batch, size)
                    ms[name] = measure(partial(at.run_canvas, canvas), warmup=3, iters=args.iters).median_ms
                c = cpp.get(batch)
                rows.append([arch, f"{size}x{size}", batch, *(f"{v:.2f}" for v in ms.values()),
                             "-" if c is None else f"{c:.2f}", f"{ms['eager FP32'] / ms['.pt2 FP16']:.2f}x",
                             "-" if c is None else f"{ms['eager FP32'] / c:.2f}x", f"{compile_s:.0f}"])
                print(" | ".join(map(str, rows[-1])), flush=True)
        agreements[arch] = cpp_agreement(package, synthetic_data(args).val, count=8) if cpp_error is None else cpp_error
        print(f"[bench] {arch}: C++ vs Python on the FP16 CUDA package: {agreements[arch]}", flush=True)
        notes = (f"Synthetic presets (ResNet-18, 64-wide Dual SIE-FPN), trained {args.train_iters} iterations on "
                 f"the GPU; median of {args.iters} runs of the model alone after 3 warm-up runs, host clock (the "
                 "outputs' copy to the host included for every runtime), every runtime on the same synthetic canvas. "
                 ".pt2 FP16: `export --format aoti --device cuda --precision fp16` (the network under CUDA autocast, "
                 "verified against eager FP16 autocast); C++: siefpn-infer --bench on the same package. Speed-up: "
                 "eager FP32 / .pt2 FP16 (goal >= 3x).\n\nC++ against Python on the same FP16 CUDA package, val "
                 "images: " + "; ".join(f"{a}: {json.dumps(v)}" for a, v in agreements.items())
                 + f"\n\nWall time so far: {time.perf_counter() - t0:.0f} s.")
        write_benchmark_report(args.report, title="AOTInductor CUDA FP16 package vs PyTorch eager (GPU)",
                               data={"header": header, "rows": rows, "agreement": agreements}, command=command,
                               body=markdown_table(header, rows) + "\n\n" + notes)
    subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.used", "--format=csv"], check=False)


if __name__ == "__main__":
    main()
