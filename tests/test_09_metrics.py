"""Tests for p2s_lib.metrics (chapter 09): COCO numbers = pycocotools, VOC numbers = the devkit rule."""
import contextlib
import copy
import io
import json

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from p2s_lib.metrics import evaluate, export_coco_json, greedy_hits, plot_pr_curves, recall_at_iou, to_coco, voc_ap

STATS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
         "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


# ---------------------------------------------------------------- helpers
def random_case(rng: np.random.Generator, n_images: int, num_classes: int, max_gt: int, max_det: int,
                size: float = 300.0, ties: bool = False, crowded: bool = False):
    """Objects of all sizes; detections = jittered copies (some mislabelled) + random boxes."""
    preds, targets = [], []
    for _ in range(n_images):
        ng, nd = int(rng.integers(0, max_gt + 1)), int(rng.integers(0, max_det + 1))

        def boxes(n):
            xy = rng.uniform(0, size, (n, 2))
            wh = rng.uniform(1, size / 2, (n, 2)) * rng.choice([0.05, 0.2, 0.5, 1.0], (n, 1))
            return torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)

        gb, db = boxes(ng), boxes(nd)
        if crowded and ng:                                   # many overlapping objects
            gb[ng // 2:] = gb[: ng - ng // 2] + torch.tensor(rng.normal(0, 3, (ng - ng // 2, 4)), dtype=torch.float32).abs()
            gb[:, 2:] = torch.maximum(gb[:, 2:], gb[:, :2] + 1)
        gl = torch.tensor(rng.integers(0, num_classes, ng), dtype=torch.int64)
        dl = torch.tensor(rng.integers(0, num_classes, nd), dtype=torch.int64)
        if ng and nd:
            pick = rng.integers(0, ng, nd)
            jit = rng.random(nd) < 0.6
            w = (gb[pick, 2:] - gb[pick, :2]).repeat(1, 2)
            jb = gb[pick] + torch.tensor(rng.normal(0, 0.1, (nd, 4)), dtype=torch.float32) * w
            jb = torch.cat([torch.minimum(jb[:, :2], jb[:, 2:]), torch.maximum(jb[:, :2], jb[:, 2:])], 1)
            db[torch.from_numpy(jit)] = jb[torch.from_numpy(jit)]
            same = torch.from_numpy(jit & (rng.random(nd) < 0.8))
            dl[same] = gl[pick][same]
        sc = torch.tensor(rng.random(nd), dtype=torch.float32)
        if ties:
            sc = torch.round(sc * 4) / 4
        preds.append({"boxes": db, "scores": sc, "labels": dl})
        targets.append({"boxes": gb, "labels": gl, "difficult": torch.from_numpy(rng.random(ng) < 0.2)})
    return preds, targets


def cocoeval(preds, targets, num_classes):
    gt, dets = to_coco(preds, targets, num_classes)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        E = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


def voc_reference(preds, targets, num_classes, use_07):
    """Straight port of the VOC devkit loop (py-faster-rcnn's voc_eval), one class at a time."""
    aps = []
    for c in range(num_classes):
        gts, npos = {}, 0
        for i, t in enumerate(targets):
            m = t["labels"] == c
            diff = t.get("difficult", torch.zeros(len(t["labels"]), dtype=torch.bool))[m]
            gts[i] = (t["boxes"][m].double(), diff.tolist(), [False] * int(m.sum()))
            npos += int((~diff).sum())
        dets = [(float(s), i, j) for i, p in enumerate(preds)
                for j, (s, l) in enumerate(zip(p["scores"].tolist(), p["labels"].tolist())) if l == c]
        dets.sort(key=lambda x: -x[0])                       # stable: ties keep (image, index) order
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for d, (_, i, j) in enumerate(dets):
            bb, diff, used = gts[i]
            ovmax = -np.inf
            if len(bb):
                ious = box_iou(preds[i]["boxes"][j].double()[None], bb)[0].numpy()
                ovmax, jmax = ious.max(), int(ious.argmax())
            if ovmax > 0.5:
                if not diff[jmax]:
                    if not used[jmax]:
                        tp[d], used[jmax] = 1, True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        if npos == 0:
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if use_07:
            ap = sum((np.max(prec[rec >= t]) if np.sum(rec >= t) else 0) / 11 for t in np.arange(0.0, 1.1, 0.1))
        else:
            mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
            for k in range(mpre.size - 1, 0, -1):
                mpre[k - 1] = max(mpre[k - 1], mpre[k])
            k = np.where(mrec[1:] != mrec[:-1])[0]
            ap = np.sum((mrec[k + 1] - mrec[k]) * mpre[k + 1])
        aps.append(ap)
    return float(np.mean(aps)) if aps else -1.0


WORKED_GTS = torch.tensor([[10.0, 10, 50, 50], [60, 20, 100, 70], [20, 64, 60, 104]])
WORKED_DETS = torch.tensor([[12.0, 8, 52, 48], [4, 14, 44, 54], [62, 24, 98, 74], [70, 80, 110, 110], [26, 70, 66, 110]])
WORKED_SCORES = torch.tensor([0.95, 0.90, 0.80, 0.60, 0.40])


def worked(difficult=(False, False, True), n_dets=5):
    p = [{"boxes": WORKED_DETS[:n_dets], "scores": WORKED_SCORES[:n_dets], "labels": torch.zeros(n_dets, dtype=torch.int64)}]
    t = [{"boxes": WORKED_GTS, "labels": torch.zeros(3, dtype=torch.int64), "difficult": torch.tensor(difficult)}]
    return p, t


# ---------------------------------------------------------------- COCO = pycocotools
def test_matches_pycocotools_on_random_cases():
    rng = np.random.default_rng(0)
    compared = 0
    for case in range(100):
        K = int(rng.integers(1, 5))
        kind = case % 5
        preds, targets = random_case(
            rng, n_images=int(rng.integers(1, 6)), num_classes=K,
            max_gt=[3, 8, 30, 0, 5][kind],                   # kind 3: no objects at all
            max_det=[5, 20, 40, 10, 160][kind],              # kind 4: > 100 detections per image
            ties=case % 2 == 0, crowded=kind == 2)
        if kind == 1:                                        # some images without predictions
            preds[0] = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
        if sum(len(p["scores"]) for p in preds) == 0:        # pycocotools' loadRes needs one detection
            continue
        ours, ref = evaluate(preds, targets, num_classes=K), cocoeval(preds, targets, K)
        np.testing.assert_allclose(ours["coco_stats"], ref.stats, atol=1e-6, err_msg=f"case {case}")
        np.testing.assert_allclose([ours[k] for k in STATS], ref.stats, atol=1e-6)
        np.testing.assert_allclose(ours["precision"].numpy(), ref.eval["precision"][:, :, :, 0, 2], atol=1e-6)
        pr = ref.eval["precision"][:, :, :, 0, 2]
        per_class = [pr[:, :, k].mean() if (pr[:, :, k] > -1).all() else -1.0 for k in range(K)]
        np.testing.assert_allclose(ours["ap_per_class"], per_class, atol=1e-6)
        np.testing.assert_allclose(ours["ap50_per_class"], [pr[0, :, k].mean() if per_class[k] > -1 else -1 for k in range(K)], atol=1e-6)
        compared += 1
    assert compared >= 70


def test_more_than_100_detections_in_one_image_and_class():
    rng = np.random.default_rng(1)
    g = torch.tensor(rng.uniform(0, 200, (40, 2)), dtype=torch.float32)
    gts = torch.cat([g, g + 30], 1)
    d = gts[rng.integers(0, 40, 250)] + torch.tensor(rng.normal(0, 4, (250, 4)), dtype=torch.float32)
    d = torch.cat([torch.minimum(d[:, :2], d[:, 2:]), torch.maximum(d[:, :2], d[:, 2:])], 1)
    preds = [{"boxes": d, "scores": torch.tensor(rng.random(250), dtype=torch.float32), "labels": torch.zeros(250, dtype=torch.int64)}]
    targets = [{"boxes": gts, "labels": torch.zeros(40, dtype=torch.int64)}]
    ours, ref = evaluate(preds, targets), cocoeval(preds, targets, 1)
    np.testing.assert_allclose(ours["coco_stats"], ref.stats, atol=1e-6)
    assert ours["voc_map_50"] >= ours["map_50"] - 0.05     # VOC keeps all 250, COCO only the top 100


def test_class_without_ground_truth_is_excluded():
    p, t = worked(difficult=(False, False, False))
    p[0]["labels"] = torch.tensor([0, 0, 0, 2, 0])            # a false positive of class 2, which has no objects
    r = evaluate(p, t, num_classes=3)
    assert r["ap_per_class"][1] == -1 and r["ap_per_class"][2] == -1
    assert r["voc_ap50_per_class"][1:] == [-1.0, -1.0]
    assert r["map"] == pytest.approx(r["ap_per_class"][0])
    ref = cocoeval(p, t, 3)
    np.testing.assert_allclose(r["coco_stats"], ref.stats, atol=1e-6)


# ---------------------------------------------------------------- VOC
def test_worked_example_by_hand():
    p, t = worked(difficult=(False, False, False))
    r = evaluate(p, t)
    # TP FP TP FP TP: precision 1, .5, .667, .5, .6 at recall 1/3, 1/3, 2/3, 2/3, 1
    assert r["voc_map_50"] == pytest.approx((1 + 2 / 3 + 0.6) / 3)
    assert r["voc07_map_50"] == pytest.approx((4 * 1 + 3 * 2 / 3 + 4 * 0.6) / 11)
    assert r["map_50"] == pytest.approx((34 * 1 + 33 * 2 / 3 + 34 * 0.6) / 101)
    assert r["map_small"] == -1 and r["map_large"] == -1


def test_voc_ignores_difficult_coco_does_not():
    p, t = worked(difficult=(False, False, True), n_dets=4)
    r = evaluate(p, t)
    assert r["voc_map_50"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)   # 2 positives, duplicate FP in between
    assert r["map_50"] == pytest.approx((34 * 1 + 33 * 2 / 3) / 101)  # C counts as a miss


def test_detection_of_difficult_object_is_neither_tp_nor_fp():
    p, t = worked(difficult=(True, False, False))
    # d1 on difficult A: ignored; d2's best object is also A: ignored; d3 TP, d4 FP, d5 TP
    r = evaluate(p, t)
    assert r["voc_map_50"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_voc_duplicate_on_taken_best_object_is_fp_even_if_another_is_free():
    gts = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 12]])
    dets = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10.5]])   # both prefer object 0
    p = [{"boxes": dets, "scores": torch.tensor([0.9, 0.8]), "labels": torch.zeros(2, dtype=torch.int64)}]
    t = [{"boxes": gts, "labels": torch.zeros(2, dtype=torch.int64)}]
    r = evaluate(p, t)
    assert r["voc_map_50"] == pytest.approx(0.5)                 # devkit: d2 is a FP
    assert r["map_50"] == pytest.approx(1.0)                     # COCO: d2 takes the free object 1


