"""Chapter 05a: the box prior, a cross-attention bias for the class step (and the coordinate steps)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from p2s_lib.box_prior import BoxPriorCache, BoxPriorDecoder, box_prior_bias, cell_coverage, has_box_prior
from p2s_lib.decoder import Decoder
from test_05_decoder import CHUNKINGS, cache_equals_full_pass  # the cache law of chapter 05, for the prior's decoders


def small_decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    args = dict(vocab_size=50, max_len=40, d_model=32, num_layers=2, num_heads=4, dim_feedforward=64, dropout=0.1)
    kind = BoxPriorDecoder if any("box_prior" in k for k in kw) else Decoder
    return kind(**{**args, **kw}).eval()


VARIANTS = {
    "box prior": dict(vocab_size=72, max_len=51, box_prior=(8, 64)),
    "box prior, coordinate steps too": dict(vocab_size=72, max_len=51, box_prior=(8, 64), partial_box_prior=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_the_cache_in_any_chunking_equals_the_full_pass(variant, chunks):
    """Chapter 05's cache property holds with the prior: it reads the cache's tokens, not just the new ones."""
    dec = small_decoder(**VARIANTS[variant])
    if dec.partial_box_prior_gain is not None:
        dec.partial_box_prior_gain.data.uniform_(0.5, 2.0)
    cache_equals_full_pass(dec, chunks)


def test_box_prior_bias_marks_the_box_at_class_steps_only():
    # BOS, a box y 0..31 x 32..63 of 64 bins (top-right quarter of a 4x4 grid), a class, then a 2nd object
    tokens = torch.tensor([[1, 8 + 0, 8 + 32, 8 + 31, 8 + 63, 3, 8, 8, 8, 8]])
    bias = box_prior_bias(tokens, coord_offset=8, num_bins=64, grid=4)
    assert bias.shape == (1, 10, 16)
    assert bias.abs().sum(-1).nonzero()[:, 1].unique().tolist() == [4, 9]
    grid = bias[0, 4].view(4, 4)
    assert (grid[:2, 2:] > -0.1).all()  # about log(1 + floor): the cells are (nearly) all inside
    assert torch.allclose(grid[2:], torch.full((2, 4), torch.log(torch.tensor(0.05)).item()), atol=1e-4)
    assert torch.allclose(grid[:, :2][:, 0], torch.full((4,), torch.log(torch.tensor(0.05)).item()), atol=1e-4)


def test_box_prior_bias_ignores_non_coordinate_inputs():
    tokens = torch.tensor([[1, 8, 8, 3, 8 + 10, 4]])  # a class token among the 4 "coordinates"
    assert box_prior_bias(tokens, 8, 64, 8).abs().sum() == 0
    assert box_prior_bias(tokens[:, :3], 8, 64, 8).shape == (1, 3, 64)  # shorter than one object


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**31 - 1), st.integers(2, 9))
def test_box_prior_bias_is_bounded_and_zero_off_class_steps(length, seed, grid):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 72, (3, length), generator=g)
    bias = box_prior_bias(tokens, 8, 64, grid, floor=0.05)
    assert bias.shape == (3, length, grid * grid)
    assert bias.min() >= torch.log(torch.tensor(0.05)) - 1e-5 and bias.max() <= torch.log(torch.tensor(1.05)) + 1e-5
    off = torch.arange(length) % 5 != 4
    assert bias[:, off].abs().sum() == 0


def test_box_prior_with_gain_zero_is_the_plain_decoder():
    dec = small_decoder(vocab_size=72, max_len=51, box_prior=(8, 64))
    plain = small_decoder(vocab_size=72, max_len=51)
    assert dec.box_prior_gain.shape == (2 * 4,) and not hasattr(plain, "box_prior_gain")
    tokens = torch.randint(8, 72, (2, 51), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = 1
    mem = torch.randn(2, 16, 32)
    with torch.no_grad():
        dec.box_prior_gain.zero_()
        state = {k: v for k, v in dec.state_dict().items() if k != "box_prior_gain"}
        plain.load_state_dict(state)
        assert torch.allclose(dec(tokens, mem), plain(tokens, mem), atol=1e-6)


def test_box_prior_changes_only_class_steps_and_attends_inside():
    dec = small_decoder(vocab_size=72, max_len=51, box_prior=(8, 64))
    tokens = torch.tensor([[1, 8 + 0, 8 + 0, 8 + 20, 8 + 20, 3]])  # a box in the top-left ninth
    mem = torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        on, attn = dec(tokens, mem, return_attention=True)
        dec.box_prior_gain.zero_()
        off, attn_off = dec(tokens, mem, return_attention=True)
    assert torch.allclose(on[:, :4], off[:, :4]) and not torch.allclose(on[:, 4], off[:, 4])
    assert attn["cross"][0][0, :, 4, 0].mean() > 2 * attn_off["cross"][0][0, :, 4, 0].mean()


def test_box_prior_errors():
    with pytest.raises(ValueError, match="box_prior"):
        small_decoder(box_prior=(45, 64))
    dec = small_decoder(vocab_size=72, max_len=51, box_prior=(8, 64))
    with pytest.raises(ValueError, match="not a square grid"):
        dec(torch.ones(1, 5, dtype=torch.long), torch.randn(1, 7, 32))
    with pytest.raises(ValueError, match=r"grid \(3, 3\) does not match 16"):
        dec(torch.ones(1, 5, dtype=torch.long), torch.randn(1, 16, 32), grid=(3, 3))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 51), st.integers(0, 50), st.integers(0, 2**31 - 1), st.booleans())
def test_box_prior_bias_from_start_is_the_tail_of_the_full_bias(length, start, seed, partial):
    start = min(start, length)
    tokens = torch.randint(0, 72, (2, length), generator=torch.Generator().manual_seed(seed))
    full = box_prior_bias(tokens, 8, 64, (3, 5), partial=partial)
    assert torch.equal(box_prior_bias(tokens, 8, 64, (3, 5), start=start, partial=partial), full[:, start:])


@given(st.integers(0, 10_000))
def test_has_box_prior_marks_class_steps_or_every_continuing_step(position):
    assert has_box_prior(position) == (position % 5 == 4)
    assert has_box_prior(position, partial=True) == (position % 5 != 0)


def test_partial_box_prior_bias_is_the_region_still_allowed():
    tokens = torch.tensor([[1, 8 + 32, 8 + 16, 8 + 48, 8 + 63, 3]])  # y 0.51-0.76, x 0.25-1
    class_only = box_prior_bias(tokens, 8, 64, 4)
    bias = box_prior_bias(tokens, 8, 64, 4, partial=True)
    assert torch.equal(bias[0, 4], class_only[0, 4]) and class_only[0, :4].abs().sum() == 0
    assert bias[0, 0].abs().sum() == 0 and bias[0, 5].abs().sum() == 0        # BOS and class inputs: none
    inside = lambda p: (bias[0, p].view(4, 4) > -0.1).int().tolist()          # cells (almost) wholly allowed
    assert inside(1) == [[0] * 4, [0] * 4, [1] * 4, [1] * 4]                    # below ymin
    assert inside(2) == [[0] * 4, [0] * 4, [0, 1, 1, 1], [0, 1, 1, 1]]          # ... and right of xmin
    assert inside(3) == [[0] * 4, [0] * 4, [0, 1, 1, 1], [0, 0, 0, 0]]          # ... and above ymax (0.76)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 51), st.integers(0, 2**31 - 1), st.integers(2, 9))
def test_partial_box_prior_bias_bounded_and_shrinks_as_coordinates_are_read(length, seed, grid):
    g = torch.Generator().manual_seed(seed)
    bins = torch.randint(0, 64, (2, 10, 4), generator=g)
    lo, hi = torch.minimum(bins[..., :2], bins[..., 2:]), torch.maximum(bins[..., :2], bins[..., 2:])
    boxes = torch.cat([lo, hi], -1)                                          # ordered: ymin <= ymax, xmin <= xmax
    objects = torch.cat([8 + boxes, torch.full((2, 10, 1), 3)], -1).flatten(1)
    tokens = torch.cat([torch.ones(2, 1, dtype=torch.long), objects], 1)[:, :length]
    bias = box_prior_bias(tokens, 8, 64, grid, floor=0.05, partial=True)
    assert bias.min() >= torch.log(torch.tensor(0.05)) - 1e-5 and bias.max() <= torch.log(torch.tensor(1.05)) + 1e-5
    assert bias[:, torch.arange(length) % 5 == 0].abs().sum() == 0
    for p in range(1, length - 1):
        if p % 5 in (1, 2, 3):                                               # the next region lies inside this one
            assert (bias[:, p + 1] <= bias[:, p] + 1e-6).all()


def test_partial_box_prior_with_gain_zero_is_the_class_step_prior_only():
    dec = small_decoder(vocab_size=72, max_len=51, box_prior=(8, 64), partial_box_prior=True)
    class_only = small_decoder(vocab_size=72, max_len=51, box_prior=(8, 64))
    assert dec.partial_box_prior_gain.shape == (3 * 2 * 4,) and class_only.partial_box_prior_gain is None
    tokens = torch.randint(8, 72, (2, 51), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = 1
    mem = torch.randn(2, 16, 32)
    with torch.no_grad():
        dec.partial_box_prior_gain.zero_()
        class_only.load_state_dict({k: v for k, v in dec.state_dict().items() if k != "partial_box_prior_gain"})
        assert torch.allclose(dec(tokens, mem), class_only(tokens, mem), atol=1e-6)


def test_partial_box_prior_needs_the_box_prior():
    with pytest.raises(ValueError, match="partial_box_prior=True needs box_prior"):
        small_decoder(partial_box_prior=True)


def test_cell_coverage_of_a_box_on_cell_edges():
    exact = cell_coverage(*torch.tensor([1 / 8, 2 / 8, 5 / 8, 6 / 8]), 8, 8).view(8, 8)  # rows 1-4, columns 2-5
    expected = torch.zeros(8, 8)
    expected[1:5, 2:6] = 1
    assert torch.equal(exact, expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=4, max_size=4), st.integers(1, 9), st.integers(1, 9))
def test_cell_coverage_sums_to_the_box_area_in_cells(corners, h, w):
    """Each cell's share lies in [0, 1], and the shares add up to the box's area in cells (either corner order)."""
    y0, x0, y1, x1 = torch.tensor(corners)                  # float32, as box_prior_bias passes them
    cov = cell_coverage(y0, x0, y1, x1, h, w)
    assert cov.shape == (h * w,) and cov.min() >= 0 and cov.max() <= 1 + 1e-5
    assert torch.isclose(cov.sum(), (y1 - y0).abs() * (x1 - x0).abs() * h * w, atol=1e-4)
    assert torch.allclose(cell_coverage(y1, x1, y0, x0, h, w), cov)


def test_step_gains_by_position_mod_5():
    dec = small_decoder(vocab_size=72, max_len=51, box_prior=(8, 64), partial_box_prior=True)
    with torch.no_grad():
        dec.box_prior_gain.fill_(4.0)
        dec.partial_box_prior_gain.copy_(torch.arange(3.0).repeat_interleave(2 * 4) + 1)  # 1, 2, 3 by step kind
    gains = dec.step_gains()
    assert gains.shape == (5, 2, 4)
    assert [gains[i].unique().tolist() for i in range(5)] == [[0.0], [1.0], [2.0], [3.0], [4.0]]
    class_only = small_decoder(vocab_size=72, max_len=51, box_prior=(8, 64)).step_gains()
    assert class_only[:4].eq(0).all() and class_only[4].eq(1).all()


def test_box_prior_cache_keeps_tokens_and_grid():
    dec = small_decoder(vocab_size=72, max_len=51, box_prior=(8, 64))
    mem = torch.randn(2, 12, 32)
    with pytest.raises(ValueError, match="not a square grid"):
        dec.new_cache(mem)
    cache = dec.new_cache(mem, (3, 4))
    assert isinstance(cache, BoxPriorCache) and cache.grid == (3, 4) and cache.tokens.shape == (2, 51)
    tokens = torch.tensor([[1, 10, 11, 12], [1, 20, 21, 22]])
    with torch.no_grad():
        dec(tokens, cache=cache)
        assert torch.equal(cache.tokens[:, :4], tokens) and cache.tokens[:, 4:].eq(0).all()
        with pytest.raises(ValueError, match=r"grid \(4, 3\) differs from the cache's \(3, 4\)"):
            dec(tokens[:, :1], cache=cache, grid=(4, 3))
        assert dec.new_cache(torch.randn(1, 16, 32)).grid == (4, 4)  # None: square
