"""Chapter 10: the training loop, checkpoints, resume, DDP and the command line, on a tiny synthetic set."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

import p2s_lib.train as train_mod
from p2s_lib.data import SYNTHETIC_CLASSES, VOCDataset, make_transforms
from p2s_lib.model import load_model
from p2s_lib.train import (EpochSampler, SeededTransforms, TrainConfig, Trainer, TrainingDiverged, WarmupLinearDecay,
                           main, resolve_classes, synthetic_budget_config, validate_config)


def tiny_config(root: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(data_root=str(root), classes="synthetic", preset="nano", image_size=64, epochs=2,
                    batch_size=4, num_workers=0, eval_images=4, eval_every=100, val_set="val", out=str(out))
    return TrainConfig(**{**settings, **overrides})


def test_schedule_warms_up_then_decays_to_final_fraction():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupLinearDecay(opt, total_steps=100, warmup_frac=0.1, final_frac=0.05)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def lr_curve(total: int, **kwargs) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupLinearDecay(opt, total_steps=total, **kwargs)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    return lrs


@settings(max_examples=40, deadline=None)
@given(total=st.integers(20, 400), warmup=st.floats(0.0, 0.2), decay=st.floats(0.05, 1.0), final=st.floats(0.0, 0.5))
def test_schedule_holds_the_peak_then_decays_over_the_last_decay_frac(total, warmup, decay, final):
    lrs = lr_curve(total, warmup_frac=warmup, final_frac=final, decay_frac=decay)
    n_warm = max(1, round(warmup * total))
    start = max(n_warm, round((1 - decay) * total))
    assert all(lr == 1.0 for lr in lrs[n_warm:start])                  # the stable phase holds the peak
    assert all(a >= b - 1e-12 for a, b in zip(lrs[n_warm:], lrs[n_warm + 1:]))  # never rises after warmup
    assert all(final - 1e-9 <= lr <= 1.0 for lr in lrs[n_warm:])


def test_schedule_decay_frac_one_is_the_plain_linear_decay_and_bad_values_are_rejected():
    plain = lr_curve(100, warmup_frac=0.1, final_frac=0.05)
    assert lr_curve(100, warmup_frac=0.1, final_frac=0.05, decay_frac=1.0) == plain
    wsd = lr_curve(100, warmup_frac=0.1, final_frac=0.05, decay_frac=0.3)
    assert wsd[:10] == plain[:10] and wsd[10:70] == [1.0] * 60 and wsd[69] > wsd[80] > wsd[99]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="decay_frac must be in"):
            WarmupLinearDecay(opt, total_steps=10, decay_frac=bad)


class CountingDataset(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset, self.reads = dataset, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.reads += 1
        return self.dataset[i]


def test_cached_seeded_transforms_read_each_image_once_and_give_the_same_samples(synthetic_root):
    tf = make_transforms(True, 64, scale_range=(0.5, 1.5), vflip=0.5, transpose=0.5)
    raw = CountingDataset(VOCDataset(synthetic_root, "2007", "train", classes=list(SYNTHETIC_CLASSES)))
    cached, plain = SeededTransforms(raw, tf, seed=3, cache=True), SeededTransforms(raw.dataset, tf, seed=3)
    for epoch in range(3):  # later epochs transform the cached decode again: it must be left as read
        cached.epoch = plain.epoch = epoch
        for i in range(len(raw)):
            (a, ta), (b, tb) = cached[i], plain[i]
            assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    assert raw.reads == len(raw)


def test_epoch_sampler_shards_cover_the_epoch_and_resume_mid_epoch():
    shards = [EpochSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(1)
    a, b = list(shards[0]), list(shards[1])
    assert sorted(a + b) == list(range(10)) and len(a) == len(b) == 5
    shards[0].set_epoch(1, start=2)
    assert list(shards[0]) == a[2:]
    shards[0].set_epoch(2)
    assert list(shards[0]) != a  # reshuffled every epoch


def test_resolve_classes():
    assert len(resolve_classes("voc", ".", "2007", "trainval")) == 20
    assert resolve_classes("cat, dog", ".", "2007", "trainval") == ["cat", "dog"]
    with pytest.raises(ValueError, match="unique"):
        resolve_classes("cat,cat", ".", "2007", "trainval")


@pytest.mark.parametrize("extra", [{}, {"decay_frac": 0.5, "cache_images": True}], ids=["plain", "wsd_cached"])
def test_resume_equals_uninterrupted_run(synthetic_root, tmp_path, extra):
    Trainer(tiny_config(synthetic_root, tmp_path / "full", **extra)).fit()
    Trainer(tiny_config(synthetic_root, tmp_path / "cut", stop_after_steps=3, **extra)).fit()
    cut, _ = load_model(tmp_path / "cut" / "last.pt")
    assert _["step"] == 3
    Trainer(tiny_config(synthetic_root, tmp_path / "cut", **extra), resume=tmp_path / "cut" / "last.pt").fit()
    full, full_state = load_model(tmp_path / "full" / "last.pt")
    resumed, resumed_state = load_model(tmp_path / "cut" / "last.pt")
    assert full_state["step"] == resumed_state["step"] > 3
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoints_log_and_plot_are_written(synthetic_root, tmp_path):
    result = Trainer(tiny_config(synthetic_root, tmp_path, epochs=1)).fit()
    assert {"last.pt", "best.pt", "log.csv", "curves.png"} <= {p.name for p in tmp_path.iterdir()}
    assert 0.0 <= result["metrics"]["map_50"] <= 1.0
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    assert header.startswith("step,epoch,train_minutes,loss,lr")
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries


def test_vflip_transpose_and_color_jitter_reach_the_train_pipeline(synthetic_root, tmp_path):
    from torchvision.transforms import v2
    from p2s_lib.data import RandomTranspose
    cfg = tiny_config(synthetic_root, tmp_path, vflip=0.25, transpose=0.75, color_jitter=0.2)
    steps = Trainer(cfg).train_data.transforms.pipeline.transforms
    flips = {type(t): t.p for t in steps if isinstance(t, (v2.RandomVerticalFlip, RandomTranspose))}
    assert flips == {v2.RandomVerticalFlip: 0.25, RandomTranspose: 0.75}
    jitter = [t for t in steps if isinstance(t, v2.ColorJitter)]
    assert len(jitter) == 1 and jitter[0].brightness == (0.8, 1.2)
    plain = Trainer(tiny_config(synthetic_root, tmp_path)).train_data.transforms.pipeline.transforms
    assert not any(isinstance(t, (v2.RandomVerticalFlip, RandomTranspose, v2.ColorJitter)) for t in plain)  # off by default


def test_the_python_api_gets_the_command_lines_checks(synthetic_root, tmp_path):
    with pytest.raises(ValueError, match="--transpose is a probability, got 1.5"):
        Trainer(tiny_config(synthetic_root, tmp_path, transpose=1.5))
    with pytest.raises(ValueError, match="--refine-window must be >= 0 bins, got -1"):
        Trainer(tiny_config(synthetic_root, tmp_path, refine_window=-1))


def test_nan_loss_stops_with_clear_message_after_saving(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "weighted_cross_entropy", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDiverged, match="loss is nan at step 0"):
        Trainer(tiny_config(synthetic_root, tmp_path)).fit()
    assert (tmp_path / "last.pt").exists()


def test_cli_train_evaluate_predict(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(synthetic_root), "--classes", "infer", "--preset", "nano",
                 "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
                 "--eval-images", "4", "--val-set", "val", "--max-objects", "7", "--out", str(out)]) == 0
    assert load_model(out / "best.pt")[0].tokenizer.max_objects == 7       # --max-objects overrides the preset
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(synthetic_root),
                 "--image-set", "test", "--max-images", "4", "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed[printed.rindex("{\n"):])
    assert {"map", "map_50", "voc_map_50"} <= set(metrics)
    coco = json.loads((tmp_path / "eval" / "predictions_coco.json").read_text())
    assert isinstance(coco, list)
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(synthetic_root),
                 "--image-set", "test", "--max-images", "4", "--labels-per-object", "2", "--refine-window", "0",
                 "--out", str(tmp_path / "eval2")]) == 0                  # same draws, two labels per object
    coco2 = json.loads((tmp_path / "eval2" / "predictions_coco.json").read_text())
    assert len(coco2) == 2 * len(coco)
    assert {json.dumps(d, sort_keys=True) for d in coco} <= {json.dumps(d, sort_keys=True) for d in coco2}
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(synthetic_root),
                 "--image-set", "test", "--max-images", "4", "--refine-window", "2",
                 "--out", str(tmp_path / "eval3")]) == 0                  # same draws, sub-bin coordinates
    coco3 = json.loads((tmp_path / "eval3" / "predictions_coco.json").read_text())
    assert len(coco3) >= len(coco) and all(0 <= d["score"] <= 1 for d in coco3)
    assert [d["bbox"] for d in coco3] != [d["bbox"] for d in coco]       # the edges moved below the bin size
    images = synthetic_root / "VOCdevkit" / "VOC2007" / "JPEGImages"
    first = sorted(images.iterdir())[0]
    assert main(["predict", "--checkpoint", str(out / "best.pt"), str(first), "--out", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / f"{first.stem}.png").exists()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["image"] == str(first) and isinstance(line["detections"], list)


def test_bad_arguments_and_corrupt_checkpoint_give_clear_errors(synthetic_root, tmp_path, capsys):
    assert main(["train", "--data-root", str(synthetic_root), "--preset", "huge"]) == 2
    assert "--preset must be one of" in capsys.readouterr().err
    assert main(["train", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "download_voc.py" in capsys.readouterr().err
    assert main(["train", "--data-root", str(synthetic_root), "--max-objects", "0"]) == 2
    assert "--max-objects must be >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--data-root", str(synthetic_root), "--transpose", "1.5"]) == 2
    assert "--transpose is a probability, got 1.5" in capsys.readouterr().err
    for k in ("0", "5"):                                                # the synthetic set has 4 classes
        assert main(["train", "--data-root", str(synthetic_root), "--classes", "synthetic",
                     "--labels-per-object", k]) == 2
        assert f"--labels-per-object must be in [1, 4] (the classes), got {k}" in capsys.readouterr().err
    assert main(["train", "--data-root", str(synthetic_root), "--refine-window", "-1"]) == 2
    assert "--refine-window must be >= 0 bins, got -1" in capsys.readouterr().err
    assert main(["train", "--data-root", str(synthetic_root), "--decay-frac", "0"]) == 2
    assert "--decay-frac must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert main(["train", "--data-root", str(synthetic_root), "--color-jitter", "-0.1"]) == 2
    assert "--color-jitter must be >= 0, got -0.1" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(bad), "--data-root", str(synthetic_root)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(bad), str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "three"])
    assert main(["train", "--data-root", str(synthetic_root), "--resume", str(tmp_path / "missing.pt")]) == 2


def test_ddp_two_processes_on_cpu(synthetic_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "p2s_lib",
           "train", "--data-root", str(synthetic_root), "--classes", "synthetic", "--preset", "nano",
           "--image-size", "64", "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
           "--eval-images", "6", "--val-set", "val", "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "last.pt").exists() and (out / "log.csv").exists()
    assert done.stdout.count('"metrics"') == 1  # only rank 0 reports


def test_demo_trains_scores_and_draws(synthetic_root, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--minutes", "0.1", "--data-root", str(synthetic_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.rindex("{\n"):])
    assert 0.0 <= summary["test_map_50"] <= 1.0
    assert (out / "predictions.png").stat().st_size > 0 and (out / "curves.png").exists()


def test_synthetic_budget_config_holds_val_out_and_skips_scale_jitter(tmp_path):
    cfg = synthetic_budget_config(tmp_path, 5, tmp_path / "out", seed=3, scale_max=1.5)
    assert (cfg.train_set, cfg.val_set, cfg.classes, cfg.preset) == ("train", "val", "synthetic", "nano")
    assert cfg.max_minutes == 5 and cfg.scale_min == 1.0 and cfg.scale_max == 1.5 and cfg.seed == 3
    assert cfg.lr == 8e-4 and cfg.max_objects == 8          # the CPU recipe's departures from TrainConfig's defaults
    assert (cfg.hflip, cfg.vflip, cfg.transpose) == (0.5, 0.5, 0.5)   # all 8 symmetries: the shapes have no "up"
    assert TrainConfig().vflip == 0.0 and TrainConfig().transpose == 0.0   # off for photos
    assert (cfg.decay_frac, cfg.final_lr_frac, cfg.cache_images) == (0.35, 0.02, True)  # WSD, images in RAM
    assert (TrainConfig().decay_frac, TrainConfig().cache_images) == (1.0, False)
    validate_config(cfg)


def test_synthetic_budget_lr_follows_the_global_batch(tmp_path, monkeypatch):
    """8e-4 at a global batch of 8, times sqrt(global batch / 8); torchrun's WORLD_SIZE counts; --lr wins."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert math.isclose(synthetic_budget_config(tmp_path, 5, tmp_path).lr, 8e-4 * math.sqrt(2))
    assert math.isclose(synthetic_budget_config(tmp_path, 5, tmp_path, batch_size=16).lr, 1.6e-3)
    assert synthetic_budget_config(tmp_path, 5, tmp_path, lr=5e-4).lr == 5e-4
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert math.isclose(synthetic_budget_config(tmp_path, 5, tmp_path, batch_size=2).lr, 4e-4)


def test_demo_under_torchrun_reports_once(synthetic_root, tmp_path):
    out = tmp_path / "demo_ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "p2s_lib",
           "demo", "--minutes", "0.1", "--data-root", str(synthetic_root), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"test_map_50"') == 1                   # rank 0 alone reports
    summary = json.loads(done.stdout[done.stdout.rindex("{\n"):])
    assert 0.0 <= summary["test_map_50"] <= 1.0 and (out / "predictions.png").stat().st_size > 0
