"""Chapter 00b's claim, measured: `decode_rgb` (torchvision's libjpeg-turbo) against PIL, both to a uint8 tensor.

    python bench/bench_decode.py

Writes JPEGs of VOC's typical size (500 x 375) into a temporary folder and decodes each one many times,
alternating the two decoders. Prints figures; it is not a test.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from p2s_lib.data import decode_rgb


def pil_rgb(path: Path) -> torch.Tensor:
    """What a PIL pipeline does: decode, convert to RGB, then to a [3, H, W] uint8 tensor."""
    with Image.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def best_rate(decode, paths: list[Path], rounds: int) -> float:
    """Images per second, the best of `rounds` passes over `paths`."""
    best = float("inf")
    for _ in range(rounds):
        tick = time.perf_counter()
        for p in paths:
            decode(p)
        best = min(best, time.perf_counter() - tick)
    return len(paths) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(args.images):   # smooth gradients plus noise: compresses like a photo, not like flat colour
            yy, xx = np.mgrid[0:375, 0:500]
            base = np.stack([xx * 0.5, yy * 0.6, (xx + yy) * 0.3], -1) + rng.normal(0, 20, (375, 500, 3))
            path = Path(d) / f"{i}.jpg"
            Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=90)
            paths.append(path)
        assert decode_rgb(paths[0]).shape == pil_rgb(paths[0]).shape == (3, 375, 500)
        ours, pil = best_rate(decode_rgb, paths, args.rounds), best_rate(pil_rgb, paths, args.rounds)
    print(json.dumps({"decode_rgb_images_per_s": round(ours, 1), "pil_images_per_s": round(pil, 1),
                      "ratio": round(ours / pil, 2), "image": "500x375 JPEG q90", "threads": 1}))


if __name__ == "__main__":
    main()
