"""Tests for p2s_lib.coco (chapter 00c): the COCO JSON reader gives VOCDataset's samples; clear errors."""
import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

import p2s_lib.coco as coco_mod
from p2s_lib.coco import COCOAnnotationError, COCODataset, coco_classes, coco_records, load_coco, voc_to_coco
from p2s_lib.data import SYNTHETIC_CLASSES, VOCAnnotationError, VOCDataset, VOCImageError, VOCMissingError, VOCWarning
from p2s_lib.transforms import make_transforms


# ---------------------------------------------------------------- fixtures + helpers
@pytest.fixture(scope="module")
def voc(synthetic_root):
    return VOCDataset(synthetic_root, "2007", "train", classes=SYNTHETIC_CLASSES)


@pytest.fixture(scope="module")
def image_dir(synthetic_root):
    return synthetic_root / "VOCdevkit" / "VOC2007" / "JPEGImages"


@pytest.fixture(scope="module")
def coco_file(voc, tmp_path_factory):
    return voc_to_coco(voc, tmp_path_factory.mktemp("coco") / "train.json")


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def edited(coco_file: Path, tmp_path: Path, change, name="bad.json") -> Path:
    "A copy of the converted file with change(data) applied."
    data = json.loads(coco_file.read_text())
    change(data)
    return write_json(tmp_path / name, data)


def tiny_set(tmp_path: Path, annotations=(), sizes=((40, 60),), categories=((3, "dot"),)) -> tuple[Path, Path]:
    "Solid-colour PNG images img{k}.png of the given (H, W) and a COCO file over them (image ids k + 1)."
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for k, (h, w) in enumerate(sizes):
        Image.new("RGB", (w, h), (40, 90, 200)).save(images / f"img{k}.png")
    data = dict(images=[dict(id=k + 1, file_name=f"img{k}.png", height=h, width=w) for k, (h, w) in enumerate(sizes)],
                annotations=[{"id": j + 1, "iscrowd": 0, **a} for j, a in enumerate(annotations)],
                categories=[dict(id=i, name=n) for i, n in categories])
    return write_json(tmp_path / "tiny.json", data), images


def assert_same_samples(a, b, seed=None):
    assert len(a) == len(b) > 0
    for i in range(len(a)):
        if seed is not None:
            torch.manual_seed(seed + i)
        x, t = a[i]
        if seed is not None:
            torch.manual_seed(seed + i)
        y, u = b[i]
        assert torch.equal(x, y), i
        assert set(t) == set(u) and t["image_id"] == u["image_id"], i
        assert t["boxes"].shape == u["boxes"].shape and torch.allclose(t["boxes"], u["boxes"], atol=1e-5), i
        for key in ("labels", "difficult", "orig_size"):
            assert torch.equal(t[key], u[key]), (i, key)


