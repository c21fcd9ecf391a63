"""Chapter 10: the training loop, checkpoints, resume, DDP and the command line, on a tiny synthetic set."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings, strategies as st

import p2s_lib.train as train_mod
from p2s_lib.data import SYNTHETIC_CLASSES, VOCDataset
from p2s_lib.transforms import make_transforms
from p2s_lib.model import load_model
import p2s_lib.distributed as distributed_mod
from p2s_lib.config import TrainConfig, resolve_classes, resolve_splits, validate_config
from p2s_lib.pipeline import EpochSampler, SeededTransforms, WarmupLinearDecay
from p2s_lib.train import Trainer, TrainingDiverged


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
        for i in range(len(raw)):
            (a, ta), (b, tb) = cached[epoch, i], plain[epoch, i]
            assert ta["sample"] == (epoch, i)
            assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
    assert raw.reads == len(raw)


def test_epoch_sampler_shards_cover_the_epoch_and_resume_mid_epoch():
    shards = [EpochSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(1)
    a, b = list(shards[0]), list(shards[1])
    assert {e for e, _ in a + b} == {1}  # each index carries its epoch, for loader workers that persist
    a, b = [i for _, i in a], [i for _, i in b]
    assert sorted(a + b) == list(range(10)) and len(a) == len(b) == 5
    shards[0].set_epoch(1, start=2)
    assert [i for _, i in shards[0]] == a[2:]
    shards[0].set_epoch(2)
    assert [i for _, i in shards[0]] != a  # reshuffled every epoch


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
    rows = (tmp_path / "log.csv").read_text().splitlines()
    header, evaluations = rows[0], [dict(zip(rows[0].split(","), r.split(","))) for r in rows[1:]]
    evaluations = [r for r in evaluations if r["map_50"]]
    assert float(evaluations[-1]["map_50"]) == round(result["metrics"]["map_50"], 6)       # the result is the last evaluation
    assert round(result["best_map_50"], 6) == max(float(r["map_50"]) for r in evaluations)
    assert header.startswith("step,epoch,train_minutes,loss,lr")
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries


def test_vflip_transpose_and_color_jitter_reach_the_train_pipeline(synthetic_root, tmp_path):
    from torchvision.transforms import v2
    from p2s_lib.transforms import RandomTranspose
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


def test_nan_loss_stops_at_the_next_log_and_keeps_the_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
    cfg = tiny_config(synthetic_root, tmp_path, log_every=2)
    Trainer(replace(cfg, epochs=1)).fit()
    good = load_model(tmp_path / "last.pt")[1]["step"]
    monkeypatch.setattr(train_mod, "weighted_cross_entropy", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDiverged, match=rf"\(step {good}\), predates it") as info:
        Trainer(cfg, resume=tmp_path / "last.pt").fit()
    assert good < int(str(info.value).split("by step ")[1].split()[0]) <= good + 2  # found at the next log
    model, state = load_model(tmp_path / "last.pt")
    assert state["step"] == good and all(torch.isfinite(p).all() for p in model.parameters())  # not overwritten
    with pytest.raises(TrainingDiverged, match="no checkpoint was written before it"):
        Trainer(tiny_config(synthetic_root, tmp_path / "fresh", log_every=2)).fit()




@settings(max_examples=60, deadline=None)
@given(total=st.integers(30, 600), warmup=st.floats(0.0, 0.2), decay=st.floats(0.05, 1.0),
       final=st.floats(0.0, 0.5), refits=st.lists(st.tuples(st.integers(1, 400), st.integers(1, 2000)), max_size=6))
def test_refits_never_raise_the_lr_once_warmup_is_over(total, warmup, decay, final, refits):
    """Over random budgets and re-fits (when, to which length), the lr never rises after warmup, never leaves
    [final, peak], and a begun decay ends at `final` when the run reaches its (last) length."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupLinearDecay(opt, total_steps=total, warmup_frac=warmup, final_frac=final, decay_frac=decay)
    at = {}
    for gap, length in refits:
        at[sum([gap] + list(at)) if at else gap] = length
    lrs, warm = [], []
    for step in range(max([total, *at, *at.values()]) + 5):
        if step in at:
            sched.resize(step + at[step])
        lrs.append(opt.param_groups[0]["lr"])
        warm.append(sched.decay_from is None and step < sched.warmup_steps())
        sched.step()
    after = warm.index(False) if False in warm else len(lrs)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[after:], lrs[after + 1:]))
    assert all(min(final, 1.0) - 1e-9 <= lr <= 1.0 + 1e-12 for lr in lrs[after:])
    if sched.step_count >= sched.total_steps:
        assert lrs[-1] == pytest.approx(final)


