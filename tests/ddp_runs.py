"""Runs for the DDP tests of tests/test_10_train.py, launched by torchrun with 2 gloo processes on a CPU.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_runs.py TASK ROOT OUT

TASK "skewed": a --max-minutes run in which rank 1's clock runs 3x fast, then a sharded evaluation of
its checkpoint. TASK "resume": a run straight through, and the same run stopped after 3 steps and
resumed. Each rank saves what it ends with (weights and buffers) as OUT/<run>_rank<r>.pt."""
import json
import os
import sys
import time
from pathlib import Path

import torch

from p2s_lib.data import SYNTHETIC_CLASSES
from p2s_lib.transforms import make_transforms
from p2s_lib.model import load_model
from p2s_lib.config import TrainConfig, build_dataset
from p2s_lib.distributed import evaluate_model
from p2s_lib.train import Trainer

task, root, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
rank = int(os.environ["RANK"])


def config(name: str, **overrides) -> TrainConfig:
    return TrainConfig(data_root=root, classes="synthetic", preset="nano", image_size=64, batch_size=2,
                       num_workers=0, eval_images=4, eval_every=100, val_set="val", device="cpu",
                       out=str(out / name), **overrides)


def keep(trainer: Trainer, name: str) -> None:
    torch.save({"state": trainer.model.state_dict(), "step": trainer.step, "lr": trainer.lr,
                "total_steps": trainer.schedule.total_steps}, out / f"{name}_rank{rank}.pt")


if task == "skewed":
    if rank == 1:  # this rank's clock runs 3x fast: left alone, it would stop sooner and re-size its schedule
        real, start = time.perf_counter, time.perf_counter()
        time.perf_counter = lambda: start + 3 * (real() - start)
    trainer = Trainer(config("skewed", max_minutes=0.08))
    trainer.fit()
    keep(trainer, "skewed")
    model, _ = load_model(out / "skewed" / "last.pt")
    data = build_dataset(root, "2007", "train", list(SYNTHETIC_CLASSES), make_transforms(False, model.image_size))
    metrics, preds, _ = evaluate_model(model.eval(), data, batch_size=3, seed=5)
    if rank == 0:
        (out / "sharded_eval.json").write_text(json.dumps(
            {"map_50": metrics["map_50"], "map": metrics["map"],
             "preds": [{k: v.tolist() for k, v in p.items()} for p in preds]}))
elif task == "resume":
    whole = Trainer(config("whole", epochs=2))
    whole.fit()
    keep(whole, "whole")
    Trainer(config("parts", epochs=2, stop_after_steps=3)).fit()
    resumed = Trainer(config("parts", epochs=2), resume=out / "parts" / "last.pt")
    assert resumed.step == 3, resumed.step
    resumed.fit()
    keep(resumed, "resumed")
else:
    raise SystemExit(f"unknown task {task!r}")