def test_voc_matches_devkit_port():
    rng = np.random.default_rng(3)
    for case in range(20):
        K = int(rng.integers(1, 4))
        preds, targets = random_case(rng, int(rng.integers(1, 6)), K, 6, 30, ties=case % 2 == 0)
        r = evaluate(preds, targets, num_classes=K)
        assert r["voc_map_50"] == pytest.approx(voc_reference(preds, targets, K, False), abs=1e-9)
        assert r["voc07_map_50"] == pytest.approx(voc_reference(preds, targets, K, True), abs=1e-9)


def test_voc_ap_function():
    rec, prec = torch.tensor([0.5, 0.5, 1.0]), torch.tensor([1.0, 0.5, 2 / 3])
    assert voc_ap(rec, prec) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap(torch.tensor([0.3], dtype=torch.float64), torch.tensor([1.0]), use_07_metric=True) == pytest.approx(3 / 11)  # devkit: 0.3 < np.arange(...)[3]


# ---------------------------------------------------------------- empty inputs
def test_empty_predictions_give_zero():
    _, t = worked()
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    r = evaluate(empty, t)
    assert r["map"] == 0 and r["map_50"] == 0 and r["mar_100"] == 0 and r["voc_map_50"] == 0
    assert r["map_small"] == -1                                  # no small objects either


