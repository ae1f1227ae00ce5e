"""Checkpoints: atomic saves, `weights_only=True` loads, and one-line errors for a wrong file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import Config
from ..core.errors import UserError
from ..core.fileio import atomic_path, load_torch_file

LAST = "last_checkpoint"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path: str | Path, state: dict[str, Any], *, mark_last: bool = True) -> Path:
    """Write `state` atomically; `mark_last` points OUTPUT_DIR/last_checkpoint at it (for --resume)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    if mark_last:
        with atomic_path(path.parent / LAST) as tmp:
            tmp.write_text(path.name + "\n")
    return path


def last_checkpoint(output_dir: str | Path) -> Path | None:
    marker = Path(output_dir) / LAST
    if not marker.is_file():
        return None
    path = Path(output_dir) / marker.read_text().strip()
    return path if path.is_file() else None


def resume_checkpoint(output_dir: str | Path) -> Path:
    """The checkpoint --resume continues from. A missing or dangling marker is an error, never a silent restart
    from iteration 0 (which would also start the run's loss log over)."""
    marker = Path(output_dir) / LAST
    if not marker.is_file():
        raise UserError(f"--resume: {marker} does not exist, so there is no finished checkpoint to continue from; "
                        "run without --resume to start training in that folder")
    name = marker.read_text().strip()
    path = Path(output_dir) / name
    if not name or "/" in name or not path.is_file():
        raise UserError(f"--resume: {marker} names {name!r}, which is not a checkpoint in {output_dir}; write the "
                        "name of one that is there (model_*.pth) into it, or run without --resume to start over")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    state = load_torch_file(path, "checkpoint")
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    # a bare state dict (e.g. from torch.save(model.state_dict())) is accepted as the model weights
    return state if "model" in state else {"model": state}


def load_model_weights(model: nn.Module, state: dict[str, Any], path: str | Path, config_name: str) -> None:
    """Strict load; a checkpoint of another architecture, backbone, neck or class count is a UserError."""
    own = unwrap(model).state_dict()
    weights = state["model"]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        example = (missing or unexpected or mismatched)[0]
        raise UserError(
            f"checkpoint {path} does not match the model built from {config_name}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} wrong-shape tensors (e.g. {example}); "
            "was it trained with another MODEL.META_ARCHITECTURE, BACKBONE, NECK or dataset?"
        )
    unwrap(model).load_state_dict(weights)


def load_trained_detector(cfg: Config, *, config_name: str, classes: dict[str, list] | None = None
                          ) -> tuple[nn.Module, dict[str, list]]:
    """The detector of cfg with MODEL.WEIGHTS loaded (eval mode, CPU) and its classes ({"names",
    "category_ids"}, in label order): the checkpoint's, else `classes` (a bare state dict records none)."""
    from .detectors import build_detector

    if not cfg.MODEL.WEIGHTS:
        raise UserError("no weights given: add MODEL.WEIGHTS path/to/model_final.pth")
    state = load_checkpoint(cfg.MODEL.WEIGHTS)
    classes = state.get("classes") or classes
    if not classes:
        raise UserError(f"checkpoint {cfg.MODEL.WEIGHTS} records no classes; train it with `siefpn-deploy train`")
    model = build_detector(cfg, num_classes=len(classes["names"]))
    load_model_weights(model, state, cfg.MODEL.WEIGHTS, config_name)
    return model.eval(), {"names": list(classes["names"]), "category_ids": [int(c) for c in classes["category_ids"]]}
