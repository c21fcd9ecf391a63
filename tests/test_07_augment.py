"""Tests for p2s_lib.augment (chapter 07): noise objects, class corruption, build_batch."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2s_lib.augment import (NOISE_KINDS, RANDOM_STYLES, augment_objects, build_batch, corrupt_classes,
                             jitter_boxes, random_boxes, shift_boxes)
from p2s_lib.ordering import object_order
from p2s_lib.tokenizer import Tokenizer

TOK = Tokenizer(num_classes=4, num_bins=64, max_objects=10)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_targets(seed: int, batch: int, max_n: int = 8, num_classes: int = 4) -> list[dict]:
    g = gen(seed)
    out = []
    for _ in range(batch):
        n = int(torch.randint(0, max_n + 1, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 0.7
        out.append({"boxes": torch.cat([xy, xy + 0.05 + 0.25 * torch.rand(n, 2, generator=g)], 1),
                    "labels": torch.randint(0, num_classes, (n,), generator=g)})
    return out


def with_bos(tok: Tokenizer, target_row: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.tensor([tok.bos_id]), target_row])


# ---------------------------------------------------------------- noise primitives
def test_jitter_statistics_and_truncation():
    src = torch.tensor([[0.3, 0.3, 0.5, 0.7]]).repeat(50_000, 1)
    size = torch.tensor([0.2, 0.4, 0.2, 0.4])
    d = (jitter_boxes(src, gen(0)) - src) / size
    # N(0, 0.05) truncated at +-2 std: std = 0.05 * sqrt(1 - 2*2*phi(2)/(2*Phi(2)-1)) = 0.04398
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    expected_std = 0.05 * math.sqrt(1 - 4 * phi2 / math.erf(2 / math.sqrt(2)))
    assert abs(d.mean().item()) < 1e-3
    assert d.std().item() == pytest.approx(expected_std, rel=0.02)
    assert d.abs().max().item() <= 0.1 + 1e-5
    assert (d.abs() > 0.08).float().mean() > 0.005          # the tails reach the cut, not a narrower law


def test_jitter_clips_to_unit_square():
    src = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(1000, 1)
    out = jitter_boxes(src, gen(1))
    assert out.min() >= 0 and out.max() <= 1
    assert (out[:, 2] >= out[:, 0]).all() and (out[:, 3] >= out[:, 1]).all()


def test_shift_keeps_size_and_random_boxes_are_valid():
    src = torch.tensor([[0.4, 0.4, 0.5, 0.6]]).repeat(2000, 1)
    s = shift_boxes(src, gen(2))
    inside = (s[:, 0] > 0) & (s[:, 1] > 0) & (s[:, 2] < 1) & (s[:, 3] < 1)
    assert torch.allclose(s[inside, 2:] - s[inside, :2], torch.tensor([0.1, 0.2]), atol=1e-6)
    assert 0.4 < s[:, 0].add(s[:, 2]).div(2).mean() < 0.6              # uniform centres
    for style in RANDOM_STYLES:
        r = random_boxes(3000, gen(3), style)
        assert r.shape == (3000, 4) and r.min() >= 0 and r.max() <= 1
        assert (r[:, 2] >= r[:, 0]).all() and (r[:, 3] >= r[:, 1]).all()
    sq = random_boxes(3000, gen(4), "square")
    w, h = sq[:, 2] - sq[:, 0], sq[:, 3] - sq[:, 1]
    inside = (sq > 0).all(1) & (sq < 1).all(1)
    ratio = (w / h)[inside]
    assert ratio.min() > 0.73 and ratio.max() < 1.36
    with pytest.raises(ValueError, match="style"):
        random_boxes(3, gen(), "round")


# ---------------------------------------------------------------- augment_objects
def test_augment_objects_counts_labels_and_order():
    boxes = torch.tensor([[0.1, 0.1, 0.3, 0.4], [0.5, 0.5, 0.9, 0.7], [0.2, 0.6, 0.4, 0.9]])
    labels = torch.tensor([2, 0, 3])
    b, l, noise, kinds = augment_objects(boxes, labels, TOK, gen(0), return_kinds=True)
    assert b.shape == (10, 4) and l.shape == (10,) and noise.shape == (10,)
    assert torch.equal(b[:3], boxes) and torch.equal(l[:3], labels)    # real first, order kept
    assert torch.equal(noise, l == TOK.num_classes)                     # noise label exactly on noise
    assert torch.equal(noise, torch.arange(10) >= 3)
    assert (kinds[:3] == 0).all() and (kinds[3:] > 0).all()
    assert b.min() >= 0 and b.max() <= 1


def test_augment_objects_zero_objects_gives_random_boxes_only():
    b, l, noise, kinds = augment_objects(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), TOK, gen(0),
                                         return_kinds=True)
    assert len(b) == 10 and noise.all() and (l == TOK.num_classes).all()
    assert (kinds == NOISE_KINDS.index("random")).all()


def test_augment_objects_truncates_and_dup_share():
    boxes = torch.tensor([[0.1, 0.1, 0.3, 0.4]]).repeat(14, 1)
    b, l, noise = augment_objects(boxes, torch.zeros(14, dtype=torch.long), TOK, gen(0))
    assert len(b) == 10 and not noise.any()
    one = torch.tensor([[0.1, 0.1, 0.3, 0.4]])
    for share, n_dup in ((0.0, 0), (1.0, 9), (0.5, 4)):                 # round(0.5 * 9) = 4 (banker's)
        *_, kinds = augment_objects(one, torch.tensor([1]), TOK, gen(5), dup_share=share, return_kinds=True)
        assert (kinds == 1).sum() == n_dup


def test_duplicate_share_is_uniform_over_images():
    g, counts = gen(7), []
    one = torch.tensor([[0.1, 0.1, 0.3, 0.4]])
    for _ in range(900):
        *_, kinds = augment_objects(one, torch.tensor([1]), TOK, g, return_kinds=True)
        counts.append(int((kinds == 1).sum()))
    hist = torch.bincount(torch.tensor(counts), minlength=10).float() / 900    # 0..9 duplicates, each 1/10
    assert hist.min() > 0.06 and hist.max() < 0.14


def test_duplicates_overlap_their_source():
    one = torch.tensor([[0.3, 0.3, 0.6, 0.7]])
    b, _, _, kinds = augment_objects(one, torch.tensor([1]), TOK, gen(0), dup_share=1.0, return_kinds=True)
    from torchvision.ops import box_iou
    assert box_iou(b[kinds == 1], one).min() > 0.6


# ---------------------------------------------------------------- build_batch
def test_every_sequence_has_exactly_max_objects():
    targets = make_targets(0, 8, max_n=14)                               # some above max_objects
    inp, tgt, w = build_batch(targets, TOK, generator=gen(0))
    assert inp.shape == tgt.shape == w.shape == (8, TOK.max_seq_len - 1)
    for b in range(8):
        boxes, labels = TOK.decode(with_bos(TOK, tgt[b]))
        assert len(labels) == TOK.max_objects
        n_real = min(len(targets[b]["labels"]), TOK.max_objects)
        assert (labels[:n_real] < TOK.num_classes).all() and (labels[n_real:] == TOK.num_classes).all()
    assert (tgt[:, -1] == TOK.eos_id).all() and not (tgt == TOK.pad_id).any()


def test_targets_keep_true_classes_in_chosen_order():
    targets = make_targets(1, 4)
    _, tgt, _ = build_batch(targets, TOK, order="area", generator=gen(0))
    for b, t in enumerate(targets):
        perm = object_order(t["boxes"], "area")
        boxes, labels = TOK.decode(with_bos(TOK, tgt[b]))
        n = len(perm)
        assert torch.equal(labels[:n], t["labels"][perm])
        assert torch.allclose(boxes[:n], t["boxes"][perm], atol=0.5 / (TOK.num_bins - 1) + 1e-6)


def test_weights_noise_coords_zero_noise_class_one_eos_tenth():
    targets = make_targets(2, 6)
    _, tgt, w = build_batch(targets, TOK, generator=gen(0), eos_weight=0.1)
    for b, t in enumerate(targets):
        n = len(t["labels"])
        obj_w = w[b, :-1].reshape(TOK.max_objects, 5)
        assert (obj_w[:n] == 1).all()                                    # real objects: all five tokens
        assert (obj_w[n:, :4] == 0).all() and (obj_w[n:, 4] == 1).all()  # noise: coords 0, class 1
        assert w[b, -1].item() == pytest.approx(0.1)                     # EOS target
        classes = tgt[b, :-1].reshape(TOK.max_objects, 5)[:, 4]
        assert ((classes == TOK.noise_class_id) == (torch.arange(TOK.max_objects) >= n)).all()


def test_plain_sequences_pad_targets_get_eos_weight():
    targets = make_targets(3, 5)
    targets[0] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    inp, tgt, w = build_batch(targets, TOK, order="none", augment=False, eos_weight=0.1)
    expected = TOK.encode_batch([(t["boxes"], t["labels"]) for t in targets])
    assert torch.equal(inp, expected[:, :-1]) and torch.equal(tgt, expected[:, 1:])    # no corruption
    pad_or_eos = (tgt == TOK.pad_id) | (tgt == TOK.eos_id)
    assert torch.allclose(w[pad_or_eos], torch.tensor(0.1)) and (w[~pad_or_eos] == 1).all()
    assert torch.allclose(w[0], torch.tensor(0.1))                      # the empty image: EOS, then PAD


def test_zero_object_images_in_a_batch():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    inp, tgt, w = build_batch([empty, empty], TOK, generator=gen(0))
    labels = tgt[:, :-1].reshape(2, TOK.max_objects, 5)[..., 4]
    assert (labels == TOK.noise_class_id).all()
    assert (w[:, :-1].reshape(2, TOK.max_objects, 5)[..., :4] == 0).all()


def test_input_target_alignment_only_class_tokens_differ():
    targets = make_targets(4, 6)
    inp, tgt, _ = build_batch(targets, TOK, generator=gen(0))
    assert (inp[:, 0] == TOK.bos_id).all()
    same = inp[:, 1:] == tgt[:, :-1]
    class_slot = torch.zeros_like(same)
    class_slot[:, 4::5] = True
    assert same[~class_slot].all()                                       # coordinates identical
    assert TOK.is_class(inp[:, 1:][class_slot]).all()                    # class slots still hold classes
    assert not same[class_slot].all()                                    # and they were corrupted


def test_no_corruption_when_probability_zero():
    targets = make_targets(5, 4)
    inp, tgt, _ = build_batch(targets, TOK, generator=gen(0), class_corruption=0.0)
    assert torch.equal(inp[:, 1:], tgt[:, :-1])


def test_class_corruption_statistics():
    tok = Tokenizer(num_classes=5, num_bins=32, max_objects=4)
    seq = tok.encode(torch.tensor([[0.1, 0.1, 0.2, 0.2]] * 4), torch.tensor([0, 1, 2, 3]))[None].repeat(5000, 1)
    is_cls = tok.is_class(seq)
    full = corrupt_classes(seq, tok, 1.0, gen(0))[is_cls]
    kept = (full == seq[is_cls]).float().mean().item()
    assert (full == tok.noise_class_id).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert kept == pytest.approx(0.5 / 5, abs=0.015)                     # only by chance: a random class that matches
    real = full[full != tok.noise_class_id] - tok.class_offset
    hist = torch.bincount(real, minlength=5).float() / len(real)
    assert hist.min() > 0.17 and hist.max() < 0.23                       # uniform over the real classes
    half = corrupt_classes(seq, tok, 0.5, gen(1))
    assert torch.equal(half[~is_cls], seq[~is_cls])
    assert (half[is_cls] == seq[is_cls]).float().mean().item() == pytest.approx(0.5 + 0.5 * 0.1, abs=0.02)
    with pytest.raises(ValueError, match="prob"):
        corrupt_classes(seq, tok, 1.5)


def test_deterministic_under_a_seed():
    targets = make_targets(6, 5)
    a = build_batch(targets, TOK, generator=gen(42))
    b = build_batch(targets, TOK, generator=gen(42))
    c = build_batch(targets, TOK, generator=gen(43))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])


def test_build_batch_does_not_change_thread_count():
    n = torch.get_num_threads()
    build_batch(make_targets(7, 2), TOK, generator=gen(0))
    assert torch.get_num_threads() == n


def test_bad_input_raises_clear_errors():
    good = make_targets(8, 2, max_n=3)
    good[0] = {"boxes": torch.tensor([[0.1, 0.1, 0.2, 0.2]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match="NORMALIZED"):
        build_batch([{"boxes": good[0]["boxes"] * 128, "labels": good[0]["labels"]}], TOK)
    with pytest.raises(ValueError, match=r"boxes \[n, 4\]"):
        build_batch([{"boxes": torch.zeros(2, 3), "labels": torch.zeros(2)}], TOK)
    with pytest.raises(ValueError, match=r"labels \[n\]"):
        build_batch([{"boxes": torch.zeros(2, 4), "labels": torch.zeros(3)}], TOK)
    with pytest.raises(ValueError, match=r"targets\[1\].*lie in \[0, 4\)"):
        build_batch([good[0], {"boxes": torch.tensor([[0.1, 0.1, 0.2, 0.2]]), "labels": torch.tensor([4])}], TOK)
    with pytest.raises(ValueError, match="xmin <= xmax"):
        build_batch([{"boxes": torch.tensor([[0.5, 0.1, 0.2, 0.2]]), "labels": torch.tensor([0])}], TOK)
    with pytest.raises(ValueError, match="order"):
        build_batch(good, TOK, order="size")
    with pytest.raises(ValueError, match="class_corruption"):
        build_batch(good, TOK, class_corruption=2.0)
    with pytest.raises(ValueError, match="must be a dict"):
        build_batch([good[0]["boxes"]], TOK)


# ---------------------------------------------------------------- laws
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 6), max_n=st.integers(0, 14),
       max_objects=st.integers(1, 12), order=st.sampled_from(["random", "area", "dist2ori", "none"]),
       style=st.sampled_from(RANDOM_STYLES))
def test_invariants_of_augmented_batches(seed, batch, max_n, max_objects, order, style):
    tok = Tokenizer(num_classes=3, num_bins=100, max_objects=max_objects)
    targets = make_targets(seed, batch, max_n=max_n, num_classes=3)
    inp, tgt, w = build_batch(targets, tok, order=order, generator=gen(seed), random_style=style)
    L = tok.max_seq_len - 1
    assert inp.shape == tgt.shape == w.shape == (batch, L)
    assert all(v in (0.0, 1.0) or abs(v - 0.1) < 1e-6 for v in w.flatten().tolist())
    n_real = torch.tensor([min(len(t["labels"]), max_objects) for t in targets])
    assert int((w == 0).sum()) == 4 * int((max_objects - n_real).sum())  # noise coordinates only
    assert tok.is_coord(tgt[:, :-1].reshape(batch, max_objects, 5)[..., :4]).all()
    assert tok.is_class(tgt[:, :-1].reshape(batch, max_objects, 5)[..., 4]).all()
    assert ((inp[:, 1:] == tgt[:, :-1]) | tok.is_class(inp[:, 1:])).all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 10))
def test_augment_objects_law(seed, n):
    g = gen(seed)
    xy = torch.rand(n, 2, generator=g) * 0.8
    boxes = torch.cat([xy, xy + 0.2 * torch.rand(n, 2, generator=g)], 1)
    labels = torch.randint(0, 4, (n,), generator=g)
    b, l, noise = augment_objects(boxes, labels, TOK, g)
    assert len(b) == TOK.max_objects and int(noise.sum()) == TOK.max_objects - n
    assert torch.equal(noise, l == TOK.num_classes) and ((b[noise] >= 0) & (b[noise] <= 1)).all()
    assert torch.equal(b[:n], boxes) and torch.equal(l[:n], labels)
