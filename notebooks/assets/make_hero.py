"""Make the README's figure: one held-out synthetic image with the shipped `nano` checkpoint's detections,
beside the token sequence the model wrote for it (its best objects).

    .venv/bin/python notebooks/assets/make_hero.py      # writes notebooks/assets/hero.png
"""
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from p2s_lib.data import VOCDataset
from p2s_lib.draw import draw_detections
from p2s_lib.inference import generate, postprocess
from p2s_lib.model import load_model
from p2s_lib.synthetic import make_synthetic_voc
from p2s_lib.tokenizer import show_tokens
from p2s_lib.transforms import make_transforms

HERE = Path(__file__).parent


def main(index: int = 4, shown: int = 4) -> Path:
    model, extra = load_model(HERE / "nano_synthetic.pt")
    model.eval()
    names = list(extra["class_names"])
    with tempfile.TemporaryDirectory() as d:
        test = VOCDataset(make_synthetic_voc(d, num_images=40, test_fraction=0.8, seed=2024), image_set="test", classes=names)
        image, target = test[index]
    x, _ = make_transforms(train=False, image_size=model.image_size)(image, target)
    out = generate(model, x[None], generator=torch.Generator().manual_seed(0))
    pred = postprocess(out["tokens"], out["class_probs"], model.tokenizer, target["orig_size"][None])[0]
    best = out["class_probs"][0].amax(-1).argsort(descending=True)[:shown].sort().values  # the best objects, in writing order
    n = out["class_probs"].shape[1]
    tokens = out["tokens"][0, : 5 * n].reshape(n, 5)[best]
    tok = model.tokenizer
    sequence = torch.cat([torch.tensor([tok.bos_id]), tokens.reshape(-1)])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=100, gridspec_kw=dict(width_ratios=[1, 1.1]))
    a.imshow(draw_detections(image, pred, names, score_threshold=0.3).permute(1, 2, 0)); a.axis("off")
    a.set_title("the image, and what the model found", fontsize=11)
    show_tokens(b, sequence, tok, names, fontsize=8)
    b.set_title(f"what it wrote: its {shown} best objects, 5 tokens each", fontsize=11)
    fig.tight_layout()
    path = HERE / "hero.png"
    fig.savefig(path, bbox_inches="tight")
    return path


if __name__ == "__main__":
    print(main())
