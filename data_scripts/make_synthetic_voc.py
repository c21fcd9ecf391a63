#!/usr/bin/env python
"""Generate the synthetic shapes dataset (circle, square, triangle, star) in Pascal VOC layout.

Usage::

    python data_scripts/make_synthetic_voc.py --root data/synthetic
    python data_scripts/make_synthetic_voc.py --root data/synthetic500 --image-size 500 --num-images 200

Result: ``ROOT/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}``, readable by
``p2s_lib.data.VOCDataset(ROOT, classes=SYNTHETIC_CLASSES)`` and ``torchvision.datasets.VOCDetection``.
Same arguments give byte-identical files. A thin wrapper around ``p2s_lib.data.make_synthetic_voc``
(chapter 00, notebooks/00_synthetic.ipynb).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from p2s_lib.data import make_synthetic_voc  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("data/synthetic"), help="folder that will contain VOCdevkit/")
    p.add_argument("--year", default="2007", help="writes VOCdevkit/VOC{year}")
    p.add_argument("--num-images", type=int, default=2000, help="images in all splits together")
    p.add_argument("--image-size", type=int, default=128, help="longest image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--max-objects", type=int, default=6, help="objects per image: 0..max")
    p.add_argument("--object-size", type=float, nargs=2, default=(0.09, 0.38), metavar=("LO", "HI"),
                   help="shape sizes as fractions of the image size")
    p.add_argument("--shapes", default="circle,square,triangle,star", help="comma list, from the four shapes")
    p.add_argument("--names", default=None, help="comma list: the class name of each shape (default: the shapes')")
    p.add_argument("--overwrite", action="store_true", help="replace an existing VOC{year} folder")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        root = make_synthetic_voc(args.root, year=args.year, num_images=args.num_images, image_size=args.image_size,
                                  seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                                  max_objects=args.max_objects, overwrite=args.overwrite,
                                  object_size=tuple(args.object_size), shapes=args.shapes.split(","),
                                  names=args.names.split(",") if args.names else None)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    voc = root / "VOCdevkit" / f"VOC{args.year}"
    splits = {s: len((voc / "ImageSets" / "Main" / f"{s}.txt").read_text().split()) for s in ("train", "val", "test")}
    print(f"wrote {args.num_images} images ({args.image_size} px, seed {args.seed}) to {voc} "
          f"in {time.perf_counter() - t0:.1f} s; " + ", ".join(f"{k} {v}" for k, v in splits.items()))
    print(f"use: VOCDataset({str(root)!r}, year={args.year!r}, image_set='train', classes=SYNTHETIC_CLASSES)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
