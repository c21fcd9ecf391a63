"""Chapter 00a: pictures of boxes."""
import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2s_lib.data import VOCDataset
from p2s_lib.draw import (CLASS_COLORS, DEMO_CLASSES, class_color, demo_scene, draw_detections, draw_target, save_png,
                          show_boxes, show_grid, text_color, tile_images)
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


def test_scaling_up_turns_each_pixel_into_a_square_block_and_scales_the_boxes():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    target = {"boxes": torch.tensor([[2.0, 8.0, 10.0, 12.0]]), "labels": torch.tensor([1])}   # room above for a label
    big = draw_target(image, {"boxes": torch.zeros(0, 4)}, scale=3)
    assert big.shape == (3, 60, 90) and torch.equal(big, image.repeat_interleave(3, 1).repeat_interleave(3, 2))
    drawn = draw_target(image, target, ["a", "b"], scale=3, width=1)
    assert torch.equal(drawn[:, 45:, :], big[:, 45:, :])                      # nothing below the box's bottom edge (y1 = 36)
    assert (drawn[:, 24:36, 6] != big[:, 24:36, 6]).any(0).all()              # its left edge at x0 = 2 * 3
    picture = draw_detections(image, {**target, "scores": torch.tensor([0.9])}, ["a", "b"], long_side=90)
    assert torch.equal(picture[:, 45:], big[:, 45:])                          # draw_detections: the same square blocks


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 90), st.integers(0, 90), st.integers(1, 40), st.integers(1, 40),
                          st.integers(1, 50), st.integers(1, 20)), min_size=1, max_size=8))
def test_place_labels_keeps_each_patch_whole_and_on_the_canvas(rows):
    from p2s_lib.draw import place_labels
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h, _, _ in rows], dtype=torch.float32)
    sizes = [(lw, lh) for *_, lw, lh in rows]
    patches = place_labels(boxes, sizes, canvas=(100, 120))
    assert torch.equal(patches[:, 2:] - patches[:, :2], torch.tensor(sizes, dtype=torch.float32))
    assert (patches[:, :2] >= 0).all() and (patches[:, 2] <= 120).all() and (patches[:, 3] <= 100).all()


def test_place_labels_moves_a_label_off_one_already_placed_and_off_a_tiny_object():
    from p2s_lib.draw import _intersection, place_labels
    same = torch.tensor([[20.0, 30, 80, 90], [20, 30, 80, 90], [95, 40, 101, 46]])   # two coincident boxes, a tiny one
    patches = place_labels(same, [(40, 10)] * 3, canvas=(128, 128))
    assert patches[:2, :2].tolist() == [[20, 20], [20, 90]]        # the first above its box, the second below
    assert (_intersection(patches, patches).triu(1) == 0).all()    # no two labels overlap
    assert _intersection(patches[2:], same[2:]).item() == 0        # the tiny object stays visible


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_demo_scene_is_seeded_and_its_boxes_fit(seed):
    img, boxes, labels = demo_scene(seed=seed)
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    assert boxes.shape == (len(labels), 4) and boxes.dtype == torch.float32
    assert labels.dtype == torch.int64 and int(labels.max()) < len(DEMO_CLASSES)
    assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
    assert float(boxes.min()) >= 0 and bool((boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 120).all())
    img2, boxes2, _ = demo_scene(seed=seed)
    assert np.array_equal(img, img2) and torch.equal(boxes, boxes2)


def test_demo_scene_boxes_cover_painted_objects():
    img, boxes, _ = demo_scene()
    sun = boxes[0].long()
    patch = img[sun[1]:sun[3], sun[0]:sun[2]].astype(int)
    yellow = (patch[..., 0] > 200) & (patch[..., 1] > 170) & (patch[..., 2] < 120)
    assert yellow.mean() > 0.6  # the sun fills most of its box


def test_demo_scene_bad_size():
    with pytest.raises(ValueError, match="demo_scene"):
        demo_scene(height=10, width=10)
