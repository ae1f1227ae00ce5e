"""The training loop: SGD/AdamW with warmup and steps, DDP, progress bar, atomic checkpoints, resume."""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..core.config import Config, SolverConfig
from ..core.errors import UserError
from ..core.fileio import atomic_write
from ..core.progress import progress_bar
from ..core.signals import disposition_kept
from ..data import CocoDetection, build_train_transforms, collate
from ..data.image import in_channel_order
from ..evaluation.loop import evaluate_predictor
from ..model import build_detector
from ..model.checkpoint import (
    load_checkpoint,
    load_model_weights,
    load_trained_detector,
    resume_checkpoint,
    save_checkpoint,
    unwrap,
)
from ..model.predictor import Predictor
from .launch import device_for
from .precision import autocast_dtype, training_autocast


def lr_factor(solver: SolverConfig, iteration: int) -> float:
    """Linear warmup, then detectron2's multi-step decay (or cosine to 0)."""
    if solver.LR_SCHEDULER == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * iteration / solver.MAX_ITER))
    else:
        factor = solver.GAMMA ** bisect.bisect_right(solver.STEPS, iteration)
    if iteration < solver.WARMUP_ITERS:
        alpha = iteration / solver.WARMUP_ITERS
        factor *= solver.WARMUP_FACTOR * (1 - alpha) + alpha
    return factor


