"""Stage: train a detector from a config (`siefpn-deploy train`), or return a finished run of the same
config and training data."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import Config, load_config, resolve_config_file
from ..core.errors import UserError
from ..core.fileio import read_json, write_json
from ..core.sidecar import request_key, sha256_of
from ..model.checkpoint import last_checkpoint

INPUTS = "inputs.json"  # OUTPUT_DIR/inputs.json: the request a finished run answers
FINAL = "model_final.pth"
METRICS = "metrics.json"  # the final evaluation (evaluation.loop), written after FINAL


@dataclass(frozen=True)
class TrainOptions:
    config_file: str | Path  # a YAML path or a preset name (`siefpn-deploy train --list-presets`)
    overrides: tuple[str, ...] = ()  # KEY VALUE pairs, values parsed as YAML
    resume: bool = False  # continue from OUTPUT_DIR's last checkpoint
    # a finished run of the same config on the same training data is returned as it is (the demo, benchmarks,
    # fixtures); the train command trains again unless --resume
    reuse: bool = True
    num_gpus: int = 1  # processes (torch.distributed); 1 on the CPU
    eval_only: bool = False  # evaluate MODEL.WEIGHTS on DATASETS.TEST_* and stop


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    config: Path  # run_dir/config.yaml, what export, parity and the runtime read
    weights: Path  # run_dir/model_final.pth (or MODEL.WEIGHTS with eval_only)
    metrics: dict[str, Any] = field(default_factory=dict)  # COCO metrics on DATASETS.TEST_*: {"bbox": {...}, ...}
    reused: bool = False


def train_request(cfg: Config) -> dict[str, str]:
    """What a run answers, as OUTPUT_DIR/inputs.json records it: the config and the training annotations."""
    return {"config": request_key(cfg.dump()), "train_annotations_sha256": sha256_of(cfg.DATASETS.TRAIN_ANNOTATIONS)}


def _entry(cfg: Config, name: str, resume: bool, *, rank: int, world_size: int) -> None:
    from ..train.trainer import train

    train(cfg, config_name=name, resume=resume, rank=rank, world_size=world_size)


def train_detector(options: TrainOptions, *, log=print) -> TrainResult:
    from ..train.launch import launch
    from ..train.trainer import evaluate_only

    cfg = load_config(options.config_file, list(options.overrides))
    name = str(resolve_config_file(options.config_file))
    run_dir = Path(cfg.OUTPUT_DIR)
    if options.eval_only:
        metrics = evaluate_only(cfg, config_name=name)
        return TrainResult(run_dir=run_dir, config=run_dir / "config.yaml", weights=Path(cfg.MODEL.WEIGHTS),
                           metrics=metrics)
    if not Path(cfg.DATASETS.TRAIN_ANNOTATIONS).is_file():
        raise UserError(f"DATASETS.TRAIN_ANNOTATIONS {cfg.DATASETS.TRAIN_ANNOTATIONS} is not a file")
    request = train_request(cfg)
    result = TrainResult(run_dir=run_dir, config=run_dir / "config.yaml", weights=run_dir / FINAL)
    finished = (run_dir / INPUTS).is_file() and read_json(run_dir / INPUTS) == request
    if options.reuse and finished and (run_dir / FINAL).is_file() and (run_dir / METRICS).is_file():
        log(f"[train] {run_dir} already holds a finished run of this config and data")
        return TrainResult(**{**vars(result), "metrics": json.loads((run_dir / METRICS).read_text()), "reused": True})
    # an interrupted run (no final model yet) of the same config continues where it stopped; anything else,
    # a finished run on other data included, starts over
    saved = run_dir / "config.yaml"
    interrupted = saved.is_file() and saved.read_text() == cfg.dump() and not (run_dir / FINAL).is_file()
    resume = options.resume or (options.reuse and interrupted and last_checkpoint(run_dir) is not None)
    (run_dir / INPUTS).unlink(missing_ok=True)  # written again once this run has finished
    log(f"[train] {cfg.MODEL.META_ARCHITECTURE} ({cfg.MODEL.NECK}, {cfg.MODEL.BACKBONE}), {cfg.SOLVER.MAX_ITER} "
        f"iterations -> {run_dir}" + (" (resuming)" if resume else ""))
    if options.num_gpus > 1:
        launch(_entry, (cfg, name, resume), num_processes=options.num_gpus)
        metrics = json.loads((run_dir / METRICS).read_text()) if (run_dir / METRICS).is_file() else {}
    else:
        from ..train.trainer import train

        metrics = train(cfg, config_name=name, resume=resume)
    write_json(run_dir / INPUTS, request)
    return TrainResult(**{**vars(result), "metrics": metrics})
