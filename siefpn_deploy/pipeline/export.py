"""Stage: a trained detector -> NAME.onnx or NAME.pt2 with its meta.json, verified against PyTorch
(`siefpn-deploy export`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import load_config, resolve_config_file
from ..core.errors import UserError
from ..core.sidecar import sha256_of
from ..core.staging import remove_stale
from ..export.options import ExportOptions
from .artifacts import Artifact
from .reuse import current_meta

VERIFY_IMAGES = 4  # test-split images the export is checked on against PyTorch


@dataclass(frozen=True)
class ExportJob:
    config_file: str | Path  # the config the weights were trained with (a run's OUTPUT_DIR/config.yaml)
    weights: Path | None = None  # None: the config's MODEL.WEIGHTS (or an override)
    options: ExportOptions = field(default_factory=ExportOptions)
    overrides: tuple[str, ...] = ()  # config KEY VALUE pairs (thresholds, detections per image)
    verify_images: int | None = VERIFY_IMAGES  # None: skip the verification
    reuse: bool = True  # an existing export of the same weights, config and options is returned as it is


def export_detector(job: ExportJob, *, log=print) -> Artifact:
    from ..export.exporter import export_model, export_request
    from ..export.verify import verification_images

    overrides = list(job.overrides) + (["MODEL.WEIGHTS", str(job.weights)] if job.weights is not None else [])
    cfg = load_config(job.config_file, overrides)
    if not cfg.MODEL.WEIGHTS:
        raise UserError("no weights given: add MODEL.WEIGHTS path/to/model_final.pth")
    config_name = str(resolve_config_file(job.config_file))
    options = job.options.resolved(cfg, config_name)
    options.validate()
    # first, whatever a killed export left beside the output: also when the export on disk is reused
    remove_stale(Path(options.output).parent, log=log, stage="export")
    if job.reuse and Path(cfg.MODEL.WEIGHTS).is_file():  # a missing file is the exporter's one-line error
        expected = {("source", "weights_sha256"): sha256_of(cfg.MODEL.WEIGHTS),
                    ("export", "request"): export_request(cfg, options)}
        if job.verify_images is not None:
            expected[("verification", "passed")] = True
        meta = current_meta(options.output, expected)
        if meta is not None:
            log(f"[export] {options.output} is already this export of these weights")
            return Artifact(path=options.output, meta=meta, reused=True)
    images = None if job.verify_images is None else verification_images(cfg, count=job.verify_images, log=log)
    result = export_model(cfg, options, config_name=config_name, verify_images=images, log=log)
    return Artifact(path=result.path, meta=result.meta)