def test_empty_targets_and_empty_lists():
    p, _ = worked()
    none = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    r = evaluate(p, none)
    assert all(r[k] == -1 for k in STATS) and r["voc_map_50"] == -1
    r = evaluate([], [])
    assert r["num_classes"] == 0 and r["map"] == -1 and r["precision"].shape == (10, 101, 0)


# ---------------------------------------------------------------- laws
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), data=st.data())
def test_invariant_to_order_of_images_and_detections(seed, data):
    rng = np.random.default_rng(seed)
    preds, targets = random_case(rng, n_images=data.draw(st.integers(1, 5)), num_classes=3, max_gt=6, max_det=25)
    distinct = iter(rng.permutation(10_000) / 10_000)        # distinct over all images: ties across images
    for p in preds:                                          # are broken by image order (pycocotools too)
        p["scores"] = torch.tensor([next(distinct) for _ in p["scores"]], dtype=torch.float64)
    base = evaluate(preds, targets, num_classes=3)
    img = data.draw(st.permutations(range(len(preds))))
    shuffled_p, shuffled_t = [], []
    for i in img:
        dp = torch.from_numpy(rng.permutation(len(preds[i]["scores"])))
        gp = torch.from_numpy(rng.permutation(len(targets[i]["labels"])))
        shuffled_p.append({k: v[dp] for k, v in preds[i].items()})
        shuffled_t.append({k: v[gp] for k, v in targets[i].items()})
    other = evaluate(shuffled_p, shuffled_t, num_classes=3)
    for k in STATS + ["voc_map_50", "voc07_map_50"]:
        assert other[k] == pytest.approx(base[k], abs=1e-12), k


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_perfect_detector_scores_one(seed):
    rng = np.random.default_rng(seed)
    _, targets = random_case(rng, n_images=3, num_classes=2, max_gt=5, max_det=0)
    targets = [dict(t, difficult=torch.zeros(len(t["labels"]), dtype=torch.bool)) for t in targets]
    preds = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets]
    r = evaluate(preds, targets, num_classes=2)
    if r["map"] > -1:
        assert r["map"] == pytest.approx(1.0) and r["voc_map_50"] == pytest.approx(1.0) and r["mar_100"] == pytest.approx(1.0)


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    p, t = worked()
    with pytest.raises(ValueError, match="same length"):
        evaluate(p, t + t)
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        evaluate([dict(p[0], boxes=torch.zeros(5, 3))], t)
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        evaluate(p, [dict(t[0], boxes=torch.zeros(3, 4, 1))])
    with pytest.raises(ValueError, match="scores"):
        evaluate([dict(p[0], scores=torch.zeros(4))], t)
    with pytest.raises(ValueError, match="labels"):
        evaluate(p, [dict(t[0], labels=torch.zeros(2, dtype=torch.int64))])
    with pytest.raises(ValueError, match="x2 >= x1"):
        evaluate([dict(p[0], boxes=WORKED_DETS[:, [2, 1, 0, 3]])], t)
    with pytest.raises(ValueError, match="finite"):
        evaluate([dict(p[0], boxes=torch.full((5, 4), float("nan")))], t)
    with pytest.raises(ValueError, match="num_classes=1"):
        evaluate([dict(p[0], labels=torch.tensor([0, 0, 1, 0, 0]))], t, num_classes=1)
    with pytest.raises(ValueError, match="integers"):
        evaluate([dict(p[0], labels=torch.tensor([0, 0, -1, 0, 0]))], t)
    with pytest.raises(ValueError, match="keys"):
        evaluate([{"boxes": WORKED_DETS}], t)


