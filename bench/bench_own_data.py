"""The README's own-data command, measured: train with only the data's flags, then score the test split.

    python bench/bench_own_data.py data/synthetic --classes circle,square,triangle,star --no-up
    python bench/bench_own_data.py data/variant --classes puck,wedge,starfish --no-up

It runs exactly `OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m p2s_lib train --data-root ROOT
--classes C [--vflip 0.5 --transpose 0.5] --out OUT` (the recipe decides the rest: `cpu` for nano, 15 minutes),
then `p2s evaluate` on the `test` split twice: as the run's recipe decodes, and as the paper decodes
(`--refine-window 0 --labels-per-object 1`). Prints one JSON line with both, the steps and the validation curve. Not a test.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path


def own_data_command(root: str, classes: str, no_up: bool, out: Path, processes: int) -> list[str]:
    flags = ["--data-root", root, "--classes", classes] + (["--vflip", "0.5", "--transpose", "0.5"] if no_up else [])
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "p2s_lib", "train", *flags, "--out", str(out)]


def score(checkpoint: Path, root: str, out: Path, *extra: str) -> dict:
    subprocess.run([sys.executable, "-m", "p2s_lib", "evaluate", "--checkpoint", str(checkpoint), "--data-root", root,
                    "--image-set", "test", "--out", str(out), *extra], check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--classes", required=True)
    p.add_argument("--no-up", action="store_true", help="the data has no 'up': add --vflip 0.5 --transpose 0.5")
    p.add_argument("--out", default=None, help="default: runs/own_data/<root's name>")
    p.add_argument("--processes", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out or f"runs/own_data/{Path(args.root).name}")
    command = own_data_command(args.root, args.classes, args.no_up, out, args.processes)
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    recipe = score(out / "best.pt", args.root, out / "test")
    paper = score(out / "best.pt", args.root, out / "test_paper", "--refine-window", "0", "--labels-per-object", "1")
    with (out / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    curve = [(round(float(r["train_minutes"]), 2), round(float(r["map_50"]), 3), round(float(r["map"]), 3))
             for r in rows if r["map_50"]]
    print(json.dumps({"command": " ".join(command[2:]).replace("torch.distributed.run", "torchrun"),
                      "test_map_50": round(recipe["map_50"], 4), "test_map": round(recipe["map"], 4),
                      "decoding": {k: recipe[k] for k in ("top_p", "refine_window", "labels_per_object")},
                      "test_map_50_paper_decoding": round(paper["map_50"], 4),
                      "test_map_paper_decoding": round(paper["map"], 4), "test_images": recipe["images"],
                      "steps": int(rows[-1]["step"]), "curve_train_minutes_val_map50_map": curve}))


if __name__ == "__main__":
    main()