def test_a_refit_in_the_decay_goes_on_from_the_current_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupLinearDecay(opt, total_steps=100, warmup_frac=0.1, final_frac=0.0, decay_frac=0.5)
    for _ in range(75):
        sched.step()
    before = opt.param_groups[0]["lr"]                    # halfway down the decay: 0.5
    sched.resize(200)                                     # the budget turns out longer
    assert opt.param_groups[0]["lr"] == pytest.approx(before) == pytest.approx(0.5)
    sched.step_count = 75 + 125 // 2
    sched.step()
    assert opt.param_groups[0]["lr"] < before             # still falling, towards 0 at step 200
    state = sched.state_dict()
    again = WarmupLinearDecay(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), total_steps=7)
    again.load_state_dict(state)
    assert again.decay_from == sched.decay_from and again.factor(150) == sched.factor(150)


def test_splits_are_found_in_the_data_and_a_missing_pair_is_named(synthetic_root, tmp_path):
    found = resolve_splits(TrainConfig(data_root=str(synthetic_root), epochs=1))
    assert (found.train_set, found.val_set) == ("train", "val") and "found in" in found.source("train_set")
    given = resolve_splits(TrainConfig(data_root=str(synthetic_root), epochs=1, train_set="trainval"))
    assert (given.train_set, given.val_set) == ("trainval", "test")
    bare = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    bare.mkdir(parents=True)
    (bare / "mine.txt").write_text("1\n")
    with pytest.raises(ValueError, match="found no train \\+ val or trainval \\+ test split files \\(found: mine\\)"):
        resolve_splits(TrainConfig(data_root=str(tmp_path), epochs=1))


def test_an_empty_or_too_small_training_set_fails_at_once_naming_its_split_file(synthetic_root, tmp_path):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    main_dir = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    (main_dir / "empty.txt").write_text("\n")
    (main_dir / "three.txt").write_text("".join((main_dir / "train.txt").read_text().splitlines(True)[:3]))
    with pytest.raises(ValueError, match=r"empty\.txt: the training set lists no images"):
        Trainer(tiny_config(root, tmp_path / "a", train_set="empty"))
    with pytest.raises(ValueError, match=r"three\.txt: 3 training images, fewer than one batch \(4 per process"):
        Trainer(tiny_config(root, tmp_path / "b", train_set="three"))
    with pytest.raises(ValueError, match=r"empty\.txt: the validation set lists no images"):
        Trainer(tiny_config(root, tmp_path / "c", val_set="empty"))


def test_spare_slots_size_the_sequence_from_the_data(synthetic_root, tmp_path):
    from p2s_lib.config import most_objects
    trainer = Trainer(tiny_config(synthetic_root, tmp_path, spare_slots=3))
    most = most_objects(VOCDataset(synthetic_root, "2007", "train", classes=SYNTHETIC_CLASSES))
    assert most >= 1 and trainer.model.tokenizer.max_objects == most + 3
    assert "spare_slots" in trainer.cfg.source("max_objects")


def test_the_run_prints_its_settings_and_their_sources(synthetic_root, tmp_path, capsys):
    Trainer(tiny_config(synthetic_root, tmp_path, sources={"lr": "a measurement"}))
    printed = capsys.readouterr().out
    assert printed.startswith("p2s run, no recipe:")
    assert any(line.split()[:2] == ["lr", "0.0003"] and line.endswith("a measurement") for line in printed.splitlines())
    assert "found in" in printed                                          # the train split was found in the data


def test_ctrl_c_saves_last_and_a_finished_run_says_nothing_is_left(synthetic_root, tmp_path, monkeypatch, capsys):
    cfg = tiny_config(synthetic_root, tmp_path, epochs=1)
    trainer = Trainer(cfg)
    real_step, calls = trainer.train_step, []
    def interrupted(*a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*a)
    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_model(tmp_path / "last.pt")[1]["step"] == 2                 # the two finished steps are kept
    Trainer(cfg, resume=tmp_path / "last.pt").fit()                       # goes on to the end of the epoch
    capsys.readouterr()
    result = Trainer(cfg, resume=tmp_path / "last.pt").fit()              # nothing left: ends at once
    assert "nothing left to train: step 5 of 5" in capsys.readouterr().out and result["step"] == 5