# ---------------------------------------------------------------- export and plots
def test_export_coco_json_roundtrip(tmp_path):
    p, t = worked()
    path = export_coco_json(p, ["000005"], tmp_path / "dets.json", class_names=["cat"], category_ids=[17])
    rows = json.loads(path.read_text())
    assert len(rows) == 5 and rows[0]["image_id"] == "000005" and rows[0]["category_id"] == 17
    assert rows[0]["category_name"] == "cat" and rows[0]["score"] == pytest.approx(0.95)
    assert rows[0]["bbox"] == pytest.approx([12.0, 8.0, 40.0, 40.0])
    with pytest.raises(ValueError, match="one image id"):
        export_coco_json(p, [1, 2], tmp_path / "x.json")


def test_exported_file_gives_same_ap_through_pycocotools(tmp_path):
    rng = np.random.default_rng(5)
    preds, targets = random_case(rng, 4, 2, 5, 20)
    path = export_coco_json(preds, [i + 1 for i in range(4)], tmp_path / "d.json")
    gt, _ = to_coco(preds, targets, 2)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        E = COCOeval(coco_gt, coco_gt.loadRes(str(path)), "bbox")
        E.evaluate(); E.accumulate(); E.summarize()
    assert E.stats[0] == pytest.approx(evaluate(preds, targets, num_classes=2)["map"], abs=1e-6)


