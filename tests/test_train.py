"""Training, resume, DDP and evaluation, on real (tiny) synthetic data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

from siefpn_deploy.cli import main
from siefpn_deploy.core.config import SolverConfig, load_config
from siefpn_deploy.core.cpu import BF16_ENV, bf16_units
from siefpn_deploy.core.errors import UserError
from siefpn_deploy.data import CocoDetection
from siefpn_deploy.evaluation.loop import evaluate_predictor
from siefpn_deploy.model.checkpoint import last_checkpoint, load_checkpoint
from siefpn_deploy.parity.check import parse_budgets, run_parity
from siefpn_deploy.runtime import Detector
from siefpn_deploy.train.precision import autocast_dtype
from siefpn_deploy.train.trainer import Trainer, TrainingBatches, lr_factor

PRESET = "configs/synth_retinanet_R18.yaml"


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "siefpn_deploy", *map(str, args)]


def test_lr_schedule_warmup_and_steps():
    s = SolverConfig(MAX_ITER=100, STEPS=[60, 80], GAMMA=0.1, WARMUP_ITERS=10, WARMUP_FACTOR=0.001)
    assert lr_factor(s, 0) == pytest.approx(0.001)
    assert lr_factor(s, 5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert [lr_factor(s, i) for i in (10, 59, 60, 80, 99)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    s.LR_SCHEDULER = "cosine"
    assert lr_factor(s, 50) == pytest.approx(0.5)


def test_training_batches_resume_where_they_stopped():
    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1]
    full = iter(TrainingBatches(groups, batch_size=2, seed=3, rank=1, world_size=2))
    stream = [next(full) for _ in range(12)]
    resumed = iter(TrainingBatches(groups, batch_size=2, seed=3, rank=1, world_size=2, start=7))
    assert [next(resumed) for _ in range(5)] == stream[7:]  # the same indices and augmentation seeds
    assert all(len({groups[i] for i, _ in batch}) == 1 for batch in stream)  # landscape with landscape
    assert {groups[batch[0][0]] for batch in stream} == {0, 1}
    other = TrainingBatches(groups, batch_size=1, seed=3, rank=0, world_size=2)
    mine = TrainingBatches(groups, batch_size=1, seed=3, rank=1, world_size=2)
    epoch = [b[0][0] for b in other.epoch(0) + mine.epoch(0)]
    assert sorted(epoch) == list(range(10))  # ranks split each epoch
    samples = [s for batch in stream for s in batch]
    assert len({seed for _, seed in samples}) == len(samples)  # each position gets its own augmentation seed
    with pytest.raises(UserError, match="fills a batch"):
        next(iter(TrainingBatches([0, 1], batch_size=2, seed=0, rank=0, world_size=1)))


@pytest.mark.parametrize("arch", ["retinanet", "faster_rcnn"])  # the R-CNNs' RPN/RoI samplers draw random numbers
def test_resume_repeats_an_uninterrupted_run_exactly(tiny_synth, tmp_path, arch):
    """Stopped after 2 iterations and resumed, a run ends with the same weights, bit for bit, as one that
    ran 4 iterations straight: the same batches, augmentations, RNG draws, LR and optimizer state."""
    schedule = {"SOLVER__CHECKPOINT_PERIOD": 1000, "SOLVER__LR_SCHEDULER": "multistep", "SOLVER__STEPS": "[3, 1000]",
                    "INPUT__FLIP_PROB": 0.5}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["train", "--config-file", PRESET,
                 *tiny_overrides(tiny_synth, straight, arch, SOLVER__MAX_ITER=4, **schedule)]) == 0
    assert main(["train", "--config-file", PRESET,
                 *tiny_overrides(tiny_synth, stopped, arch, SOLVER__MAX_ITER=2, **schedule)]) == 0
    before = torch.get_rng_state()
    assert main(["train", "--config-file", PRESET, "--resume",
                 *tiny_overrides(tiny_synth, stopped, arch, SOLVER__MAX_ITER=4, **schedule)]) == 0
    assert torch.equal(torch.get_rng_state(), before)  # training leaves the caller's global RNG alone
    a = load_checkpoint(straight / "model_final.pth")["model"]
    b = load_checkpoint(stopped / "model_final.pth")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert log == want


def subset(data: Path, dst: Path, n: int) -> Path:
    """The first n training images as a dataset of their own (val stays the same)."""
    doc = json.loads((data / "annotations" / "instances_train.json").read_text())
    keep = {im["id"] for im in doc["images"][:n]}
    doc["images"] = doc["images"][:n]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    (dst / "annotations").mkdir(parents=True)
    (dst / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    (dst / "annotations" / "instances_val.json").write_text((data / "annotations" / "instances_val.json").read_text())
    (dst / "train").symlink_to(data / "train")
    (dst / "val").symlink_to(data / "val")
    return dst


def test_short_training_run_reduces_loss(tiny_synth, tmp_path):
    # one fixed batch of 4 real images, no augmentation: the loss must fall as the model fits them
    data = subset(tiny_synth, tmp_path / "data", 4)
    out = tmp_path / "out"
    opts = tiny_overrides(data, out, SOLVER__MAX_ITER=30, SOLVER__IMS_PER_BATCH=4, SOLVER__CHECKPOINT_PERIOD=100,
                          SOLVER__BASE_LR=0.001, SOLVER__WARMUP_ITERS=3, INPUT__FLIP_PROB=0.0,
                          INPUT__MIN_SIZE_TRAIN="[128]", DATALOADER__ASPECT_RATIO_GROUPING=False)
    assert main(["train", "--config-file", PRESET, *opts]) == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert (out / "model_final.pth").is_file() and (out / "coco_instances_results.json").is_file()


def test_kill_then_resume_continues_with_same_iteration_and_lr(tiny_synth, tmp_path):
    out = tmp_path / "out"
    # multistep: the LR depends on the iteration only, so a shorter MAX_ITER on resume can't change it
    schedule = {"SOLVER__CHECKPOINT_PERIOD": 3, "SOLVER__LR_SCHEDULER": "multistep", "SOLVER__STEPS": "[4, 1000]"}
    opts = tiny_overrides(tiny_synth, out, SOLVER__MAX_ITER=400, **schedule)
    proc = subprocess.Popen(cli("train", "--config-file", PRESET, *opts), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while last_checkpoint(out) is None or "0000006" not in last_checkpoint(out).name:
            assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = last_checkpoint(out)
    state = load_checkpoint(killed_at)
    iteration = state["iteration"]
    assert iteration >= 6 and iteration % 3 == 0
    cfg = load_config(PRESET, opts)
    expected_lr = cfg.SOLVER.BASE_LR * lr_factor(cfg.SOLVER, iteration)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected_lr)

    # the log is written just before each checkpoint: a kill between the two leaves lines past the checkpoint,
    # and a kill while a line is written leaves it cut short
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": iteration + 1, "loss": 0.0, "lr": 0.0}) + "\n")
        f.write('{"iteration": ' + str(iteration + 2) + ', "loss": 0.')
    opts = tiny_overrides(tiny_synth, out, SOLVER__MAX_ITER=iteration + 3, **schedule)
    done = subprocess.run(cli("train", "--config-file", PRESET, "--resume", *opts), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {killed_at} at iteration {iteration}" in done.stdout
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(1, iteration + 4))  # no gap, no repeat
    assert log[iteration]["lr"] == pytest.approx(cfg.SOLVER.BASE_LR * lr_factor(cfg.SOLVER, iteration + 1))
    assert load_checkpoint(out / "model_final.pth")["iteration"] == iteration + 3


def test_sigterm_saves_a_checkpoint_then_exits_and_the_run_resumes(tiny_synth, tmp_path):
    """docker stop, Kubernetes and Slurm send SIGTERM: training saves where it is and exits in one line."""
    out = tmp_path / "out"
    opts = tiny_overrides(tiny_synth, out, SOLVER__MAX_ITER=100000, SOLVER__CHECKPOINT_PERIOD=5)
    proc = subprocess.Popen(cli("train", "--config-file", PRESET, *opts), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # the first checkpoint (iteration 5) shows the loop is running, however loaded the machine is
        deadline = time.monotonic() + 120
        while last_checkpoint(out) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, err
    saved = last_checkpoint(out)
    iteration = load_checkpoint(saved)["iteration"]
    assert iteration > 0
    assert err.strip().splitlines()[-1] == (f"error: terminated (SIGTERM) at iteration {iteration}; saved {saved}; "
                                            "rerun with --resume to continue")
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(1, iteration + 1))
    opts = tiny_overrides(tiny_synth, out, SOLVER__MAX_ITER=iteration + 2, SOLVER__CHECKPOINT_PERIOD=100000)
    done = subprocess.run(cli("train", "--config-file", PRESET, "--resume", *opts), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "model_final.pth")["iteration"] == iteration + 2


def test_resume_without_a_checkpoint_to_continue_is_one_line_and_touches_nothing(tiny_synth, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"iteration": 1, "loss": 1.0, "lr": 0.1}\n')
    resume = ["train", "--config-file", PRESET, "--resume", *tiny_overrides(tiny_synth, out)]
    capsys.readouterr()
    assert main(resume) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --resume: {out / 'last_checkpoint'} does not exist, so there is no finished checkpoint to "
                   "continue from; run without --resume to start training in that folder")
    (out / "last_checkpoint").write_text("model_0000004.pth\n")  # dangling: the checkpoint it names is gone
    assert main(resume) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --resume: {out / 'last_checkpoint'} names 'model_0000004.pth', which is not a "
                          "checkpoint in") and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["last_checkpoint", "metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == '{"iteration": 1, "loss": 1.0, "lr": 0.1}\n'  # the log is kept


def test_two_process_ddp_on_cpu(tiny_synth, tmp_path):
    out = tmp_path / "out"
    opts = tiny_overrides(tiny_synth, out, SOLVER__MAX_ITER=3, SOLVER__IMS_PER_BATCH=4)
    done = subprocess.run(cli("train", "--config-file", PRESET, "--num-gpus", 2, *opts), capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "model_final.pth")["iteration"] == 3
    assert "bbox" in json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("arch", ["retinanet", "mask_rcnn"])
def test_eval_only_and_parity_report_one_pytorch_ap(tiny_synth, tmp_path, arch):
    """Training's own evaluation, `train --eval-only` and parity's PyTorch reference score one checkpoint on
    the same images through the same preprocessing and postprocessing: the same AP, to the last digit."""
    train_out, eval_out = tmp_path / "train", tmp_path / "eval"
    # score threshold 0: a barely trained model still detects something, so the APs are not all zero
    opts = tiny_overrides(tiny_synth, train_out, arch, SOLVER__MAX_ITER=6, MODEL__SCORE_THRESH_TEST=0.0)
    assert main(["train", "--config-file", PRESET, *opts]) == 0
    weights = train_out / "model_final.pth"
    opts = tiny_overrides(tiny_synth, eval_out, arch, MODEL__WEIGHTS=weights, MODEL__SCORE_THRESH_TEST=0.0)
    assert main(["train", "--config-file", PRESET, "--eval-only", *opts]) == 0
    metrics = json.loads((eval_out / "metrics.json").read_text())
    results = json.loads((eval_out / "coco_instances_results.json").read_text())
    assert results
    training = json.loads((train_out / "metrics.json").read_text())
    reference = Detector.from_checkpoint(weights, config=train_out / "config.yaml")
    # the same detections, not only the same (possibly zero) AP: parity's reference, image by image
    batch = load_config(PRESET, opts).TEST.IMS_PER_BATCH
    dataset_plain = CocoDetection(image_dir=tiny_synth / "val", annotation_file=tiny_synth / "annotations" / "instances_val.json")
    assert evaluate_predictor(reference, dataset_plain, batch_size=batch, progress=False).results == results
    dataset = CocoDetection(image_dir=tiny_synth / "val", annotation_file=tiny_synth / "annotations" / "instances_val.json",
                            with_masks=arch == "mask_rcnn")
    report = run_parity(reference, [], dataset, budgets=parse_budgets([]), max_images=None,
                        batch_size=load_config(PRESET, opts).TEST.IMS_PER_BATCH).report
    parity = report["artifacts"][0]["metrics"]
    assert set(parity) == set(metrics) == ({"bbox", "segm"} if arch == "mask_rcnn" else {"bbox"})
    for iou_type in parity:
        for name in ("AP", "AP50", "AR100"):
            assert parity[iou_type][name] == metrics[iou_type][name] == training[iou_type][name], (iou_type, name)
    # category ids in the results are COCO ids, not contract labels
    assert {r["category_id"] for r in results} <= set(dataset.category_ids)


def run_cli_error(capsys, args: list[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("train:", "evaluate:"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_config_typo_is_one_line(capsys, tmp_path):
    line = run_cli_error(capsys, ["train", "--config-file", PRESET, "SOLVER.BASE_LRR", "0.1"])
    assert "SOLVER.BASE_LRR" in line and "did you mean SOLVER.BASE_LR" in line
    line = run_cli_error(capsys, ["train", "--config-file", str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in line


def _corrupt(data: Path) -> str:
    victim = sorted((data / "train").iterdir())[3]
    victim.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return victim.name


def _missing(data: Path) -> str:
    victim = sorted((data / "train").iterdir())[2]
    victim.unlink()
    return victim.name


def _malformed_json(data: Path) -> str:
    path = data / "annotations" / "instances_train.json"
    path.write_text(path.read_text()[:-50])
    return path.name


def _unknown_category(data: Path) -> str:
    path = data / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["category_id"] = 999
    path.write_text(json.dumps(doc))
    return "999"


def _empty(data: Path) -> str:
    path = data / "annotations" / "instances_train.json"
    doc = json.loads(path.read_text())
    doc["images"], doc["annotations"] = [], []
    path.write_text(json.dumps(doc))
    return path.name


@pytest.mark.parametrize("damage", [_corrupt, _missing, _malformed_json, _unknown_category, _empty])
@pytest.mark.parametrize("workers", [0, 1])
def test_bad_dataset_is_one_line_and_leaves_no_output(capsys, synth_copy, tmp_path, damage, workers):
    culprit = damage(synth_copy)
    out = tmp_path / "out"
    # the corrupt image is met within the first epoch (8 iterations), before any checkpoint is due
    opts = tiny_overrides(synth_copy, out, DATALOADER__NUM_WORKERS=workers, SOLVER__MAX_ITER=30,
                          SOLVER__CHECKPOINT_PERIOD=1000)
    line = run_cli_error(capsys, ["train", "--config-file", PRESET, *opts])
    assert culprit in line
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_corrupt_image_after_a_checkpoint_keeps_complete_checkpoints(capsys, synth_copy, tmp_path):
    culprit = _corrupt(synth_copy)
    out = tmp_path / "out"
    opts = tiny_overrides(synth_copy, out, SOLVER__MAX_ITER=30, SOLVER__CHECKPOINT_PERIOD=1)
    assert culprit in run_cli_error(capsys, ["train", "--config-file", PRESET, *opts])
    saved = last_checkpoint(out)
    assert saved is not None and load_checkpoint(saved)["iteration"] >= 1  # resumable once the image is fixed
    assert not list(out.glob(".*.tmp"))


def test_checkpoint_from_another_model_is_refused(capsys, tiny_synth, tmp_path):
    out = tmp_path / "retina"
    assert main(["train", "--config-file", PRESET, *tiny_overrides(tiny_synth, out, SOLVER__MAX_ITER=2)]) == 0
    capsys.readouterr()
    weights = out / "model_final.pth"
    opts = tiny_overrides(tiny_synth, tmp_path / "eval", "faster_rcnn", MODEL__WEIGHTS=weights)
    line = run_cli_error(capsys, ["train", "--config-file", PRESET, "--eval-only", *opts])
    assert str(weights) in line and "does not match" in line
    not_a_checkpoint = tmp_path / "junk.pth"
    not_a_checkpoint.write_bytes(b"junk")
    opts = tiny_overrides(tiny_synth, tmp_path / "eval", MODEL__WEIGHTS=not_a_checkpoint)
    assert "junk.pth" in run_cli_error(capsys, ["train", "--config-file", PRESET, "--eval-only", *opts])


def test_checkpoints_load_with_weights_only(tiny_synth, tmp_path):
    out = tmp_path / "out"
    assert main(["train", "--config-file", PRESET, *tiny_overrides(tiny_synth, out, SOLVER__MAX_ITER=2)]) == 0
    state = torch.load(out / "model_final.pth", weights_only=True)
    assert state["classes"]["category_ids"] == [1, 3, 5, 7, 9, 11]
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("amp", ["bf16", "fp32"])
def test_training_arithmetic_follows_solver_amp(tiny_synth, tmp_path, amp):
    """SOLVER.AMP bf16: the convolutions run in bf16 under autocast while the weights, gradients and loss stay
    FP32; fp32: FP32 throughout. SOLVER.CHANNELS_LAST keeps the 4-D weights NHWC through the step."""
    for arch in ("retinanet", "mask_rcnn"):
        cfg = load_config(PRESET, tiny_overrides(tiny_synth, tmp_path / arch, arch, SOLVER__AMP=amp))
        trainer = Trainer(cfg, config_name=PRESET)
        seen = []
        hook = trainer.model.backbone.body.conv1.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        images, targets = next(iter(trainer.loader()))
        loss, terms = trainer.step(trainer.model.train(), images, targets)
        hook.remove()
        assert seen == [torch.bfloat16 if amp == "bf16" else torch.float32]
        assert torch.isfinite(torch.tensor(loss)) and set(terms) and all(isinstance(v, float) for v in terms.values())
        weights = [p for p in trainer.model.parameters() if p.dim() == 4]
        assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
                   for p in trainer.model.parameters() if p.grad is not None)
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def test_auto_amp_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(BF16_ENV, raising=False)
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if bf16_units() is not None else None)
    # the switch the suite runs both ways with: it overrides the detection, and only SOLVER.AMP auto's
    for forced, dtype in (("1", torch.bfloat16), ("0", None)):
        monkeypatch.setenv(BF16_ENV, forced)
        assert autocast_dtype("auto", cpu) == dtype
        assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
        assert autocast_dtype("auto", cuda) is None
    monkeypatch.setenv(BF16_ENV, "yes")
    with pytest.raises(UserError, match=BF16_ENV):
        autocast_dtype("auto", cpu)


def test_the_loader_worker_count_does_not_change_the_batches(tiny_synth, tmp_path):
    """The synthetic presets load in the training process (DATALOADER.NUM_WORKERS 0) for speed on 2 cores, a GPU
    run gives the loader workers: each sample carries its augmentation seed, so both see the same batches."""
    assert load_config(PRESET).DATALOADER.NUM_WORKERS == 0
    batches = {}
    for workers in (0, 2):
        cfg = load_config(PRESET, tiny_overrides(tiny_synth, tmp_path / str(workers), DATALOADER__NUM_WORKERS=workers))
        loader = Trainer(cfg, config_name=PRESET).loader()
        batches[workers] = [batch for batch, _ in zip(loader, range(4))]  # 4 batches of 2: two workers' turns each
    for (images0, targets0), (images2, targets2) in zip(batches[0], batches[2], strict=True):
        # the same images, sizes and flips; the pixels agree to float rounding (a worker resizes on one thread)
        assert [im.shape for im in images0] == [im.shape for im in images2]
        assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(images0, images2))
        assert all(torch.equal(a[k], b[k]) for a, b in zip(targets0, targets2) for k in a)


def test_training_with_loader_workers_leaves_no_sigchld_handler(tiny_synth, tmp_path, monkeypatch):
    """A DataLoader with worker processes installs a process-wide SIGCHLD handler and never removes it; training
    puts back what was there, so a process that trained does not run Python code on every child's exit after."""
    from conftest import PRESET, quiet
    from torch.utils.data._utils import signal_handling

    from siefpn_deploy.pipeline import TrainOptions, train_detector

    # torch installs its handler once per process: as if no loader had run yet, so this training installs it
    monkeypatch.setattr(signal_handling, "_SIGCHLD_handler_set", False)
    installed, original = [], signal.signal

    def watch(signum, handler):
        if signum == signal.SIGCHLD:
            installed.append(handler)
        return original(signum, handler)

    monkeypatch.setattr(signal, "signal", watch)
    before = signal.getsignal(signal.SIGCHLD)
    opts = tiny_overrides(tiny_synth, tmp_path / "out", DATALOADER__NUM_WORKERS=1, SOLVER__MAX_ITER=2,
                          SOLVER__CHECKPOINT_PERIOD=1000)
    train_detector(TrainOptions(PRESET, overrides=tuple(opts)), log=quiet)
    assert installed and callable(installed[0])  # the loader did install one: the test sees what it claims to undo
    assert signal.getsignal(signal.SIGCHLD) is before
