"""The first training losses of one preset with the loader in the training process and with a loader worker.

    python benchmarks/experiments/loader_workers_steps.py      # the demo preset on datasets/synth-easy
    python benchmarks/experiments/loader_workers_steps.py --amp fp32 --steps 10

Both loaders give the same batches up to float rounding (a worker resizes on one thread; the pixels differ by
about 1e-7, tests/test_train.py::test_the_loader_worker_count_does_not_change_the_batches). This shows what
such a difference does to training from scratch: the losses agree at the first step and drift apart after,
so two full trainings that differ only in the worker count end at different APs. Prints a table; writes no
report (a diagnostic, not a benchmark).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from siefpn_deploy.core.config import load_config
from siefpn_deploy.core.reporting import markdown_table
from siefpn_deploy.pipeline import DatasetOptions, synthetic_dataset
from siefpn_deploy.train.trainer import Trainer


def losses(config_file: str, opts: list[str], steps: int) -> list[float]:
    trainer = Trainer(load_config(config_file, opts), config_name=config_file)
    model, batches = trainer.model.train(), iter(trainer.loader())
    return [trainer.step(model, *next(batches))[0] for _ in range(steps)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="configs/synth_retinanet_R18_demo.yaml")
    p.add_argument("--data", default="datasets/synth-easy", help="an easy-level synthetic dataset (generated if missing)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp32"], help="SOLVER.AMP")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    data = synthetic_dataset(DatasetOptions(root=Path(args.data), level="easy"))
    runs = {}
    with tempfile.TemporaryDirectory() as out:
        for workers in (0, 1):
            opts = data.overrides() + ["DATALOADER.NUM_WORKERS", str(workers), "SOLVER.AMP", args.amp,
                                       "OUTPUT_DIR", str(Path(out) / str(workers))]
            runs[workers] = losses(args.config_file, opts, args.steps)
    rows = [[i + 1, f"{a:.7f}", f"{b:.7f}", f"{abs(a - b) / abs(a):.1e}"] for i, (a, b) in enumerate(zip(runs[0], runs[1]))]
    print(markdown_table(["step", "loss, no worker", "loss, 1 worker", "relative difference"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
