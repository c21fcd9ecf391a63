"""How long does mAP take at Pascal VOC's size? `p2s_lib.metrics.evaluate` against pycocotools.

    python bench/bench_metrics.py                  # 4,952 images (VOC07 test), 20 classes, 100 detections each
    python bench/bench_metrics.py --images 500     # a quicker look

A fake detector on random objects (2.4 per image, as VOC07 test has): each image gets `--detections` scored boxes,
jittered copies of its objects (some with the wrong class) and junk, as delayed-EOS decoding writes them. Both
tools get the same data; the script prints their times and checks that the twelve COCO statistics agree.
Prints figures; it is not a test.
"""
import argparse
import contextlib
import copy
import io
import time

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from p2s_lib.metrics import evaluate, to_coco


def fake_voc(images: int, detections: int, classes: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(images):
        n = 1 + int(torch.poisson(torch.tensor([1.4]), generator=g))
        xy = torch.rand(n, 2, generator=g) * 400
        boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 200], 1)
        labels = torch.randint(0, classes, (n,), generator=g)
        pick = torch.randint(0, n, (detections,), generator=g)
        jitter = torch.randn(detections, 4, generator=g) * 0.1 * (boxes[pick, 2:] - boxes[pick, :2]).repeat(1, 2)
        d = boxes[pick] + jitter
        junk = torch.rand(detections, generator=g) < 0.6
        xy = torch.rand(detections, 2, generator=g) * 400
        d[junk] = torch.cat([xy, xy + 5 + torch.rand(detections, 2, generator=g) * 100], 1)[junk]
        d = torch.cat([torch.minimum(d[:, :2], d[:, 2:]), torch.maximum(d[:, :2], d[:, 2:])], 1)
        wrong = torch.rand(detections, generator=g) < 0.2
        dl = torch.where(junk | wrong, torch.randint(0, classes, (detections,), generator=g), labels[pick])
        preds.append({"boxes": d, "scores": torch.rand(detections, generator=g), "labels": dl})
        targets.append({"boxes": boxes, "labels": labels})
    return preds, targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4952)
    ap.add_argument("--detections", type=int, default=100)
    args = ap.parse_args()
    preds, targets = fake_voc(args.images, args.detections)
    print(f"{args.images} images, {sum(len(t['boxes']) for t in targets)} objects, {args.images * args.detections} detections")
    tick = time.perf_counter()
    ours = evaluate(preds, targets, num_classes=20)
    ours_s = time.perf_counter() - tick
    tick = time.perf_counter()
    gt, dt = to_coco(preds, targets, 20)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        E = COCOeval(coco, coco.loadRes(dt), "bbox")
        E.evaluate(); E.accumulate(); E.summarize()
    ref_s = time.perf_counter() - tick
    worst = float(np.abs(np.array(ours["coco_stats"]) - E.stats).max())
    print(f"p2s_lib.metrics.evaluate: {ours_s:.1f} s (COCO and VOC AP) | pycocotools COCOeval: {ref_s:.1f} s (COCO AP)")
    print(f"AP {ours['map']:.4f} vs {E.stats[0]:.4f}; largest difference over the 12 statistics: {worst:.1e}")


if __name__ == "__main__":
    main()
