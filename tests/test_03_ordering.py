"""Unit tests for p2s_lib.ordering (chapter 03)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2s_lib.ordering import ORDERS, object_order, order_objects


def random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, 2, generator=g)
    return torch.cat([xy.min(dim=1).values, xy.max(dim=1).values], dim=1)


def area(b):
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


BOXES = torch.tensor([[0.5, 0.5, 0.6, 0.6],    # small, far
                      [0.0, 0.1, 0.9, 0.9],    # large, near origin
                      [0.2, 0.0, 0.5, 0.4],    # medium
                      [0.05, 0.05, 0.1, 0.1]])  # tiny, nearest origin


def test_deterministic_orders_on_example():
    assert object_order(BOXES, "none").tolist() == [0, 1, 2, 3]
    assert object_order(BOXES, "area").tolist() == [1, 2, 0, 3]
    assert object_order(BOXES, "dist2ori").tolist() == [3, 1, 2, 0]  # 0.0707, 0.1, 0.2, 0.707


def test_ties_keep_annotation_order():
    b = torch.tensor([[0.0, 0.0, 0.25, 0.25], [0.5, 0.5, 0.75, 0.75], [0.125, 0.125, 0.375, 0.375]])  # exact ties
    assert object_order(b, "area").tolist() == [0, 1, 2]
    sym = torch.tensor([[0.25, 0.5, 0.75, 0.75], [0.5, 0.25, 0.75, 0.75]])  # same distance to the origin
    assert object_order(sym, "dist2ori").tolist() == [0, 1]


def test_unknown_order_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown order 'size'; valid orders: random, area, dist2ori, none"):
        object_order(BOXES, "size")
    with pytest.raises(ValueError, match="unknown order"):
        object_order(BOXES, None)
    with pytest.raises(ValueError, match="unknown order"):
        order_objects(BOXES, torch.arange(4), "Random")


def test_bad_boxes_and_labels():
    with pytest.raises(ValueError, match="shape"):
        object_order(torch.rand(3, 5), "area")
    with pytest.raises(ValueError, match="NaN"):
        object_order(torch.tensor([[0.1, float("nan"), 0.2, 0.3]]), "area")
    with pytest.raises(ValueError, match="one label per box"):
        order_objects(BOXES, torch.arange(3), "none")


@pytest.mark.parametrize("order", ORDERS)
def test_empty_and_single(order):
    assert object_order(torch.zeros(0, 4), order).shape == (0,)
    assert object_order([], order).dtype == torch.int64
    assert object_order(BOXES[:1], order).tolist() == [0]
    b, l = order_objects(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), order)
    assert b.shape == (0, 4) and l.shape == (0,)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 30), seed=st.integers(0, 10_000), order=st.sampled_from(ORDERS))
def test_every_order_is_a_permutation(n, seed, order):
    perm = object_order(random_boxes(n, seed), order, generator=torch.Generator().manual_seed(seed))
    assert perm.dtype == torch.int64 and perm.shape == (n,)
    assert sorted(perm.tolist()) == list(range(n))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 30), seed=st.integers(0, 10_000))
def test_area_is_sorted_largest_first(n, seed):
    b = random_boxes(n, seed)
    a = area(b)[object_order(b, "area")]
    assert bool((a[1:] <= a[:-1]).all())


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 30), seed=st.integers(0, 10_000))
def test_dist2ori_is_sorted_nearest_first(n, seed):
    b = random_boxes(n, seed)
    d = (b[:, 0] ** 2 + b[:, 1] ** 2)[object_order(b, "dist2ori")]
    assert bool((d[1:] >= d[:-1]).all())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 20), seed=st.integers(0, 10_000), order=st.sampled_from(ORDERS))
def test_order_objects_keeps_pairs_together(n, seed, order):
    b = random_boxes(n, seed)
    labels = torch.arange(n) * 7
    g = torch.Generator().manual_seed(seed)
    ob, ol = order_objects(b, labels, order, generator=g)
    assert torch.equal(ob, b[ol // 7])                     # each box still has its own label
    perm = object_order(b, order, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(ol, labels[perm])                   # same generator state -> same permutation


def test_random_reshuffles_each_call_and_replays_with_seed():
    b = random_boxes(8, 0)
    g = torch.Generator().manual_seed(123)
    first = [object_order(b, "random", g).tolist() for _ in range(5)]
    assert len({tuple(p) for p in first}) > 1              # the generator advances
    g = torch.Generator().manual_seed(123)
    assert [object_order(b, "random", g).tolist() for _ in range(5)] == first
    torch.manual_seed(0)
    a = object_order(b, "random")                          # no generator: global RNG
    torch.manual_seed(0)
    assert torch.equal(object_order(b, "random"), a)


def test_random_is_roughly_uniform():
    g = torch.Generator().manual_seed(0)
    firsts = torch.stack([object_order(BOXES, "random", g)[0] for _ in range(4000)])
    counts = torch.bincount(firsts, minlength=4).float() / 4000
    assert bool(((counts - 0.25).abs() < 0.03).all())


def test_deterministic_orders_ignore_generator():
    g = torch.Generator().manual_seed(0)
    for order in ("area", "dist2ori", "none"):
        assert torch.equal(object_order(BOXES, order, g), object_order(BOXES, order))


def test_integer_pixel_boxes_accepted():
    px = torch.tensor([[10, 10, 20, 20], [0, 0, 50, 50]])
    assert object_order(px, "area").tolist() == [1, 0]
    assert object_order(px, "dist2ori").tolist() == [1, 0]
