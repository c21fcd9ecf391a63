"""Unit tests for p2s_lib.quantize (chapter 01)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2s_lib.quantize import (denormalize_boxes, dequantize, max_quantization_error, normalize_boxes, quantize,
                              snap_boxes)

bins_st = st.integers(min_value=2, max_value=4096)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def test_quantize_small_example():
    q = quantize(torch.tensor([0.0, 0.1, 0.5, 0.74, 1.0]), 5)
    assert q.dtype == torch.int64
    assert q.tolist() == [0, 0, 2, 3, 4]


def test_quantize_clips_out_of_range_and_inf():
    q = quantize(torch.tensor([-0.5, 1.5, float("-inf"), float("inf")]), 10)
    assert q.tolist() == [0, 9, 0, 9]


def test_quantize_keeps_shape_and_accepts_lists():
    assert quantize(torch.rand(3, 7, 4), 100).shape == (3, 7, 4)
    assert quantize([0.0, 1.0], 3).tolist() == [0, 2]
    assert quantize(torch.tensor([0, 1]), 3).tolist() == [0, 2]  # integer input is a coordinate too


def test_quantize_nan_is_value_error():
    with pytest.raises(ValueError, match="NaN"):
        quantize(torch.tensor([0.2, float("nan")]), 10)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, "10", True])
def test_bad_num_bins(bad):
    with pytest.raises(ValueError, match="num_bins"):
        quantize(torch.tensor([0.5]), bad)
    with pytest.raises(ValueError, match="num_bins"):
        dequantize(torch.tensor([0]), bad)


def test_num_bins_accepts_integer_like_values():
    x = torch.tensor([0.0, 0.5, 1.0])
    expected = [0, 2, 4]
    assert quantize(x, np.int64(5)).tolist() == expected
    assert quantize(x, torch.tensor(5)).tolist() == expected
    assert dequantize(torch.tensor([4]), np.int32(5)).tolist() == [1.0]


def test_dequantize_values_and_range_check():
    d = dequantize(torch.tensor([0, 2, 4]), 5)
    assert d.dtype == torch.float32 and d.tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="bins in"):
        dequantize(torch.tensor([5]), 5)
    with pytest.raises(ValueError, match="bins in"):
        dequantize(torch.tensor([-1]), 5)
    assert dequantize(torch.zeros(0, dtype=torch.long), 5).shape == (0,)


def test_max_quantization_error():
    assert max_quantization_error(2) == 0.5
    assert math.isclose(max_quantization_error(1001), 0.0005)


@settings(max_examples=200, deadline=None)
@given(x=st.lists(unit, min_size=1, max_size=20), num_bins=bins_st)
def test_round_trip_within_half_a_bin(x, num_bins):
    x = torch.tensor(x, dtype=torch.float64)
    q = quantize(x, num_bins)
    assert int(q.min()) >= 0 and int(q.max()) <= num_bins - 1
    err = (dequantize(q, num_bins).double() - x).abs().max().item()
    assert err <= max_quantization_error(num_bins) + 1e-6


@settings(max_examples=100, deadline=None)
@given(num_bins=bins_st, data=st.data())
def test_bins_are_fixed_points(num_bins, data):
    q = torch.tensor(data.draw(st.lists(st.integers(0, num_bins - 1), min_size=1, max_size=20)))
    assert torch.equal(quantize(dequantize(q, num_bins), num_bins), q)


@settings(max_examples=100, deadline=None)
@given(x=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=20), num_bins=bins_st)
def test_quantize_bounds_and_monotone(x, num_bins):
    xs = torch.tensor(sorted(x))
    q = quantize(xs, num_bins)
    assert int(q.min()) >= 0 and int(q.max()) <= num_bins - 1
    assert bool((q[1:] >= q[:-1]).all())


def test_measured_worst_error_reaches_bound():
    xs = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    for b in (4, 17, 100):
        worst = (xs - dequantize(quantize(xs, b), b).double()).abs().max().item()
        assert worst <= max_quantization_error(b) + 1e-6
        assert worst >= 0.99 * max_quantization_error(b)


def test_normalize_denormalize_example():
    px = torch.tensor([[10.0, 20.0, 110.0, 70.0]])
    n = normalize_boxes(px, height=120, width=160)
    assert torch.allclose(n, torch.tensor([[10 / 160, 20 / 120, 110 / 160, 70 / 120]]))
    assert torch.allclose(denormalize_boxes(n, 120, 160), px)


@settings(max_examples=50, deadline=None)
@given(h=st.integers(1, 2000), w=st.integers(1, 2000), n=st.integers(0, 5), seed=st.integers(0, 1000))
def test_normalize_round_trip(h, w, n, seed):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(n, 4, generator=g) * torch.tensor([w, h, w, h])
    back = denormalize_boxes(normalize_boxes(boxes, h, w), h, w)
    assert back.shape == (n, 4)
    assert torch.allclose(back, boxes, rtol=1e-5, atol=1e-3)


def test_box_helpers_validate():
    with pytest.raises(ValueError, match="shape"):
        normalize_boxes(torch.zeros(3, 5), 10, 10)
    with pytest.raises(ValueError, match="height and width"):
        normalize_boxes(torch.zeros(1, 4), 0, 10)
    with pytest.raises(ValueError, match="height and width"):
        denormalize_boxes(torch.zeros(1, 4), 10, -1)
    assert normalize_boxes(torch.tensor([[0, 0, 10, 10]]), 10, 20).dtype == torch.float32


def test_snap_boxes():
    boxes = torch.tensor([[0.1, 0.2, 0.74, 1.3]])
    assert torch.allclose(snap_boxes(boxes, 5), torch.tensor([[0.0, 0.25, 0.75, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        snap_boxes(torch.zeros(2, 3), 5)
    with pytest.raises(ValueError, match="NaN"):
        snap_boxes(torch.tensor([[0.1, float("nan"), 0.2, 0.3]]), 5)


@settings(max_examples=50, deadline=None)
@given(num_bins=bins_st, seed=st.integers(0, 10_000))
def test_snap_boxes_is_idempotent_and_close(num_bins, seed):
    boxes = torch.rand(6, 4, generator=torch.Generator().manual_seed(seed))
    s = snap_boxes(boxes, num_bins)
    assert torch.allclose(snap_boxes(s, num_bins), s)
    assert (s - boxes).abs().max().item() <= max_quantization_error(num_bins) + 1e-6

