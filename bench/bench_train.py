"""Chapter 10 benchmarks: training throughput, mAP after a fixed CPU budget, generation speed.

    python bench/bench_train.py --minutes 5 15          # the issue's 5- and 15-minute budgets
    python bench/bench_train.py --minutes 15 --ship notebooks/assets/nano_synthetic.pt
    python bench/bench_train.py --minutes 15 --no-sequence-augmentation --ship notebooks/assets/nano_plain.pt
    torchrun --nproc_per_node=2 bench/bench_train.py --minutes 15 --batch-size 8
                                                        # data-parallel: one process per core

Prints figures; it is not a test. The mAP runs train the `nano` preset on the default synthetic
set (made if missing): they train on its `train` split, evaluate on the held-out `val` split during
training (curve of AP50 against minutes) and report the best checkpoint on the `test` split.
"""
import argparse
import csv
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from p2s_lib.data import make_synthetic_voc
from p2s_lib.inference import generate
from p2s_lib.model import load_model, save_model
from p2s_lib.recipes import make_config
from p2s_lib.config import build_dataset
from p2s_lib.transforms import make_transforms
from p2s_lib.distributed import evaluate_model, setup_distributed
from p2s_lib.train import Trainer


REFINE_WINDOW = 2  # bins: on the shipped checkpoint's val split, 1, 2 and 3 gave AP 0.548, 0.552, 0.552 (0: 0.524)


def throughput(root: Path, out: Path, steps: int = 30, warmup: int = 5, batch_size: int = 8) -> float:
    """Training images/s of `nano` (128 px, real data loading and sequence augmentation), all ranks together."""
    trainer = Trainer(synthetic_config(root, out, epochs=1, max_minutes=None, batch_size=batch_size))
    trainer.sampler.set_epoch(0)
    loader = iter(trainer.loader)
    for i in range(warmup + steps):
        if i == warmup:
            tick = time.perf_counter()
        trainer.train_step(next(loader))
    return steps * batch_size * trainer.world_size / (time.perf_counter() - tick)


def synthetic_config(root: Path, out: Path, **overrides):
    """The cpu recipe on the synthetic set, with its facts: four shape classes, no "up"."""
    return make_config("cpu", given_by="bench", data_root=str(root), classes="synthetic", vflip=0.5, transpose=0.5,
                       out=str(out), **overrides)


def generation_speed(checkpoint: Path, root: Path, batch: int = 32) -> float:
    """Images/s of batched, cached, delayed-EOS generation (full max_objects*5+1 tokens)."""
    model, info = load_model(checkpoint)
    data = build_dataset(root, "2007", "val", info["class_names"], make_transforms(False, model.image_size))
    images = torch.stack([data[i][0] for i in range(batch)])
    generate(model.eval(), images[:2])
    tick = time.perf_counter()
    generate(model, images, generator=torch.Generator().manual_seed(0))
    return batch / (time.perf_counter() - tick)


