from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from siefpn_deploy.data import generate_synthetic
from siefpn_deploy.data.synth import split_paths

# pycocotools calls a numpy API that numpy 2 deprecates, once per mask
warnings.filterwarnings("ignore", message=".*product.*", category=DeprecationWarning)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A small synthetic COCO dataset, generated once per test session (read-only: copy to modify)."""
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, num_train=16, num_val=6, seed=0, min_side=96, max_side=160, progress=False)
    return root


@pytest.fixture
def synth_copy(tiny_synth, tmp_path) -> Path:
    dst = tmp_path / "synth"
    shutil.copytree(tiny_synth, dst)
    return dst


def tiny_overrides(data: Path, out: Path, arch: str = "retinanet", **extra: object) -> list[str]:
    """A tiny ResNet-18 model on tiny images: seconds per run on 2 CPU cores."""
    opts = {
        "MODEL.META_ARCHITECTURE": arch,
        "MODEL.FPN_OUT_CHANNELS": 16,
        "MODEL.ROI_BOX_HEAD_DIM": 32,
        "INPUT.MIN_SIZE_TRAIN": "[96, 128]",
        "INPUT.MAX_SIZE_TRAIN": 160,
        "INPUT.MIN_SIZE_TEST": 128,
        "INPUT.MAX_SIZE_TEST": 160,
        "SOLVER.IMS_PER_BATCH": 2,
        "SOLVER.MAX_ITER": 4,
        "SOLVER.WARMUP_ITERS": 2,
        "SOLVER.CHECKPOINT_PERIOD": 2,
        "DATALOADER.NUM_WORKERS": 0,
        "DATASETS.TRAIN_IMAGES": split_paths(data, "train")[0],
        "DATASETS.TRAIN_ANNOTATIONS": split_paths(data, "train")[1],
        "DATASETS.TEST_IMAGES": split_paths(data, "val")[0],
        "DATASETS.TEST_ANNOTATIONS": split_paths(data, "val")[1],
        "OUTPUT_DIR": out,
        "LOG_PERIOD": 1,
    }
    opts.update({k.replace("__", "."): v for k, v in extra.items()})
    return [str(x) for kv in opts.items() for x in kv]