def test_plot_pr_curves():
    p, t = worked()
    r = evaluate(p, t)
    ax = plot_pr_curves(r, ["thing"], iou_threshold=0.75)
    assert len(ax.lines) == 1 and "thing" in ax.get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError, match="iou_threshold"):
        plot_pr_curves(r, iou_threshold=0.42)


# ---------------------------------------------------------------- recall at IoU
def _dets(boxes, labels, scores=None) -> dict:
    boxes = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
    scores = torch.linspace(1, 0.5, len(boxes)) if scores is None else torch.tensor(scores)
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.long), "scores": scores}


def test_recall_one_prediction_takes_one_box():
    truth = _dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0])
    assert recall_at_iou([_dets([[0, 0, 10, 10]], [0])], [truth]) == 0.5
    assert recall_at_iou([_dets([[0, 0, 10, 10]] * 2, [0, 0])], [truth]) == 1.0


def test_greedy_hits_marks_the_higher_scored_of_two_copies():
    truth = _dets([[0, 0, 10, 10]], [0])
    copies = _dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], scores=[0.2, 0.9])
    assert greedy_hits(copies, truth).tolist() == [False, True]       # the later, higher-scored copy takes the box
    assert greedy_hits(_dets([], []), truth).tolist() == []


def test_recall_class_and_threshold():
    truth = _dets([[0, 0, 10, 10]], [1])
    half = _dets([[0, 0, 10, 5]], [1])                                  # IoU 0.5 exactly
    assert recall_at_iou([half], [truth], iou_threshold=0.5) == 1.0
    assert recall_at_iou([half], [truth], iou_threshold=0.51) == 0.0
    wrong = _dets([[0, 0, 10, 10]], [2])
    assert recall_at_iou([wrong], [truth]) == 0.0
    assert recall_at_iou([wrong], [truth], class_agnostic=True) == 1.0


def test_recall_empty_inputs_and_errors():
    empty = _dets([], [])
    assert recall_at_iou([empty], [empty]) == 0.0                        # no objects: nothing to find
    assert recall_at_iou([empty], [_dets([[0, 0, 5, 5]], [0])]) == 0.0
    with pytest.raises(ValueError, match="prediction dicts"):
        recall_at_iou([empty], [])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(1, 30), st.integers(1, 30),
                          st.integers(0, 2)), min_size=1, max_size=6),
       st.randoms(use_true_random=False))
def test_recall_bounds_and_order_invariance(objects, rnd):
    """Recall lies in [0, 1], the truth finds itself, and the order the predictions are listed in
    (scores attached) changes nothing: they are matched in score order."""
    boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in objects]
    labels = [c for *_, c in objects]
    truth = _dets(boxes, labels)
    preds = _dets([[b[0] + 2, b[1], b[2] + 2, b[3]] for b in boxes], labels)
    r = recall_at_iou([preds], [truth])
    assert recall_at_iou([truth], [truth]) == 1.0
    perm = list(range(len(boxes)))
    rnd.shuffle(perm)
    shuffled = {k: v[perm] for k, v in preds.items()}
    assert recall_at_iou([shuffled], [truth]) == r