def budget_run(root: Path, out: Path, minutes: float, **overrides) -> dict:
    """Train `nano` for `minutes` (overrides that are None keep the cpu recipe's value),
    then score the best checkpoint on the test split three ways: as the paper decodes; with sub-bin
    coordinates (`refine_window`); and with those plus every class of each object as its own
    detection (`labels_per_object`). Chapter 08 explains both."""
    cfg = synthetic_config(root, out, max_minutes=minutes, **{k: v for k, v in overrides.items() if v is not None})
    steps = Trainer(cfg).fit()["step"]
    if dist.is_initialized():
        dist.barrier()  # rank 0 has written best.pt; every rank scores its shard of the test split
    model, info = load_model(out / "best.pt")
    test = build_dataset(root, "2007", "test", info["class_names"], make_transforms(False, model.image_size))
    metrics, _, _ = evaluate_model(model.eval(), test, delayed_eos=cfg.delayed_eos)
    refined, _, _ = evaluate_model(model, test, refine_window=REFINE_WINDOW, delayed_eos=cfg.delayed_eos)
    every_label, _, _ = evaluate_model(model, test, refine_window=REFINE_WINDOW, delayed_eos=cfg.delayed_eos,
                                       labels_per_object=model.tokenizer.num_classes)
    with (out / "log.csv").open() as f:
        curve = [(round(float(r["train_minutes"]), 2), round(float(r["map_50"]), 3), round(float(r["map"]), 3))
                 for r in csv.DictReader(f) if r["map_50"]]
    return {"minutes": minutes, "test_map_50": round(metrics["map_50"], 4), "test_map": round(metrics["map"], 4),
            "test_map_50_refined": round(refined["map_50"], 4), "test_map_refined": round(refined["map"], 4),
            "test_map_50_refined_every_label": round(every_label["map_50"], 4),
            "test_map_refined_every_label": round(every_label["map"], 4),
            "curve_train_minutes_map50_map": curve, "steps": steps, "lr": cfg.lr, "decay_frac": cfg.decay_frac,
            "final_lr_frac": cfg.final_lr_frac, "dropout": cfg.dropout, "order": cfg.order,
            "batch_size": cfg.batch_size, "seed": cfg.seed, "sequence_augmentation": cfg.sequence_augmentation,
            "delayed_eos": cfg.delayed_eos, "hflip": cfg.hflip, "vflip": cfg.vflip, "transpose": cfg.transpose}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--minutes", type=float, nargs="*", default=[5, 15])
    parser.add_argument("--ship", default=None, help="also save the longest run's best model (fp16) here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 lets two runs share 2 cores)")
    parser.add_argument("--lr", type=float, default=None,
                        help="default: the cpu recipe's, 8e-4 x sqrt(global batch / 8) "
                             "(1.13e-3 for 2 processes x batch 8)")
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--order", default=None)
    parser.add_argument("--batch-size", type=int, default=8, help="per process (under torchrun: per rank)")
    parser.add_argument("--seed", type=int, default=0, help="the training run's seed (one run per seed)")
    parser.add_argument("--sequence-augmentation", action=argparse.BooleanOptionalAction, default=True,
                        help="--no-sequence-augmentation: plain sequences, and decoding that stops at EOS "
                             "(the baseline of chapters 07 and 08)")
    args = parser.parse_args()
    rank, world_size = setup_distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    say = print if rank == 0 else (lambda *a, **k: None)
    root, out = Path(args.data_root), Path(args.out)
    if not (root / "VOCdevkit").exists():
        make_synthetic_voc(root, seed=0)
    speed = throughput(root, out / "throughput", batch_size=args.batch_size)
    say(json.dumps({"nano_train_images_per_s_cpu": round(speed, 1), "threads": torch.get_num_threads(),
                    "processes": world_size, "batch_size_per_process": args.batch_size}))
    for minutes in args.minutes:
        run_dir = out / f"nano_{minutes:g}min"
        result = budget_run(root, run_dir, minutes, lr=args.lr, dropout=args.dropout, order=args.order,
                            batch_size=args.batch_size, seed=args.seed,
                            sequence_augmentation=None if args.sequence_augmentation else False,
                            delayed_eos=None if args.sequence_augmentation else False)
        say(json.dumps(result), flush=True)
        last = run_dir
    if rank != 0:
        dist.destroy_process_group()
        return
    print(json.dumps({"generation_images_per_s_batch32_cached": round(generation_speed(last / "best.pt", root), 1)}))
    if args.ship:
        model, info = load_model(last / "best.pt")
        threads = torch.get_num_threads()
        note = (f"nano preset, trained {max(args.minutes):g} CPU minutes by bench/bench_train.py (lr {result['lr']:.3g} "
                f"held until the last {result['decay_frac']:.0%} of the budget, then decayed to {result['final_lr_frac']:.0%}, "
                f"dropout {model.config['decoder']['dropout']:g}, order {result['order']}, "
                f"{'sequence augmentation' if result['sequence_augmentation'] else 'no sequence augmentation (plain sequences, evaluated stopping at EOS)'}, flips h/v "
                f"{result['hflip']:g}/{result['vflip']:g} and transpose {result['transpose']:g}, "
                f"{model.tokenizer.max_objects} objects per sequence, {world_size} process"
                f"{'es' if world_size > 1 else ''} x batch {result['batch_size']} x {threads} "
                f"thread{'s' if threads > 1 else ''}) on the train split of "
                "the default synthetic set "
                "(make_synthetic_voc(seed=0)); best val AP50 checkpoint, stored in fp16")
        save_model(model, args.ship, half=True, class_names=info["class_names"], note=note,
                   metrics={k: v for k, v in info.get("metrics", {}).items() if isinstance(v, float)})
        print("shipped", args.ship, Path(args.ship).stat().st_size // 1024, "KiB")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
