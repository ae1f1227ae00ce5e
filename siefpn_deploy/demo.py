"""`siefpn-deploy demo`: the end-to-end job on the embedded synthetic dataset.

Stages so far: synthetic data -> train a small Dual SIE-FPN RetinaNet on the CPU -> COCO evaluation
-> ONNX export, verified in ONNX Runtime against PyTorch.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import load_config, resolve_config_file
from .data import generate_synthetic
from .data.synth import split_paths
from .engine.checkpoint import last_checkpoint
from .engine.trainer import train
from .export.exporter import ExportOptions, default_size_range, export_onnx
from .export.meta import read_meta, sha256_of
from .export.verify import verification_images
from .errors import UserError

# The bar the demo is held to on the synthetic val split (COCOeval fractions).
TARGET = {"AP": 0.30, "AP50": 0.60}


def dataset_overrides(data_dir: Path) -> list[str]:
    (train_images, train_json), (test_images, test_json) = (split_paths(data_dir, s) for s in ("train", "val"))
    return [
        "DATASETS.TRAIN_IMAGES", str(train_images), "DATASETS.TRAIN_ANNOTATIONS", str(train_json),
        "DATASETS.TEST_IMAGES", str(test_images), "DATASETS.TEST_ANNOTATIONS", str(test_json),
    ]


def ensure_synthetic(data_dir: Path, *, regenerate: bool = False) -> None:
    if regenerate or not split_paths(data_dir, "val")[1].is_file():
        print(f"[demo] generating the synthetic dataset in {data_dir}")
        generate_synthetic(data_dir)
    else:
        print(f"[demo] using the synthetic dataset in {data_dir}")


def current_export(onnx_path: Path, weights: str) -> dict | None:
    """The verification record of an existing export of exactly these weights, or None (export again)."""
    try:
        meta = read_meta(onnx_path)
    except UserError:
        return None
    same = meta.get("source", {}).get("weights_sha256") == sha256_of(weights)
    return meta["verification"] if same and meta.get("verification", {}).get("passed") else None


def run_demo(*, data_dir: Path, output_dir: Path, export_dir: Path, config_file: str, overrides: list[str],
             regenerate: bool) -> int:
    t0 = time.perf_counter()
    ensure_synthetic(data_dir, regenerate=regenerate)
    cfg = load_config(config_file, dataset_overrides(data_dir) + ["OUTPUT_DIR", str(output_dir)] + list(overrides))
    # Rerunning with the same config resumes (or just re-evaluates a finished run); a changed config starts over.
    saved = output_dir / "config.yaml"
    resume = saved.is_file() and saved.read_text() == cfg.dump() and last_checkpoint(output_dir) is not None
    print(f"[demo] training {cfg.MODEL.META_ARCHITECTURE} ({cfg.MODEL.NECK}, {cfg.MODEL.BACKBONE}) "
          f"for {cfg.SOLVER.MAX_ITER} iterations -> {output_dir}" + (" (resuming)" if resume else ""))
    metrics = train(cfg, config_name=str(resolve_config_file(config_file)), resume=resume)
    bbox = metrics["bbox"]

    cfg.MODEL.WEIGHTS = str(output_dir / "model_final.pth")
    onnx_path = export_dir / f"{output_dir.name}.onnx"
    verification = current_export(onnx_path, cfg.MODEL.WEIGHTS)
    if verification is None:
        print(f"[demo] exporting {cfg.MODEL.WEIGHTS} -> {onnx_path}")
        size = default_size_range(cfg)
        exported = export_onnx(
            cfg, ExportOptions(output=onnx_path, height=size, width=size, divisibility=cfg.INPUT.SIZE_DIVISIBILITY),
            config_name=str(resolve_config_file(config_file)), verify_images=verification_images(cfg),
        )
        verification = exported.meta["verification"]
    else:
        print(f"[demo] {onnx_path} is already the verified export of these weights")

    minutes = (time.perf_counter() - t0) / 60
    print("\n[demo] summary")
    print("| stage | artifact | result | target |")
    print("|---|---|---|---|")
    met = all(bbox[k] >= v for k, v in TARGET.items())
    target = ", ".join(f"{k} >= {v:.2f}" for k, v in TARGET.items())
    print(f"| train + eval | {output_dir / 'model_final.pth'} | bbox AP {bbox['AP']:.3f}, AP50 {bbox['AP50']:.3f}, "
          f"AP75 {bbox['AP75']:.3f} | {target}: {'met' if met else 'NOT met'} |")
    v = verification
    print(f"| export + verify (ONNX Runtime) | {onnx_path} | {v['matched']}/{v['reference']} detections matched, "
          f"max box error {v['max_box_abs']:.1e} px, max score error {v['max_score_abs']:.1e} | "
          f"all matched, box rel <= {v['tolerances']['box_rel']:g}, score <= {v['tolerances']['score_abs']:g}: "
          f"{'met' if v['passed'] else 'NOT met'} |")
    print(f"[demo] done in {minutes:.1f} min; metrics in {output_dir / 'metrics.json'}")
    return 0