def build_optimizer(solver: SolverConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if solver.OPTIMIZER == "AdamW":
        return torch.optim.AdamW(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)
    return torch.optim.SGD(params, lr=solver.BASE_LR, momentum=solver.MOMENTUM, weight_decay=solver.WEIGHT_DECAY)


class TrainingBatches(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Endless batches of (index, seed) samples: the seed drives that sample's augmentation
    (CocoDetection.__getitem__).

    Every batch is a pure function of (seed, rank, world_size, batch number): each epoch is a seeded
    shuffle, sharded by rank, and samples are batched with others of their group (landscape or portrait
    with ASPECT_RATIO_GROUPING, detectron2's default; one group without) in shuffle order; a group's
    incomplete batch at the end of an epoch is dropped. `start` skips that many batches, so a resumed
    run trains on exactly the batches, and augmentations, that an uninterrupted run would.
    """

    def __init__(self, groups: list[int], *, batch_size: int, seed: int, rank: int, world_size: int,
                 start: int = 0) -> None:
        self.groups, self.batch_size, self.seed = groups, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    def epoch(self, number: int) -> list[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + number)
        order = torch.randperm(len(self.groups), generator=g).tolist()
        seeds = torch.randint(2**62, (len(self.groups),), generator=g).tolist()  # one per shuffle position
        buckets: dict[int, list[tuple[int, int]]] = {}
        batches = []
        for index, seed in list(zip(order, seeds))[self.rank :: self.world_size]:
            bucket = buckets.setdefault(self.groups[index], [])
            bucket.append((index, seed))
            if len(bucket) == self.batch_size:
                batches.append(bucket[:])
                bucket.clear()
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        skip, number = self.start, 0
        while True:
            batches = self.epoch(number)
            if not batches:
                raise UserError(f"no group of {len(self.groups)} training images fills a batch of {self.batch_size} "
                                "per process; lower SOLVER.IMS_PER_BATCH or set DATALOADER.ASPECT_RATIO_GROUPING False")
            if skip >= len(batches):
                skip -= len(batches)
            else:
                yield from batches[skip:]
                skip = 0
            number += 1


def build_datasets(cfg: Config) -> tuple[CocoDetection, CocoDetection]:
    d, i = cfg.DATASETS, cfg.INPUT
    train = CocoDetection(
        image_dir=d.TRAIN_IMAGES, annotation_file=d.TRAIN_ANNOTATIONS, with_masks=cfg.MODEL.has_masks,
        transforms=build_train_transforms(min_sizes=i.MIN_SIZE_TRAIN, max_size=i.MAX_SIZE_TRAIN, flip_prob=i.FLIP_PROB),
    )
    test = build_test_dataset(cfg)
    if train.category_ids != test.category_ids:
        raise UserError(
            f"train and test annotations have different categories ({d.TRAIN_ANNOTATIONS} vs {d.TEST_ANNOTATIONS})"
        )
    return train, test


def build_test_dataset(cfg: Config) -> CocoDetection:
    d = cfg.DATASETS
    return CocoDetection(
        image_dir=d.TEST_IMAGES, annotation_file=d.TEST_ANNOTATIONS, with_masks=cfg.MODEL.has_masks
    )


class Terminated(Exception):
    """SIGTERM arrived during training (raised by `terminate_as_interrupt`'s handler)."""


@contextlib.contextmanager
def terminate_as_interrupt(*, enabled: bool = True) -> Iterator[None]:
    """While training, SIGTERM raises Terminated in the main thread, so the loop saves a checkpoint and exits;
    the previous handler is back afterwards. Under DDP (whose ranks must stop together) it does nothing."""

    def handler(signum, frame):
        raise Terminated()

    with disposition_kept(signal.SIGTERM, handler) if enabled else contextlib.nullcontext():
        yield


def sigchld_restored() -> contextlib.AbstractContextManager[None]:
    """The SIGCHLD disposition as it was before training. A DataLoader with worker processes installs a
    SIGCHLD handler (to report a dead worker) and never removes it, so after training every child process the
    caller starts (a subprocess, a server) runs Python code in the main thread when it ends. The test suite's
    process died with SIGSEGV (si_code SI_KERNEL, every thread idle, the main one reading a child's pipe) with
    that handler left in place on the project's AMX machine (benchmarks/results/test_suite.md)."""
    return disposition_kept(signal.SIGCHLD)


class Trainer:
    """One training run. Library-safe: the caller's global RNG state is the same after as before (the
    model is initialised, and torchvision's RPN/RoI samplers draw, inside `torch.random.fork_rng`)."""

    def __init__(self, cfg: Config, *, config_name: str, rank: int = 0, world_size: int = 1) -> None:
        s = cfg.SOLVER
        if s.IMS_PER_BATCH % world_size:
            raise UserError(f"SOLVER.IMS_PER_BATCH {s.IMS_PER_BATCH} is not divisible by --num-gpus {world_size}")
        self.cfg, self.config_name, self.rank, self.world_size = cfg, config_name, rank, world_size
        self.device = device_for(rank)
        self.output_dir = Path(cfg.OUTPUT_DIR)
        self.train_set, self.test_set = build_datasets(cfg)
        self.classes = {"names": self.train_set.class_names, "category_ids": self.train_set.category_ids}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.SEED)  # the same initial weights on every rank and every run
            self.model = build_detector(cfg, num_classes=self.train_set.num_classes).to(self.device)
        if s.CHANNELS_LAST:
            self.model.to(memory_format=torch.channels_last)  # 4-D weights; inputs follow the first conv's
        self.amp_dtype = autocast_dtype(s.AMP, self.device)
        self.optimizer = build_optimizer(s, self.model)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: lr_factor(s, it))
        # what the global RNG holds while training: seeded here, or restored from the checkpoint on resume
        self.rng_state = torch.Generator().manual_seed(cfg.SEED + rank).get_state()
        self.start_iter = 0
        self.pending_log: list[dict] = []
        self.log_started = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def load(self, resume: bool) -> None:
        """--resume continues from OUTPUT_DIR/last_checkpoint; otherwise MODEL.WEIGHTS initialises."""
        path = resume_checkpoint(self.output_dir) if resume else None
        if path is not None:
            state = load_checkpoint(path)
            load_model_weights(self.model, state, path, self.config_name)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.start_iter = int(state["iteration"])
            self.trim_log()
            if "rng" in state and self.world_size == 1:
                self.rng_state = state["rng"]
            if self.is_main:
                print(f"resumed from {path} at iteration {self.start_iter}")
        elif self.cfg.MODEL.WEIGHTS:
            load_model_weights(self.model, load_checkpoint(self.cfg.MODEL.WEIGHTS), self.cfg.MODEL.WEIGHTS, self.config_name)

    def state(self, iteration: int) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": iteration,
            "rng": torch.get_rng_state(),  # called inside train()'s forked RNG: the training stream's state
            "config": self.cfg.to_dict(),
            "classes": self.classes,
        }

    def save(self, iteration: int, name: str | None = None) -> Path | None:
        """The loss log, then the checkpoint and config.yaml, written together at checkpoint time, so a run
        that fails before its first checkpoint leaves no model files. The log goes first: a kill between the
        two leaves log lines past the last checkpoint, which --resume drops (`trim_log`), so a resumed run's
        log has no gap and no repeated iteration."""
        if not self.is_main:
            return None
        if self.pending_log:
            # a fresh run starts its own log; a resumed run extends the one its checkpoint belongs to
            mode = "a" if self.start_iter > 0 or self.log_started else "w"
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "metrics.jsonl", mode) as f:
                f.writelines(json.dumps(r) + "\n" for r in self.pending_log)
                f.flush()
                os.fsync(f.fileno())
            self.pending_log.clear()
            self.log_started = True
        path = save_checkpoint(self.output_dir / (name or f"model_{iteration:07d}.pth"), self.state(iteration))
        atomic_write(self.output_dir / "config.yaml", lambda tmp: tmp.write_text(self.cfg.dump()))
        return path

    def trim_log(self) -> None:
        """Drop the loss log's lines after the checkpoint being resumed (written just before a kill)."""
        log = self.output_dir / "metrics.jsonl"
        if not self.is_main or not log.is_file():
            return
        lines = log.read_text().splitlines(keepends=True)
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                if number == len(lines):  # the last line, cut by a kill while it was written: dropped
                    break
                raise UserError(f"--resume: {log} line {number} is not JSON; the log is damaged before its end, "
                                "so it cannot be continued (move it away to start a new log)") from None
            if record is not None and record.get("iteration", 0) <= self.start_iter:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            atomic_write(log, lambda tmp: tmp.write_text("".join(kept)))

    def loader(self) -> torch.utils.data.DataLoader:
        images = [self.train_set.coco.imgs[i] for i in self.train_set.image_ids]
        grouping = self.cfg.DATALOADER.ASPECT_RATIO_GROUPING
        batches = TrainingBatches([int(im["width"] > im["height"]) if grouping else 0 for im in images],
                                  batch_size=self.cfg.SOLVER.IMS_PER_BATCH // self.world_size, seed=self.cfg.SEED,
                                  rank=self.rank, world_size=self.world_size, start=self.start_iter)
        workers = self.cfg.DATALOADER.NUM_WORKERS
        # the samples carry their augmentation seeds, so the workers' own RNG streams play no part; the loader
        # gets a generator of its own, or starting it would draw its base seed from the training RNG stream
        return torch.utils.data.DataLoader(self.train_set, batch_sampler=batches, collate_fn=collate,
                                           num_workers=workers, persistent_workers=workers > 0,
                                           generator=torch.Generator().manual_seed(self.cfg.SEED))

    def step(self, model: nn.Module, images: list[torch.Tensor], targets: list[dict]) -> tuple[float, dict[str, float]]:
        """The one optimisation step (the training loop and benchmarks/bench_train.py both call it):
        forward, a finite-loss check, backward, gradient clipping, the optimizer and the LR schedule.
        Returns (loss, each loss term)."""
        images = [in_channel_order(im, self.cfg.INPUT.FORMAT).to(self.device) for im in images]  # RGB -> model order
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
        with training_autocast(self.amp_dtype, self.device):
            losses = model(images, targets)
        losses = {k: v.float() for k, v in losses.items()}  # a term autocast left in bf16 sums in FP32
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise UserError(f"loss became {loss.item()} after {self.scheduler.last_epoch} iterations; "
                            "lower SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.SOLVER.CLIP_GRAD_NORM > 0:
            nn.utils.clip_grad_norm_(model.parameters(), self.cfg.SOLVER.CLIP_GRAD_NORM)
        self.optimizer.step()
        self.scheduler.step()
        return loss.item(), {k: v.item() for k, v in losses.items()}

    def train(self) -> dict:
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.set_rng_state(self.rng_state)
            if cuda:  # torchvision's samplers draw on the GPU there; that stream is seeded, not resumed
                torch.cuda.manual_seed(self.cfg.SEED + self.rank)
            with sigchld_restored():  # after _train returns: its loader's workers have ended with it
                return self._train()

    def _train(self) -> dict:
        s = self.cfg.SOLVER
        model = self.model
        if self.world_size > 1:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[self.rank] if self.device.type == "cuda" else None)
        model.train()
        bar = progress_bar(
            total=s.MAX_ITER, initial=self.start_iter, desc="train", unit="it", disable=not self.is_main,
            smoothing=0.05,
        )
        iteration, images_seen, t0 = self.start_iter, 0, time.perf_counter()
        data = iter(self.loader())
        try:
            # SIGTERM (docker stop, Kubernetes, Slurm) ends the run as Ctrl-C does: a checkpoint, then exit
            with terminate_as_interrupt(enabled=self.world_size == 1):
                while iteration < s.MAX_ITER:
                    images, targets = next(data)
                    loss, terms = self.step(model, images, targets)
                    iteration += 1
                    images_seen += len(images) * self.world_size
                    bar.update(1)
                    if self.is_main and (iteration % self.cfg.LOG_PERIOD == 0 or iteration == s.MAX_ITER):
                        lr = self.optimizer.param_groups[0]["lr"]
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}")
                        self.pending_log.append({"iteration": iteration, "loss": loss, "lr": lr, **terms})
                    if iteration % s.CHECKPOINT_PERIOD == 0 and iteration < s.MAX_ITER:
                        self.save(iteration)
                    if (self.cfg.TEST.EVAL_PERIOD and iteration % self.cfg.TEST.EVAL_PERIOD == 0
                            and iteration < s.MAX_ITER):
                        self.evaluate(write=False)
                        model.train()
        except (KeyboardInterrupt, Terminated) as stop:
            if self.world_size == 1 and iteration > self.start_iter:
                path = self.save(iteration)
                how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
                raise UserError(f"{how} at iteration {iteration}; saved {path}; rerun with --resume to continue") from None
            if isinstance(stop, Terminated):
                raise UserError(f"terminated (SIGTERM) at iteration {iteration}, before a step of this run finished: "
                                "nothing new to save") from None
            raise
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
        if iteration > self.start_iter or not (self.output_dir / "model_final.pth").is_file():
            self.save(iteration, "model_final.pth")  # a resumed finished run keeps its file (and its sha256)
        if self.is_main and images_seen:
            arithmetic = "bf16 autocast" if self.amp_dtype == torch.bfloat16 else "fp32"
            print(f"trained {iteration - self.start_iter} iterations in {elapsed:.0f}s ({images_seen / elapsed:.2f} images/s, "
                  f"{arithmetic})")
        return self.evaluate(write=True)

    def evaluate(self, *, write: bool) -> dict:
        """Rank 0 scores the whole test split through the contract's preprocessing and postprocessing, as
        parity scores its PyTorch reference; the other ranks wait at the barrier."""
        metrics: dict = {}
        if self.is_main:
            metrics = evaluate_model(unwrap(self.model), self.cfg, self.classes, self.test_set, device=self.device,
                                     path=self.output_dir / "model_final.pth",
                                     output_dir=self.output_dir if write else None)
        if self.world_size > 1:
            dist.barrier()
        return metrics


