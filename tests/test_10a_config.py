"""Chapter 10a: the data helpers of p2s_lib.config, on a tiny two-year synthetic set (and its COCO copy).

resolve_splits, resolve_classes, check_sets and most_objects are tested in test_10_train.py, with validate_config's
run-length and data-root checks; its range checks are tested here."""
from pathlib import Path

import pytest
import torch
from torch.utils.data import ConcatDataset

from p2s_lib.coco import COCODataset, voc_to_coco
from p2s_lib.config import (TrainConfig, build_dataset, coco_files, is_coco, set_transforms, split_files,
                            validate_config)
from p2s_lib.data import SYNTHETIC_CLASSES, VOCDataset, make_synthetic_voc
from p2s_lib.recipes import RECIPES, make_config
from p2s_lib.transforms import make_transforms

NAMES = list(SYNTHETIC_CLASSES)


@pytest.fixture(scope="module")
def two_years(tmp_path_factory) -> Path:
    """VOC2007 and VOC2012, 10 images each at 48 px (train 8), and the 2007 train split as COCO JSON
    in its image folder (`JPEGImages/train.json`)."""
    root = tmp_path_factory.mktemp("two_years")
    for year, seed in (("2007", 0), ("2012", 1)):
        make_synthetic_voc(root, year=year, num_images=10, image_size=48, seed=seed)
    jpegs = root / "VOCdevkit" / "VOC2007" / "JPEGImages"
    voc_to_coco(VOCDataset(root, "2007", "train", classes=NAMES), jpegs / "train.json")
    return root


def test_is_coco_tells_a_json_file_from_a_voc_split_name():
    assert is_coco("annotations/val.JSON") and is_coco("train.json")
    assert not is_coco("trainval") and not is_coco(None)


def test_coco_files_finds_the_file_inside_root_and_the_images_in_root_else_beside_the_file(two_years):
    jpegs = two_years / "VOCdevkit" / "VOC2007" / "JPEGImages"
    assert coco_files("train.json", jpegs) == (jpegs / "train.json", jpegs)
    assert coco_files(str(jpegs / "train.json"), None) == (jpegs / "train.json", jpegs)


def test_build_dataset_joins_years_and_reads_a_coco_split_with_the_same_items(two_years):
    one = build_dataset(two_years, "2007", "train", NAMES, None)
    both = build_dataset(two_years, "2007+2012", "train", NAMES, None)
    coco = build_dataset(two_years / "VOCdevkit" / "VOC2007" / "JPEGImages", "2007", "train.json", NAMES, None)
    assert isinstance(one, VOCDataset) and isinstance(both, ConcatDataset) and isinstance(coco, COCODataset)
    assert [d.year for d in both.datasets] == ["2007", "2012"]
    assert len(both) == len(one) + len(build_dataset(two_years, "2012", "train", NAMES, None))
    assert len(coco) == len(one)
    for i in range(len(one)):
        assert torch.equal(coco[i][1]["boxes"], one[i][1]["boxes"])
        assert torch.equal(coco[i][1]["labels"], one[i][1]["labels"])


def test_split_files_names_the_file_of_each_part(two_years):
    both = build_dataset(two_years, "2007+2012", "train", NAMES, None)
    files = split_files(both).split(" + ")
    assert [Path(f) for f in files] == [two_years / "VOCdevkit" / f"VOC{y}" / "ImageSets" / "Main" / "train.txt"
                                        for y in ("2007", "2012")]
    jpegs = two_years / "VOCdevkit" / "VOC2007" / "JPEGImages"
    assert split_files(build_dataset(jpegs, "2007", "train.json", NAMES, None)) == str(jpegs / "train.json")


def test_set_transforms_reaches_every_part_of_a_joined_set(two_years):
    both = build_dataset(two_years, "2007+2012", "train", NAMES, None)
    assert set_transforms(both, make_transforms(False, 32)) is both
    assert tuple(both[0][0].shape) == tuple(both[len(both) - 1][0].shape) == (3, 32, 32)   # one image per year


def test_is_given_counts_only_sources_that_say_given():
    cfg = TrainConfig(lr=1e-3, batch_size=32, sources={"lr": "given (flag)", "batch_size": "recipe paper: ..."})
    assert cfg.is_given("lr") and not cfg.is_given("batch_size") and not cfg.is_given("epochs")
    assert cfg.source("epochs") == "TrainConfig default"


@pytest.mark.parametrize("bad, message", [
    (dict(grad_clip=-1.0), "--grad-clip must be > 0, got -1.0"),      # the official "off": clip_grad_norm_ would flip signs
    (dict(grad_clip=0.0), "--grad-clip must be > 0, got 0.0"),        # ... and zero every gradient
    (dict(top_p=0.0), r"--top-p must be in \(0, 1\]"),
    (dict(top_p=2.0), r"--top-p must be in \(0, 1\].*got 2.0"),
    (dict(scale_min=0.0), "--scale-min and --scale-max need 0 < min <= max, got 0.0 and 2.0"),
    (dict(scale_min=1.5, scale_max=1.0), "got 1.5 and 1.0"),
    (dict(warmup_frac=1.5), r"--warmup-frac must be in \[0, 1\), got 1.5"),
    (dict(warmup_frac=-0.1), "--warmup-frac"),
    (dict(final_lr_frac=-0.01), r"--final-lr-frac must be in \[0, 1\], got -0.01"),
    (dict(final_lr_frac=1.5), "--final-lr-frac"),
    (dict(eval_images=0), "--eval-images must be >= 1"),
    (dict(eval_every=0), "--eval-every must be >= 1"),
    (dict(num_workers=-1), "--num-workers must be >= 0, got -1"),
    (dict(eos_weight=-0.1), "--eos-weight must be >= 0, got -0.1"),
])
def test_validate_config_rejects_an_out_of_range_value_naming_its_flag(bad, message):
    with pytest.raises(ValueError, match=message):
        validate_config(TrainConfig(data_root=".", epochs=1, **bad))


def test_validate_config_passes_the_edges_of_each_range():
    validate_config(TrainConfig(data_root=".", epochs=1, top_p=1.0, scale_min=1.0, scale_max=1.0, warmup_frac=0.0,
                                final_lr_frac=1.0, eval_images=None, num_workers=0, eos_weight=0.0, grad_clip=0.1))
    validate_config(TrainConfig(data_root=".", epochs=1, final_lr_frac=0.0, eval_images=1))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_shipped_recipe_passes_validate_config(recipe):
    validate_config(make_config(recipe, world_size=1, data_root=".", epochs=1))
