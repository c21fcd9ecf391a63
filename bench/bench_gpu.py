"""GPU benchmark of the r50 path: one script, at most about 8 minutes on one GPU.

    python bench/bench_gpu.py                  # on a CUDA machine; figures go on RESULTS.md
    python bench/bench_gpu.py --smoke          # every section at toy sizes on a CPU (tests/test_bench_gpu.py)

Prints one line per figure (and, with --json FILE, all of them as JSON). It is not a test. Models are
untrained and built with pretrained=False: the machine needs no network and no weights file.

1. r50 training images/s (forward, weighted loss, backward, fused AdamW) at 384 and 640 px under
   autocast (bf16), eager and compiled, with full-length sequences (100 objects, 501 input tokens);
   FLOPs per step counted with torch.utils.flop_counter, MFU against the GPU's peak, peak memory.
2. Batched, cached generation (100 objects = 501 steps) images/s, eager and compiled.
3. A 2-minute Trainer run at 640 px on a synthetic set: the loss must fall.
4. The same command line under `torchrun --nproc_per_node=1`: it must finish.
They run in that order at 640 px, then 384 px training and compiled generation; a section that would
overrun the budget is skipped, and says so.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from p2s_lib.augment import build_batch
from p2s_lib.data import make_synthetic_voc
from p2s_lib.inference import amp_dtype, generate
from p2s_lib.loss import weighted_cross_entropy
from p2s_lib.model import Pix2Seq
from p2s_lib.recipes import make_config
from p2s_lib.train import Trainer

PEAK_BF16_TFLOPS = {"H200": 989, "H100 PCIe": 756, "H100": 989, "A100": 312, "L40S": 362, "L4": 121, "A10": 125}
FULL = dict(preset="r50", sizes=(384, 640), batch=32, objects=None, steps=10, warmup=3, gen_batch=32,
            data_images=512, run_minutes=2.0, torchrun_minutes=0.5)
SMOKE = dict(preset="r50", sizes=(64,), batch=2, objects=4, steps=1, warmup=1, gen_batch=2,
             data_images=24, run_minutes=0.1, torchrun_minutes=None)


class Budget:
    """Wall-clock budget: a section runs only if its estimated cost still fits."""
    def __init__(self, minutes: float):
        self.end = time.perf_counter() + minutes * 60

    def allows(self, name: str, seconds: float) -> bool:
        left = self.end - time.perf_counter()
        if seconds > left:
            print(f"{name}: skipped, needs about {seconds:.0f} s, {left:.0f} s of the budget left")
        return seconds <= left


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def model_and_batch(preset: str, size: int, batch: int, objects: int | None, device: torch.device):
    """An untrained model and one training batch of full-length sequences (random boxes, augmented)."""
    torch.manual_seed(0)
    extra = {} if objects is None else {"max_objects": objects}
    model = Pix2Seq.from_preset(preset, num_classes=20, image_size=size, pretrained=False, **extra)
    model = model.to(device, memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
        xy = torch.rand(8, 2, generator=g) * 0.7
        wh = 0.05 + torch.rand(8, 2, generator=g) * 0.25
        targets.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=1)], 1), "labels": torch.randint(0, 20, (8,), generator=g)})
    inputs, labels, weights = (t.to(device) for t in build_batch(targets, model.tokenizer, generator=g))
    images = torch.rand(batch, 3, size, size, generator=g).to(device, memory_format=torch.channels_last)
    return model, (images, inputs, labels, weights)


def train_speed(preset: str, size: int, batch: int, objects, steps: int, warmup: int, device: torch.device,
                compiled: bool, backend: str, peak: float | None) -> dict:
    """Training images/s, FLOPs per step, MFU and peak memory for one (size, eager/compiled)."""
    model, (images, inputs, labels, weights) = model_and_batch(preset, size, batch, objects, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = torch.compile(model, backend=backend) if compiled else model
    dtype = amp_dtype(device, True)

    def step():
        with torch.autocast(device.type, dtype=dtype):
            logits = forward(images, inputs)
        loss = weighted_cross_entropy(logits.float(), labels, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    tick = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    first = time.perf_counter() - tick
    with FlopCounterMode(display=False) as counter:  # one eager-counted step (compiled code counts the same ops)
        with torch.autocast(device.type, dtype=dtype):
            logits = model(images, inputs)
        weighted_cross_entropy(logits.float(), labels, weights).backward()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tick = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - tick) / steps
    mfu = flops / seconds / (peak * 1e12) if peak else None
    memory = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"images_per_s": batch / seconds, "tflop_per_step": flops / 1e12, "mfu": mfu, "peak_memory_gib": memory,
            "warmup_s": first}


def generation_speed(preset: str, size: int, batch: int, objects, device: torch.device, compiled: bool) -> dict:
    """Cached, batched generation of the preset's full length, images/s (one timed batch after a warm one)."""
    model, (images, *_) = model_and_batch(preset, size, batch, objects, device)
    model.eval()
    seeds = torch.arange(batch)
    tick = time.perf_counter()
    generate(model, images, seeds=seeds, compile=compiled)
    sync(device)
    first = time.perf_counter() - tick
    tick = time.perf_counter()
    out = generate(model, images, seeds=seeds, compile=compiled)
    sync(device)
    return {"images_per_s": batch / (time.perf_counter() - tick), "steps": out["tokens"].shape[1], "warmup_s": first}


