"""Issue 5's claim, measured: sequence augmentation + delayed EOS beat the same training without them.

    python bench/bench_sequence_augmentation.py --minutes 10

Trains `nano` twice on the train split of the default synthetic set for the same wall-clock
budget (the cpu recipe): once with the paper's sequences (noise objects, corrupted class inputs, delayed-EOS decoding)
and once without (plain sequences, decoding stops at EOS). Both are scored on the test split with
real autoregressive decoding. Prints figures; it is not a test.
"""
import argparse
import json
from pathlib import Path

import torch

from p2s_lib.data import make_synthetic_voc
from p2s_lib.inference import predict
from p2s_lib.metrics import evaluate
from p2s_lib.model import load_model
from p2s_lib.recipes import make_config
from p2s_lib.config import build_dataset
from p2s_lib.data import collate_fn
from p2s_lib.transforms import make_transforms
from p2s_lib.train import Trainer


@torch.inference_mode()
def test_map(checkpoint: Path, root: Path, delayed_eos: bool) -> dict:
    model, info = load_model(checkpoint)
    data = build_dataset(root, "2007", "test", info["class_names"], make_transforms(False, model.image_size))
    preds, targets = [], []
    for images, batch in torch.utils.data.DataLoader(data, batch_size=32, collate_fn=collate_fn):
        sizes = torch.stack([t["orig_size"] for t in batch])
        preds += predict(model.eval(), images, sizes, delayed_eos=delayed_eos, generator=torch.Generator().manual_seed(0))
        targets += [{"boxes": t["boxes"] * t["orig_size"].max(), "labels": t["labels"], "difficult": t["difficult"]}
                    for t in batch]
    m = evaluate(preds, targets, num_classes=model.tokenizer.num_classes)
    return {"map_50": round(m["map_50"], 4), "map": round(m["map"], 4),
            "detections_per_image": round(sum(len(p["scores"]) for p in preds) / len(preds), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="data/synthetic")
    parser.add_argument("--out", default="runs/bench_seqaug")
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--runs", nargs="+", default=["with_sequence_augmentation", "without"])
    parser.add_argument("--reuse", action="store_true", help="score an existing OUT/RUN/best.pt instead of training")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 lets two runs share 2 cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root, out = Path(args.data_root), Path(args.out)
    if not (root / "VOCdevkit").exists():
        make_synthetic_voc(root, seed=0)
    for name in args.runs:
        augment = name == "with_sequence_augmentation"
        cfg = make_config("cpu", given_by="bench", data_root=str(root), classes="synthetic", vflip=0.5,
                          transpose=0.5, max_minutes=args.minutes, out=str(out / name),
                          sequence_augmentation=augment, delayed_eos=augment)
        if not (args.reuse and (out / name / "best.pt").exists()):
            Trainer(cfg).fit()
        result = {"run": name, "minutes": args.minutes,
                  "delayed_eos": test_map(out / name / "best.pt", root, delayed_eos=True),
                  "stop_at_eos": test_map(out / name / "best.pt", root, delayed_eos=False)}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