def test_a_run_without_epochs_or_minutes_is_refused():
    with pytest.raises(ValueError, match="give --epochs or --max-minutes"):
        validate_config(TrainConfig(data_root="."))
    with pytest.raises(ValueError, match="--data-root is required"):
        validate_config(TrainConfig(epochs=1))


# ---------------------------------------------------------------- DDP: 2 gloo processes on the CPU
def run_ddp(task: str, root: Path, out: Path) -> None:
    script = Path(__file__).with_name("ddp_runs.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           task, str(root), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_ddp_replicas_stay_identical_under_a_skewed_clock_and_a_sharded_eval_equals_one_process(synthetic_root,
                                                                                                 tmp_path):
    """Rank 1's clock runs 3x fast. Rank 0 decides the schedule and both stop together, so both ranks end
    with the same weights and buffers. Then each rank scores half the images, 3 per batch: the same
    detections and AP as one process scoring all 20 images in one batch (per-image sampling seeds)."""
    run_ddp("skewed", synthetic_root, tmp_path)
    ranks = [torch.load(tmp_path / f"skewed_rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] > 0 and ranks[0]["total_steps"] == ranks[1]["total_steps"]
    assert ranks[0]["lr"] == ranks[1]["lr"]
    assert_same_state(ranks[0]["state"], ranks[1]["state"])
    assert any("running_mean" in name for name in ranks[0]["state"])  # BatchNorm statistics included

    sharded = json.loads((tmp_path / "sharded_eval.json").read_text())
    model, _ = load_model(tmp_path / "skewed" / "last.pt")
    data = VOCDataset(synthetic_root, "2007", "train", classes=list(SYNTHETIC_CLASSES),
                      transforms=make_transforms(False, model.image_size))
    metrics, preds, _ = distributed_mod.evaluate_model(model.eval(), data, batch_size=20, seed=5)
    assert len(preds) == len(sharded["preds"]) == 20
    for mine, theirs in zip(preds, sharded["preds"]):  # the same sampled tokens; scores to float rounding
        assert mine["boxes"].tolist() == theirs["boxes"] and mine["labels"].tolist() == theirs["labels"]
        torch.testing.assert_close(mine["scores"], torch.tensor(theirs["scores"]), rtol=1e-5, atol=1e-7)
    assert metrics["map_50"] == pytest.approx(sharded["map_50"], abs=1e-6)
    assert metrics["map"] == pytest.approx(sharded["map"], abs=1e-6)


def test_ddp_resume_under_torchrun_continues_the_same_run(synthetic_root, tmp_path):
    """Stopped after 3 of 10 steps and resumed under torchrun, a run ends where the uninterrupted one does."""
    run_ddp("resume", synthetic_root, tmp_path)
    for r in range(2):
        whole, resumed = (torch.load(tmp_path / f"{run}_rank{r}.pt", weights_only=True) for run in ("whole", "resumed"))
        assert whole["step"] == resumed["step"] == 10
        assert_same_state(whole["state"], resumed["state"])


# ---------------------------------------------------------------- the input pipeline, precision, compile
class WorkerPid(torch.utils.data.Dataset):
    """Wraps a dataset; each target also says which process read it."""
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        image, target = self.dataset[key]
        return image, {**target, "pid": os.getpid()}


def epoch_batches(trainer: Trainer, epoch: int) -> list:
    trainer.sampler.set_epoch(epoch)
    return list(trainer.loader)


def test_batches_are_built_in_persistent_workers_and_do_not_depend_on_them(synthetic_root, tmp_path):
    plain = Trainer(tiny_config(synthetic_root, tmp_path / "a", cache_images=True))
    workers = Trainer(tiny_config(synthetic_root, tmp_path / "b", cache_images=True, num_workers=2))
    assert workers.loader.persistent_workers and workers.loader.collate_fn.__class__.__name__ == "TrainingCollate"
    workers.train_data.dataset = WorkerPid(workers.train_data.dataset)
    pids = []
    for epoch in (0, 1):
        ours, theirs = epoch_batches(plain, epoch), epoch_batches(workers, epoch)
        assert len(ours) == len(theirs) == plain.steps_per_epoch
        for a, b in zip(ours, theirs):  # images, targets, inputs, labels, weights
            assert all(torch.equal(x, y) for x, y in zip(a[2:], b[2:])) and torch.equal(a[0], b[0])
        pids.append({t["pid"] for batch in theirs for t in batch[1]})
    assert pids[0] == pids[1] and os.getpid() not in pids[0]  # the same worker processes (and caches) every epoch


def test_backbone_lr_frac_gives_the_trunk_its_own_groups(synthetic_root, tmp_path):
    trainer = Trainer(tiny_config(synthetic_root, tmp_path, backbone_lr_frac=0.1))
    backbone = {id(p) for p in trainer.model.encoder.backbone.parameters()}
    groups = trainer.optimizer.param_groups
    trunk = [g for g in groups if all(id(p) in backbone for p in g["params"])]
    rest = [g for g in groups if not any(id(p) in backbone for p in g["params"])]
    assert len(trunk) == len(rest) == 2 and len(groups) == 4
    assert {g["weight_decay"] for g in trunk} == {g["weight_decay"] for g in rest} == {0.0, 0.05}
    for _ in range(3):
        assert all(g["lr"] == pytest.approx(0.1 * trainer.lr) for g in trunk)
        trainer.schedule.step()
    assert len(Trainer(tiny_config(synthetic_root, tmp_path / "one")).optimizer.param_groups) == 2


def test_amp_on_a_cpu_trains_under_bf16_autocast(synthetic_root, tmp_path):
    assert Trainer(tiny_config(synthetic_root, tmp_path / "off")).amp_dtype is None  # default: CUDA only
    trainer = Trainer(tiny_config(synthetic_root, tmp_path, amp=True, epochs=1))
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    seen = []
    hook = trainer.model.decoder.layers[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    result = trainer.fit()
    hook.remove()
    assert torch.bfloat16 in seen and result["step"] == 5 and math.isfinite(trainer.history[-2]["loss"])


def test_compile_trains_on_a_cpu(synthetic_root, tmp_path, eager_compile):
    """`compile=True` trains through torch.compile (under conftest's eager backend)."""
    compiled = eager_compile
    result = Trainer(tiny_config(synthetic_root, tmp_path, compile=True, epochs=1)).fit()
    assert compiled and result["step"] == 5 and (tmp_path / "last.pt").exists()
    assert math.isfinite(load_model(tmp_path / "last.pt")[1]["history"][0]["loss"])


@pytest.mark.parametrize("device, backend", [("cuda", "nccl"), ("cpu", "gloo")])
def test_the_process_group_backend_follows_the_device(monkeypatch, device, backend):
    """Under torchrun, --device decides NCCL or gloo (not whether the machine happens to have a GPU)."""
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed_mod.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed_mod.dist, "init_process_group", lambda b: seen.update(backend=b))
    monkeypatch.setattr(distributed_mod.torch.cuda, "set_device", lambda i: seen.update(gpu=i))
    assert distributed_mod.setup_distributed(device) == (0, 1)  # (not initialized: the patched group is a stub)
    assert seen["backend"] == backend and seen.get("gpu") == (1 if device == "cuda" else None)


def test_fp16_steps_go_through_the_grad_scaler(synthetic_root, tmp_path):
    """The path for GPUs without bf16 (fp16 autocast + GradScaler), run on a CPU."""
    trainer = Trainer(tiny_config(synthetic_root, tmp_path, epochs=1))
    trainer.amp_dtype, trainer.scaler = torch.float16, torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer.sampler.set_epoch(0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.train_step(next(iter(trainer.loader)))
    assert torch.isfinite(loss) and trainer.scaler.get_scale() == 1024.0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert trainer.save("last.pt") and load_model(tmp_path / "last.pt")[1]["scaler"]["scale"] == 1024.0


def test_weight_decay_goes_on_matrices_and_embeddings_not_on_vectors():
    from p2s_lib.model import Pix2Seq
    from p2s_lib.train import param_groups
    model = Pix2Seq.from_preset("nano", num_classes=4)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = (set(names[id(p)] for g in param_groups(model, TrainConfig()) if (g["weight_decay"] > 0) == d
                          for p in g["params"]) for d in (True, False))
    assert {"decoder.token_emb.weight", "decoder.pos_emb.weight", "decoder.layers.0.mlp.0.weight"} <= decayed
    assert {"decoder.out_bias", "decoder.norm.weight", "decoder.box_prior_gain", "decoder.layers.0.mlp.0.bias"} <= plain
    assert all(dict(model.named_parameters())[n].ndim >= 2 for n in decayed)
    assert all(dict(model.named_parameters())[n].ndim < 2 for n in plain)
    assert len(decayed) + len(plain) == len(names)