def short_run(root: Path, out: Path, size: int, batch: int, objects, minutes: float, device: str) -> dict:
    """A Trainer run on a time budget (the paper recipe, no ImageNet weights): first and last logged loss."""
    given = dict(data_root=str(root), classes="synthetic", preset="r50", pretrained=False, image_size=size,
                 batch_size=batch, max_minutes=minutes, num_workers=min(8, os.cpu_count() or 1), cache_images=True,
                 eval_images=batch, eval_every=1000, val_set="val", out=str(out), device=device, log_every=5)
    if objects is not None:
        given["max_objects"] = objects
    trainer = Trainer(make_config("paper", world_size=1, **given))
    result = trainer.fit()
    losses = [r["loss"] for r in trainer.history if r.get("loss") is not None]
    return {"steps": result["step"], "first_loss": losses[0], "last_loss": losses[-1],
            "loss_fell": losses[-1] < losses[0], "map_50": result["metrics"].get("map_50")}


def torchrun_run(root: Path, out: Path, size: int, batch: int, minutes: float | None, smoke: bool) -> dict:
    """`p2s train` under torchrun with one process; returns its exit code and seconds."""
    length = ["--epochs", "1"] if minutes is None else ["--max-minutes", str(minutes)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "p2s_lib",
           "train", "--data-root", str(root), "--classes", "synthetic", "--preset", "nano" if smoke else "r50",
           "--no-pretrained", "--image-size", str(size), "--batch-size", str(batch), "--eval-images", str(batch),
           "--val-set", "val", "--out", str(out), *length]
    tick = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
    return {"exit_code": done.returncode, "seconds": time.perf_counter() - tick}


def count_flops(preset: str = "r50", sizes=(384, 640)) -> dict:
    """FLOPs of one training image (forward + backward, full-length sequence), counted on the CPU."""
    figures = {}
    for size in sizes:
        model, (images, inputs, labels, weights) = model_and_batch(preset, size, 1, None, torch.device("cpu"))
        with FlopCounterMode(display=False) as counter:
            logits = model(images, inputs)
            forward = counter.get_total_flops()
            weighted_cross_entropy(logits.float(), labels, weights).backward()
        figures[f"{preset} {size}px"] = {"forward_gflop": forward / 1e9, "train_gflop": counter.get_total_flops() / 1e9}
        print(f"{preset} {size}px, one image, {inputs.shape[1]} input tokens: forward {forward / 1e9:.1f} GFLOP, "
              f"forward + backward {counter.get_total_flops() / 1e9:.1f} GFLOP")
    return figures


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks every section runs")
    p.add_argument("--budget-minutes", type=float, default=8.0)
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: by name)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    p.add_argument("--flops-only", action="store_true", help="count r50's FLOPs per training image (any device) and stop")
    args = p.parse_args(argv)
    if args.flops_only:
        return count_flops()
    plan = SMOKE if args.smoke else FULL
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench_gpu.py needs a CUDA GPU; use --smoke to check it on a CPU")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    backend = "eager" if args.smoke else "inductor"  # the smoke run checks the compiled path, not inductor's speed
    peak, budget, figures = peak_tflops(device, args.peak_tflops), Budget(args.budget_minutes), {}
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"autocast {amp_dtype(device, True)}, peak {peak} TFLOPS")

    def record(name: str, values: dict) -> None:
        figures[name] = values
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        print(f"{name}: {shown}", flush=True)

    def train(size: int, compiled: bool) -> None:
        name = f"train {plan['preset']} {size}px {'compiled' if compiled else 'eager'}"
        if budget.allows(name, 120 if compiled and not args.smoke else 30):
            record(name, train_speed(plan["preset"], size, plan["batch"], plan["objects"], plan["steps"],
                                     plan["warmup"], device, compiled, backend, peak))

    def generation(size: int, compiled: bool) -> None:
        name = f"generate {plan['preset']} {size}px {'compiled' if compiled else 'eager'}"
        if budget.allows(name, 90 if compiled else 45):
            record(name, generation_speed(plan["preset"], size, plan["gen_batch"], plan["objects"], device, compiled))

    size = plan["sizes"][-1]  # the paper's 640 px first; 384 px and compiled generation as the budget allows
    train(size, False)
    train(size, True)
    generation(size, False)
    with tempfile.TemporaryDirectory() as work:
        root = make_synthetic_voc(Path(work) / "data", year="2007", num_images=plan["data_images"],
                                  image_size=max(96, size), seed=0)
        if budget.allows("short run", plan["run_minutes"] * 60 + 60):
            record(f"{plan['run_minutes']}-minute run {size}px", short_run(
                root, Path(work) / "run", size, plan["batch"], plan["objects"], plan["run_minutes"], device.type))
        if budget.allows("torchrun", 90 if not args.smoke else 60):
            record("torchrun, 1 process", torchrun_run(root, Path(work) / "ddp", size, plan["batch"],
                                                        plan["torchrun_minutes"], args.smoke))
    for other in plan["sizes"][:-1]:
        train(other, False)
        train(other, True)
    if not args.smoke:  # compiled generation is checked on a CPU by tests/test_08_inference.py
        generation(size, True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