def evaluate_model(model: nn.Module, cfg: Config, classes: dict[str, list], dataset: CocoDetection, *,
                   device: torch.device, path: Path, output_dir: Path | None) -> dict:
    """COCO metrics of a detector in memory (left in eval mode), through `Predictor.eager`; with output_dir,
    also its coco_instances_results.json and metrics.json."""
    if classes["category_ids"] != dataset.category_ids:
        raise UserError(f"the model's categories {classes['category_ids']} are not those of {dataset.annotation_file} "
                        f"({dataset.category_ids})")
    predictor = Predictor.eager(model, cfg=cfg, classes=classes, path=path, device=device)
    evaluation = evaluate_predictor(predictor, dataset, batch_size=cfg.TEST.IMS_PER_BATCH, desc="evaluate",
                                    verbose=True)
    if output_dir is not None:
        evaluation.write(output_dir)
    return evaluation.metrics


def train(cfg: Config, *, config_name: str, resume: bool, rank: int = 0, world_size: int = 1) -> dict:
    trainer = Trainer(cfg, config_name=config_name, rank=rank, world_size=world_size)
    trainer.load(resume)
    return trainer.train()


def evaluate_only(cfg: Config, *, config_name: str) -> dict:
    """One process: COCOeval needs every image's detections in one place."""
    if not cfg.MODEL.WEIGHTS:
        raise UserError("--eval-only needs MODEL.WEIGHTS path/to/checkpoint.pth")
    test_set = build_test_dataset(cfg)
    detector, classes = load_trained_detector(cfg, config_name=config_name,
                                              classes={"names": test_set.class_names,
                                                       "category_ids": test_set.category_ids})
    return evaluate_model(detector, cfg, classes, test_set, device=device_for(0), path=Path(cfg.MODEL.WEIGHTS),
                          output_dir=Path(cfg.OUTPUT_DIR))
