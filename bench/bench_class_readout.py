"""Does a checkpoint find the objects, and does it name them? (the diagnosis behind nano's box prior)

    python bench/bench_class_readout.py notebooks/assets/nano_synthetic.pt --data-root data/synthetic

Prints, on the test split of a VOC-format set (default: the synthetic set, made if missing):
- recall at IoU 0.5 of the decoded predictions, class-aware and "any class" (did it find *where*?);
- teacher-forced class accuracy: the true boxes are fed in, and the class step's argmax over the
  real classes is compared with the truth (chance is 1 / number of classes);
- the class step's cross-attention mass inside the true box (cells within half a cell of it),
  per decoder layer, against the share of cells there (what uniform attention would give).
It is a diagnostic that prints figures, not a test.
"""
import argparse
import json
from pathlib import Path

import torch

from p2s_lib.augment import build_batch
from p2s_lib.data import collate_fn, make_synthetic_voc
from p2s_lib.transforms import make_transforms
from p2s_lib.metrics import recall_at_iou
from p2s_lib.model import load_model
from p2s_lib.config import build_dataset
from p2s_lib.distributed import evaluate_model


def recalls(preds: list[dict], targets: list[dict]) -> dict:
    """Share of non-difficult objects found at IoU >= 0.5 (one prediction per object), any class and same class."""
    kept = [{k: t[k][~t["difficult"].bool()] for k in ("boxes", "labels")} for t in targets]
    return {"recall50_any_class": round(recall_at_iou(preds, kept, class_agnostic=True), 3),
            "recall50_same_class": round(recall_at_iou(preds, kept), 3)}


@torch.no_grad()
def class_step_readout(model, dataset, num_images: int = 64) -> dict:
    """Teacher-forced class accuracy and class-step attention mass inside the true boxes."""
    tok = model.tokenizer
    images, targets = collate_fn([dataset[i] for i in range(min(num_images, len(dataset)))])
    inputs, labels, weights = build_batch(targets, tok, order="random", augment=False,
                                          generator=torch.Generator().manual_seed(0))
    logits, attn = model(images, inputs, return_attention=True)
    h, w = model.encoder.grid_size(*images.shape[-2:])
    cy = (torch.arange(h) + 0.5) / h
    cx = (torch.arange(w) + 0.5) / w
    correct, inside_mass, inside_share = [], [[] for _ in attn["cross"]], []
    for b in range(len(images)):
        for k in range((labels.shape[1] - 1) // 5):
            target = labels[b, 5 * k + 4]
            if not tok.is_class(target[None]).all() or weights[b, 5 * k + 4] == 0:
                continue
            y0, x0, y1, x1 = ((labels[b, 5 * k:5 * k + 4] - tok.coord_offset).float() / (tok.num_bins - 1)).tolist()
            rows = (cy >= y0 - 0.5 / h) & (cy <= y1 + 0.5 / h)
            cols = (cx >= x0 - 0.5 / w) & (cx <= x1 + 0.5 / w)
            inside = (rows[:, None] & cols[None, :]).flatten()
            inside_share.append(inside.float().mean().item())
            for layer, weights_l in enumerate(attn["cross"]):
                inside_mass[layer].append(weights_l[b, :, 5 * k + 4][:, inside].sum(-1).mean().item())
            real = logits[b, 5 * k + 4, tok.class_offset:tok.class_offset + tok.num_classes]
            correct.append(int(real.argmax()) == int(target) - tok.class_offset)
    mean = lambda xs: round(sum(xs) / max(len(xs), 1), 3)
    return {"objects": len(correct), "teacher_forced_class_accuracy": mean(correct),
            "chance": round(1 / tok.num_classes, 3),
            "class_step_attention_inside_box_per_layer": [mean(m) for m in inside_mass],
            "uniform_attention_inside_box": mean(inside_share)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--image-set", default="test")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    if not (root / "VOCdevkit" / "VOC2007").is_dir():
        make_synthetic_voc(root, seed=0)
    model, info = load_model(args.checkpoint)
    model = model.float().eval()
    data = build_dataset(root, "2007", args.image_set, info["class_names"], make_transforms(False, model.image_size))
    metrics, preds, targets = evaluate_model(model, data, greedy=True)
    result = {"checkpoint": args.checkpoint, "box_prior": getattr(model.decoder, "box_prior", None) is not None,
              "map_50_greedy": round(metrics["map_50"], 3), **recalls(preds, targets),
              **class_step_readout(model, data)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
