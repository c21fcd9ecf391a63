"""Does the model look at the image? A learning-diagnosis probe for the `nano` preset.

    python bench/bench_grounding.py --minutes 6                  # the full sequence task
    python bench/bench_grounding.py --minutes 4 --class-only     # only "which class is in this given box?"
    python bench/bench_grounding.py --minutes 5 --oracle         # images replaced by flat coloured boxes

Trains `nano` on the synthetic set held in memory (no data-loading cost), then every
`--every` minutes prints the validation cross-entropy per kind of target token, once with
the real images and once with blank grey ones:

- real coordinates (chance: ln 64 = 4.16 nats),
- real classes, given the true box in the teacher-forced input (chance: ln 4 = 1.39),
- noise classes.

A model that grounds in the image must beat the blank-image loss on real coordinates and
real classes, by a growing margin. `--oracle` swaps every image for its boxes painted in
one flat colour per class on black: if the model still does not localize, the bottleneck is
the decoder, not the CNN's features. It ends with AP50/AP by real decoding on 100 val images.
Prints figures; it is not a test. Run two probes side by side with `--threads 1`.
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from p2s_lib.augment import build_batch
from p2s_lib.data import SYNTHETIC_CLASSES, make_synthetic_voc
from p2s_lib.transforms import make_transforms
from p2s_lib.loss import weighted_cross_entropy
from p2s_lib.model import Pix2Seq
from p2s_lib.config import build_dataset
from p2s_lib.distributed import evaluate_model


def load_split(root: Path, split: str) -> tuple[torch.Tensor, list[dict]]:
    """A whole split as eval-transformed images [N,3,S,S] and targets (normalized boxes)."""
    data = build_dataset(root, "2007", split, list(SYNTHETIC_CLASSES), make_transforms(False, 128))
    samples = [data[i] for i in range(len(data))]
    return (torch.stack([im for im, _ in samples]),
            [{"boxes": t["boxes"], "labels": t["labels"]} for _, t in samples])


CLASS_COLOURS = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])


def oracle_images(images: torch.Tensor, targets: list[dict]) -> torch.Tensor:
    """The easiest possible images: each box filled with its class's colour on black."""
    size = images.shape[-1]
    out = torch.zeros_like(images)
    for image, t in zip(out, targets):
        for box, label in zip(t["boxes"], t["labels"]):
            x0, y0, x1, y1 = (box * size).round().long().tolist()
            image[:, y0:y1, x0:x1] = CLASS_COLOURS[int(label) % len(CLASS_COLOURS), :, None, None]
    return out


def flip_batch(images: torch.Tensor, targets: list[dict], g: torch.Generator):
    """Horizontal flip of half the batch, boxes included."""
    flip = torch.rand(len(targets), generator=g) < 0.5
    out = []
    for t, f in zip(targets, flip.tolist()):
        boxes = t["boxes"].clone()
        if f:
            boxes[:, [0, 2]] = 1 - boxes[:, [2, 0]]
        out.append({"boxes": boxes, "labels": t["labels"]})
    return torch.where(flip[:, None, None, None], images.flip(-1), images), out


@torch.no_grad()
def token_losses(model: Pix2Seq, images: torch.Tensor, targets: list[dict]) -> dict:
    """Mean CE per kind of target token, with the real images and with blank ones."""
    tok = model.tokenizer
    inp, tgt, w = build_batch(targets, tok, generator=torch.Generator().manual_seed(1))
    kinds = {"real_coord": tok.is_coord(tgt) & (w > 0),
             "real_class": tok.is_class(tgt) & (tgt != tok.noise_class_id),
             "noise_class": tgt == tok.noise_class_id}
    model.eval()
    out = {}
    for name, ims in (("image", images), ("blank", torch.full_like(images, 0.5))):
        ce = F.cross_entropy(model(ims, inp).transpose(1, 2), tgt, reduction="none")
        out[name] = {k: round(ce[m].mean().item(), 3) for k, m in kinds.items()}
    model.train()
    return out


def lr_at(frac: float, peak: float, warmup: float = 0.05, final: float = 0.05) -> float:
    """Linear warmup, then cosine decay to `final` x peak at the end of the budget."""
    if frac < warmup:
        return peak * frac / warmup
    t = min(1.0, (frac - warmup) / (1 - warmup))
    return peak * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--minutes", type=float, default=6)
    parser.add_argument("--every", type=float, default=2.0, help="minutes between probes")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--class-only", action="store_true", help="train only on real class tokens, no noise")
    parser.add_argument("--oracle", action="store_true", help="replace images by flat coloured boxes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    if not (root / "VOCdevkit").exists():
        make_synthetic_voc(root, seed=0)
    images, targets = load_split(root, "train")
    val_images, val_targets = load_split(root, "val")
    if args.oracle:
        images, val_images = oracle_images(images, targets), oracle_images(val_images, val_targets)
    torch.manual_seed(args.seed)
    model = Pix2Seq.from_preset("nano", len(SYNTHETIC_CLASSES))
    tok = model.tokenizer
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    g = torch.Generator().manual_seed(args.seed)
    start, step, next_probe = time.perf_counter(), 0, args.every * 60
    model.train()
    while (elapsed := time.perf_counter() - start) < args.minutes * 60:
        for group in opt.param_groups:
            group["lr"] = lr_at(elapsed / (args.minutes * 60), args.lr)
        idx = torch.randint(0, len(targets), (args.batch_size,), generator=g)
        ims, tgts = flip_batch(images[idx], [targets[i] for i in idx.tolist()], g)
        inp, tgt, w = build_batch(tgts, tok, augment=not args.class_only, generator=g)
        if args.class_only:
            w = w * tok.is_class(tgt)
        loss = weighted_cross_entropy(model(ims, inp), tgt, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if elapsed > next_probe:
            next_probe += args.every * 60
            print(json.dumps({"minutes": round(elapsed / 60, 1), "step": step,
                              "images_per_s": round(step * args.batch_size / elapsed, 1),
                              **token_losses(model, val_images[:64], val_targets[:64])}), flush=True)
    val = build_dataset(root, "2007", "val", list(SYNTHETIC_CLASSES), make_transforms(False, 128))
    if args.oracle:  # same targets, oracle pictures
        val = [(im, val[i][1]) for i, im in enumerate(val_images[:100])]
    metrics, _, _ = evaluate_model(model.eval(), val, max_images=100)
    print(json.dumps({"final_step": step, **token_losses(model, val_images[:64], val_targets[:64]),
                      "val_map_50": round(metrics["map_50"], 4), "val_map": round(metrics["map"], 4)}))


if __name__ == "__main__":
    main()
