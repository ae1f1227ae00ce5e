"""`siefpn-deploy demo`: the end-to-end job on the embedded synthetic dataset.

Stages so far: synthetic data -> train a small Dual SIE-FPN RetinaNet on the CPU -> COCO evaluation.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import load_config, resolve_config_file
from .data import generate_synthetic
from .data.synth import split_paths
from .engine.checkpoint import last_checkpoint
from .engine.trainer import train

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


def run_demo(*, data_dir: Path, output_dir: Path, config_file: str, overrides: list[str], regenerate: bool) -> int:
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
    minutes = (time.perf_counter() - t0) / 60
    print("\n[demo] summary")
    print("| stage | artifact | bbox AP | AP50 | AP75 | target |")
    print("|---|---|---|---|---|---|")
    met = all(bbox[k] >= v for k, v in TARGET.items())
    target = ", ".join(f"{k} >= {v:.2f}" for k, v in TARGET.items())
    print(f"| train + eval | {output_dir / 'model_final.pth'} | {bbox['AP']:.3f} | {bbox['AP50']:.3f} | "
          f"{bbox['AP75']:.3f} | {target}: {'met' if met else 'NOT met'} |")
    print(f"[demo] done in {minutes:.1f} min; metrics in {output_dir / 'metrics.json'}")
    return 0
