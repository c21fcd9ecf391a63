"""Chapter 00a: pictures of boxes."""
import matplotlib
import torch

from p2s_lib.data import VOCDataset
from p2s_lib.draw import (CLASS_COLORS, class_color, draw_detections, draw_target, save_png, show_boxes, show_grid,
                          text_color, tile_images)
from p2s_lib.quantize import DEMO_CLASSES, demo_scene
from p2s_lib.synthetic import SYNTHETIC_CLASSES
from p2s_lib.transforms import make_transforms

matplotlib.use("Agg")


def test_class_colours_repeat_after_the_palette_and_text_contrasts():
    assert class_color(len(CLASS_COLORS)) == class_color(0) != class_color(1)
    assert text_color("#ffe119") == "black" and text_color("#000075") == "white"


def test_draw_target(synthetic_root):
    ds = VOCDataset(synthetic_root, classes=SYNTHETIC_CLASSES)
    img, t = ds[0]
    out = draw_target(img, t, ds.classes)
    assert out.dtype == torch.uint8 and out.shape == img.shape
    assert (out != (img * 255).round().to(torch.uint8)).any() == (len(t["boxes"]) > 0)
    x, tn = make_transforms(False, 64)(img, t)
    assert draw_target(x, tn).shape == (3, 64, 64)


def test_show_boxes_draws_boxes_and_labels():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img, boxes, labels = demo_scene()
    fig, ax = plt.subplots()
    show_boxes(ax, img, boxes, labels, class_names=DEMO_CLASSES)
    assert len(ax.patches) == len(boxes) and len(ax.texts) == len(boxes)
    show_boxes(ax, torch.rand(3, 20, 30))  # CHW tensor images are accepted
    plt.close(fig)


def test_draw_detections_scales_by_a_whole_factor_and_keeps_only_scores_above_the_threshold():
    image = torch.zeros(3, 96, 128, dtype=torch.uint8)
    pred = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 20.0, 120.0, 90.0]]),
            "scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([0, 1])}
    picture = draw_detections(image, pred, ["a", "b"], score_threshold=0.3)
    assert picture.shape == (3, 288, 384) and picture.dtype == torch.uint8           # x3 towards 384 px
    assert picture[:, 60:140, 29:32].any() and not picture[:, 100:250, 208:213].any()  # box 1's left edge, not box 2's


def test_a_second_set_of_boxes_adds_to_the_axes_and_scores_reach_the_labels():
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    boxes = torch.tensor([[1.0, 1, 10, 10], [5, 5, 20, 15]])
    show_boxes(ax, torch.zeros(3, 24, 24), boxes, torch.tensor([0, 1]), ["a", "b"], scores=torch.tensor([0.9, 0.25]))
    show_boxes(ax, None, boxes, color="white", linestyle="--", texts=["", ""])
    assert len(ax.patches) == 4 and [t.get_text() for t in ax.texts][:2] == ["a 0.90", "b 0.25"]
    plt.close(fig)


def test_tiles_pad_to_the_largest_and_save_png_round_trips(tmp_path):
    from torchvision.io import decode_image
    tiles = tile_images([torch.full((3, 10, 20), 255, dtype=torch.uint8), torch.rand(3, 30, 5)], nrow=2)
    assert tiles.dtype == torch.uint8 and tiles.shape == (3, 30 + 2 * 4, 2 * 20 + 3 * 4)   # make_grid's 4-px padding
    assert torch.equal(decode_image(str(save_png(tiles, tmp_path / "t.png"))), tiles)
    assert len(show_grid([tiles, tiles], ["x", "y"], ncols=2).axes) == 2