# ---------------------------------------------------------------- VOC -> COCO -> same samples
def test_converted_file(voc, coco_file):
    data = json.loads(coco_file.read_text())
    assert set(data) == {"images", "annotations", "categories"}
    assert data["categories"] == [dict(id=k + 1, name=n) for k, n in enumerate(SYNTHETIC_CLASSES)]
    assert [im["id"] for im in data["images"]] == list(range(1, len(voc) + 1))
    assert [im["file_name"] for im in data["images"]] == [f"{i}.jpg" for i in voc.ids]
    assert [(im["height"], im["width"]) for im in data["images"]] == [r["size"] for r in voc.records]
    anns = data["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    assert len(anns) == sum(len(r["boxes"]) for r in voc.records)
    k = 0
    for i, rec in enumerate(voc.records):
        for box, label, hard in zip(rec["boxes"].tolist(), rec["labels"].tolist(), rec["difficult"].tolist()):
            a = anns[k]
            x0, y0, x1, y1 = box
            assert a["image_id"] == i + 1 and a["category_id"] == label + 1 and a["iscrowd"] == int(hard)
            assert a["bbox"] == [x0, y0, x1 - x0, y1 - y0] and a["area"] == (x1 - x0) * (y1 - y0)
            k += 1
    assert any(a["iscrowd"] for a in anns) and any(not r["boxes"].numel() for r in voc.records)
    assert sorted(p.name for p in coco_file.parent.iterdir()) == ["train.json"]  # no temp file left


@pytest.mark.parametrize("tf", ["none", "eval", "train"])
def test_same_samples_as_voc(synthetic_root, voc, image_dir, coco_file, tf):
    transforms = {"none": None, "eval": make_transforms(False, 96), "train": make_transforms(True, 96)}[tf]
    ref = VOCDataset(synthetic_root, "2007", "train", classes=SYNTHETIC_CLASSES, transforms=transforms)
    ds = COCODataset(coco_file, image_dir, transforms=transforms)
    assert ds.ids == ref.ids and ds.classes == ref.classes and ds.num_classes == 4
    assert_same_samples(ref, ds, seed=None if tf == "none" else 1000)


def test_same_records_as_voc(voc, image_dir, coco_file):
    ds = COCODataset(coco_file, image_dir, classes=SYNTHETIC_CLASSES)
    for rec, ref in zip(ds.records, voc.records):
        assert rec["filename"] == ref["filename"] and rec["size"] == ref["size"] and rec["names"] == ref["names"]
        for key in ("boxes", "labels", "difficult"):
            assert rec[key].dtype == ref[key].dtype and torch.equal(rec[key], ref[key])
        assert rec["truncated"].dtype == torch.bool and not rec["truncated"].any()


def test_dataset_attributes(image_dir, coco_file):
    ds = COCODataset(coco_file, image_dir)
    assert repr(ds) == "COCODataset('train.json', 20 images, 4 classes)"
    assert ds.image_set == "train.json" and ds.annotation_path(3) == coco_file
    assert ds.image_path(0) == image_dir / f"{ds.ids[0]}.jpg"
    assert ds.coco_ids == list(range(1, 21)) and len(ds.coco.anns) == sum(len(r["boxes"]) for r in ds.records)
    assert ds.read_image(0).dtype == torch.uint8
    assert ds.root == ds.image_dir == image_dir and ds.year is None and ds.voc_dir is None  # VOCDataset's attributes


def test_round_trip_through_coco(image_dir, coco_file, tmp_path):
    ds = COCODataset(coco_file, image_dir)
    again = voc_to_coco(ds, tmp_path / "again.json")
    assert json.loads(again.read_text()) == json.loads(coco_file.read_text())


# ---------------------------------------------------------------- classes
def test_classes_in_category_id_order(coco_file, image_dir, tmp_path):
    new_id = {1: 40, 2: 30, 3: 20, 4: 10}                                     # circle, square, triangle, star

    def renumber(d):
        d["categories"] = [dict(id=30, name="square"), dict(id=40, name="circle"), dict(id=10, name="star"),
                           dict(id=20, name="triangle")]                      # file order is not id order
        for a in d["annotations"]:
            a["category_id"] = new_id[a["category_id"]]

    path = edited(coco_file, tmp_path, renumber)
    expected = ["star", "triangle", "square", "circle"]
    assert coco_classes(path) == expected
    for classes in (None, "infer"):
        ds = COCODataset(path, image_dir, classes=classes)
        assert ds.classes == expected
        assert all([expected[k] for k in r["labels"]] == r["names"] for r in ds.records)
    ds = COCODataset(path, image_dir, classes=SYNTHETIC_CLASSES)
    assert all([SYNTHETIC_CLASSES[k] for k in r["labels"]] == r["names"] for r in ds.records)
    assert sum(len(r["names"]) for r in ds.records) > 0


def test_classes_sequence_with_more_names(coco_file, image_dir):
    classes = ["star", "dog", "circle", "square", "triangle"]
    ds = COCODataset(coco_file, image_dir, classes=classes)
    assert ds.classes == classes
    assert all([classes[k] for k in r["labels"]] == r["names"] for r in ds.records)


def test_used_category_outside_classes(coco_file, image_dir):
    anns = json.loads(coco_file.read_text())["annotations"]
    first_star = next(a["id"] for a in anns if a["category_id"] == 4)
    with pytest.raises(COCOAnnotationError, match=rf"train\.json: annotation id {first_star}: category 'star'"):
        COCODataset(coco_file, image_dir, classes=["circle", "square", "triangle"])


def test_unused_category_outside_classes_is_fine(tmp_path):
    path, images = tiny_set(tmp_path, [dict(image_id=1, category_id=3, bbox=[1, 2, 3, 4])],
                            categories=((3, "dot"), (8, "unused")))
    assert COCODataset(path, images, classes=["dot"]).classes == ["dot"]


@pytest.mark.parametrize("classes", ["all", [], ["a", "a"]])
def test_bad_classes_argument(coco_file, image_dir, classes):
    with pytest.raises(ValueError, match="classes must be"):
        COCODataset(coco_file, image_dir, classes=classes)


# ---------------------------------------------------------------- boxes, order, ids
def test_boxes_clipped_dropped_and_crowd(tmp_path):
    path, images = tiny_set(tmp_path, [
        dict(image_id=1, category_id=3, bbox=[50, 10, 20, 20]),                # crosses the right edge
        dict(image_id=1, category_id=3, bbox=[10, 10, 0, 5]),                  # zero width: dropped
        dict(image_id=1, category_id=3, bbox=[-5, 30, 10, 20]),                # crosses the left and bottom edges
        dict(image_id=1, category_id=3, bbox=[0.5, 1.25, 2.5, 3.5], iscrowd=1),
    ], sizes=((40, 60), (20, 30)))
    with pytest.warns(VOCWarning, match=r"tiny\.json: clipped 2 box\(es\) .* dropped 1") as rec:
        ds = COCODataset(path, images)
    assert len(rec) == 1
    assert ds.records[0]["boxes"].tolist() == [[50, 10, 60, 30], [0, 30, 5, 40], [0.5, 1.25, 3.0, 4.75]]
    assert ds.records[0]["difficult"].tolist() == [False, False, True]
    img, t = ds[1]                                                             # no annotations: kept, empty
    assert img.shape == (3, 20, 30) and t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64


def test_no_warning_for_clean_file(coco_file, image_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        COCODataset(coco_file, image_dir)


def test_sorted_by_image_id_and_ids_from_file_names(tmp_path):
    path, images = tiny_set(tmp_path, sizes=((30, 40), (32, 40), (34, 40)))
    data = json.loads(path.read_text())
    (images / "sub").mkdir()
    (images / "img2.png").rename(images / "sub" / "img2.png")
    data["images"][2]["file_name"] = "sub/img2.png"
    data["images"] = [data["images"][2], data["images"][0], data["images"][1]]
    for im, new in zip(data["images"], (9, 4, 6)):
        im["id"] = new
    ds = COCODataset(write_json(path, data), images)
    assert ds.coco_ids == [4, 6, 9] and ds.ids == ["img0", "img1", "sub/img2"]
    assert [tuple(ds[i][1]["orig_size"].tolist()) for i in range(3)] == [(30, 40), (32, 40), (34, 40)]


def test_two_images_with_one_id(tmp_path):
    path, images = tiny_set(tmp_path, sizes=((30, 40), (30, 40)))
    data = json.loads(path.read_text())
    (images / "img1.png").rename(images / "img0.jpg")
    data["images"][1]["file_name"] = "img0.jpg"
    with pytest.raises(COCOAnnotationError, match=r"tiny\.json: image ids 1 and 2 share the file name 'img0'"):
        COCODataset(write_json(path, data), images)


# ---------------------------------------------------------------- bad files
def ann3(**kw):
    return lambda d: d["annotations"][2].update(kw)


BAD_FILES = {  # id: (change to the converted file, what the message must say)
    "unknown-category": (ann3(category_id=99), r"bad\.json: annotation id 3: category_id 99 is not among the category"),
    "negative-width": (ann3(bbox=[1, 2, -3, 4]), r"bad\.json: annotation id 3: bbox must be .* got \[1, 2, -3, 4\]"),
    "negative-height": (ann3(bbox=[1, 2, 3, -0.5]), r"bad\.json: annotation id 3: bbox .*width and height >= 0"),
    "nan": (ann3(bbox=[1, 2, float("nan"), 4]), r"bad\.json: annotation id 3: bbox must be 4 finite numbers.*nan"),
    "inf": (ann3(bbox=[float("inf"), 2, 3, 4]), r"bad\.json: annotation id 3: bbox .*inf"),
    "three-numbers": (ann3(bbox=[1, 2, 3]), r"bad\.json: annotation id 3: bbox must be 4"),
    "string-bbox": (ann3(bbox="1 2 3 4"), r"bad\.json: annotation id 3: bbox must be 4"),
    "unknown-image": (ann3(image_id=999), r"bad\.json: annotation id 3: image_id 999 is not among the 20 images"),
    "zero-height": (lambda d: d["images"][1].update(height=0), r"bad\.json: image id 2: .*height=0"),
    "no-file-name": (lambda d: d["images"][1].pop("file_name"), r"bad\.json: image id 2: needs a file_name"),
    "no-images": (lambda d: d.update(images=[]), r"bad\.json: the file lists no images"),
    "no-categories-list": (lambda d: d.pop("categories"), r"bad\.json: no list 'categories'"),
    "no-id": (lambda d: d["annotations"][4].pop("id"), r"bad\.json: annotations\[4\] is not an object with an 'id'"),
    "same-image-id": (lambda d: d["images"][3].update(id=1), r"bad\.json: image id 1 appears more than once"),
    "same-annotation-id": (lambda d: d["annotations"][5].update(id=2), r"bad\.json: annotation id 2 appears more"),
    "unnamed-category": (lambda d: d["categories"][1].pop("name"), r"bad\.json: category id 2 has no name"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file(coco_file, image_dir, tmp_path, case):
    change, pattern = BAD_FILES[case]
    path = edited(coco_file, tmp_path, change)
    with pytest.raises(COCOAnnotationError, match=pattern) as e:
        COCODataset(path, image_dir)
    assert isinstance(e.value, VOCAnnotationError) and isinstance(e.value, ValueError) and e.value.path == path


@pytest.mark.parametrize("text, pattern", [
    ('{"images": [], "annotations": []', r"bad\.json: not valid JSON \(Expecting"),
    ("[1, 2]", r"bad\.json: no list 'images'"),
    (b"\xff\xfe\x00", r"bad\.json: not valid JSON"),
])
def test_not_a_coco_file(tmp_path, text, pattern):
    path = tmp_path / "bad.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(COCOAnnotationError, match=pattern):
        load_coco(path)
    with pytest.raises(COCOAnnotationError, match=pattern):
        coco_classes(path)


def test_no_categories(tmp_path):
    path, images = tiny_set(tmp_path, categories=())
    with pytest.raises(COCOAnnotationError, match=r"tiny\.json: the file lists no categories"):
        coco_classes(path)
    assert len(COCODataset(path, images, classes=["dot"])) == 1              # no annotation needs one


def test_load_coco_is_quiet_and_indexes(coco_file, capsys):
    coco = load_coco(coco_file)
    assert capsys.readouterr().out == ""
    assert sorted(coco.imgs) == list(range(1, 21)) and sorted(coco.cats) == [1, 2, 3, 4]
    assert sum(len(v) for v in coco.imgToAnns.values()) == len(coco.anns)


def test_coco_records_direct(coco_file, voc):
    ids, records = coco_records(load_coco(coco_file), coco_file, SYNTHETIC_CLASSES)
    assert ids == list(range(1, 21)) and [r["filename"] for r in records] == [r["filename"] for r in voc.records]


# ---------------------------------------------------------------- missing and broken files
def test_missing_files(coco_file, image_dir, tmp_path):
    with pytest.raises(VOCMissingError, match=r"COCO annotation file not found: .*nope\.json"):
        COCODataset(tmp_path / "nope.json", image_dir)
    with pytest.raises(VOCMissingError, match=r"image folder not found: .*no_images"):
        COCODataset(coco_file, tmp_path / "no_images")
    path = edited(coco_file, tmp_path, lambda d: [d["images"][k].update(file_name=f"lost{k}.jpg") for k in (4, 7)])
    with pytest.raises(VOCMissingError, match=r"lost4\.jpg \(image id 5 in bad\.json; 2 of 20 listed images are "
                                              r"missing\)") as e:
        COCODataset(path, image_dir)
    assert e.value.path == image_dir / "lost4.jpg"


def test_read_image_errors(tmp_path):
    path, images = tiny_set(tmp_path, sizes=((30, 40), (30, 40), (30, 40)))
    ds = COCODataset(path, images, classes=["dot"])
    (images / "img0.png").unlink()
    with pytest.raises(VOCMissingError, match=r"img0\.png \(image id 1 in tiny\.json\)"):
        ds[0]
    (images / "img1.png").write_bytes(b"not an image at all")
    with pytest.raises(VOCImageError, match=r"img1\.png: cannot decode image \(.*; image id 2 in tiny\.json\)") as e:
        ds[1]
    assert e.value.path == images / "img1.png"
    Image.new("RGB", (41, 30)).save(images / "img2.png")
    with pytest.raises(VOCImageError, match=r"img2\.png: image is 30x41 \(HxW\) but image id 3 in tiny\.json says "
                                            r"30x40"):
        ds[2]


# ---------------------------------------------------------------- writing
def test_voc_to_coco_replaces_atomically(voc, tmp_path, monkeypatch):
    out = tmp_path / "sub" / "set.json"
    assert voc_to_coco(voc, out) == out and out.is_file()
    before = out.read_bytes()
    out.write_text("old")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(coco_mod.json, "dumps", boom)
    with pytest.raises(KeyboardInterrupt):
        voc_to_coco(voc, str(out))
    assert out.read_text() == "old" and sorted(p.name for p in out.parent.iterdir()) == ["set.json"]
    monkeypatch.undo()
    voc_to_coco(voc, str(out))
    assert out.read_bytes() == before
