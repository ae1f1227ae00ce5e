"""Stage: the COCO AP of every artifact beside PyTorch's, against per-precision budgets (`siefpn-deploy parity`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import load_config
from ..core.errors import UserError
from ..core.openvino import Runtimes
from ..parity.check import DEFAULT_BUDGETS

REPORT_DIR = Path("reports/parity")


@dataclass(frozen=True)
class ParityJob:
    config_file: str | Path  # the config the weights were trained with
    artifacts: tuple[Path, ...]  # .onnx, .pt2, .plan
    weights: Path | None = None  # None: the config's MODEL.WEIGHTS (or an override)
    overrides: tuple[str, ...] = ()
    dataset: tuple[Path, Path] | None = None  # (images, instances JSON); None: the config's DATASETS.TEST_*
    # AP points (0..100) each precision may lose; a precision not given keeps parity.check.DEFAULT_BUDGETS'
    budgets: dict[str, float] = field(default_factory=dict)
    max_images: int | None = None
    batch: int | None = None  # images per canvas, the same for every artifact; None: TEST.IMS_PER_BATCH
    runtimes: Runtimes = None  # what runs each .onnx (core.openvino.Runtimes): all alike, per file, or its own
    allow_not_run: bool = False  # an artifact this machine cannot run passes the gate (else it fails it)
    report_dir: Path = REPORT_DIR


@dataclass(frozen=True)
class ParityResult:
    report: dict[str, Any]  # parity.json's content
    written: list[Path]  # parity.json, parity.md, parity.png, parity.examples.*.png
    passed: bool


def check_parity(job: ParityJob, *, log=print) -> ParityResult:
    from ..data import CocoDetection
    from ..parity.check import run_parity
    from ..parity.report import write_parity_report
    from ..runtime import Detector

    unknown = set(job.budgets) - set(DEFAULT_BUDGETS)
    if unknown:
        raise UserError(f"budgets are per precision ({', '.join(DEFAULT_BUDGETS)}), got {', '.join(sorted(unknown))}")
    overrides = list(job.overrides) + (["MODEL.WEIGHTS", str(job.weights)] if job.weights is not None else [])
    cfg = load_config(job.config_file, overrides)
    if not cfg.MODEL.WEIGHTS:
        raise UserError("no weights given: add MODEL.WEIGHTS path/to/model_final.pth")
    images, annotations = job.dataset or (cfg.DATASETS.TEST_IMAGES, cfg.DATASETS.TEST_ANNOTATIONS)
    dataset = CocoDetection(image_dir=images, annotation_file=annotations, with_masks=cfg.MODEL.has_masks)
    if len(dataset) == 0:
        raise UserError(f"{annotations} lists no images")
    reference = Detector.from_checkpoint(Path(cfg.MODEL.WEIGHTS), config=job.config_file, overrides=overrides)
    run = run_parity(reference, [Path(a) for a in job.artifacts], dataset,
                     budgets={**DEFAULT_BUDGETS, **job.budgets}, max_images=job.max_images,
                     batch_size=job.batch or cfg.TEST.IMS_PER_BATCH, runtimes=job.runtimes,
                     allow_not_run=job.allow_not_run, log=log)
    written = write_parity_report(run.report, Path(job.report_dir), run.grids)
    return ParityResult(report=run.report, written=written, passed=bool(run.report["passed"]))
