"""Unit tests for p2s_lib.tokenizer (chapter 02)."""
import pickle
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2s_lib.quantize import max_quantization_error
from p2s_lib.tokenizer import (SLOT_NAMES, TOKEN_COLORS, Tokenizer, TokenizerEncoding, Vocabulary, pad_sequences,
                               show_tokens)


def tok4(max_objects=8, num_bins=100):
    return Tokenizer(num_classes=4, num_bins=num_bins, max_objects=max_objects)


# ---------------------------------------------------------------- vocabulary layout
def test_layout_matches_contract():
    t = Tokenizer(num_classes=20, num_bins=1000, max_objects=100)
    assert (t.pad_id, t.bos_id, t.eos_id, t.class_offset) == (0, 1, 2, 3)
    assert t.noise_class_id == 23 and t.coord_offset == 24 and t.vocab_size == 1024
    assert t.max_seq_len == 502
    assert (t.num_classes, t.num_bins, t.max_objects) == (20, 1000, 100)
    assert t.noise_class_id - t.class_offset == t.num_classes


def test_is_coord_is_class_partition_the_vocab():
    t = tok4()
    ids = torch.arange(t.vocab_size)
    coord, cls = t.is_coord(ids), t.is_class(ids)
    assert coord.dtype == torch.bool and not bool((coord & cls).any())
    assert int(coord.sum()) == t.num_bins and int(cls.sum()) == t.num_classes + 1
    assert ids[~(coord | cls)].tolist() == [0, 1, 2]
    assert not bool(t.is_coord(torch.tensor([-1, t.vocab_size])).any())
    assert not bool(t.is_class(torch.tensor([-1, t.vocab_size])).any())


def test_token_conversions_round_trip_and_validate():
    t = tok4()
    labels = torch.arange(5)
    assert torch.equal(t.token_to_label(t.class_token(labels)), labels)
    assert t.class_token(4).item() == t.noise_class_id
    bins = torch.tensor([0, 1, 50, 99])
    assert torch.equal(t.token_to_bin(t.coord_token(bins)), bins)
    assert t.coord_token([0]).tolist() == [t.coord_offset]
    with pytest.raises(ValueError, match="labels"):
        t.class_token([5])
    with pytest.raises(ValueError, match="labels"):
        t.class_token([-1])
    with pytest.raises(ValueError, match="bins"):
        t.coord_token([100])
    with pytest.raises(ValueError, match="not class tokens"):
        t.token_to_label([t.coord_offset])
    with pytest.raises(ValueError, match="not coordinate tokens"):
        t.token_to_bin([t.eos_id])
    with pytest.raises(ValueError, match="integers"):
        t.is_coord(torch.tensor([1.5]))


def test_token_names():
    t = tok4()
    names = t.token_names([0, 1, 2, 3, 7, 8, 107, 108], ["a", "b", "c", "d"])
    assert names == ["PAD", "BOS", "EOS", "a", "noise", "bin 0", "bin 99", "<oov 108>"]
    assert t.token_names([4]) == ["class 1"]


@pytest.mark.parametrize("args", [(0, 10, 5), (3, 1, 5), (3, 10, 0), (2.0, 10, 5), (True, 10, 5), (3, "10", 5)])
def test_constructor_validates(args):
    with pytest.raises(ValueError):
        Tokenizer(*args)


def test_repr_dict_equality_pickle():
    t = Tokenizer(20, 1000, 100)
    assert repr(t) == "Tokenizer(num_classes=20, num_bins=1000, max_objects=100) [vocab_size=1024, max_seq_len=502]"
    d = t.to_dict()
    assert d == {"num_classes": 20, "num_bins": 1000, "max_objects": 100}
    assert all(type(v) is int for v in d.values())
    t2 = Tokenizer.from_dict(d)
    assert isinstance(t2, Tokenizer) and t2 == t and hash(t2) == hash(t)
    assert t != Tokenizer(20, 1000, 50)
    assert Tokenizer.from_dict({k: torch.tensor(v) for k, v in d.items()}) == t  # e.g. from a checkpoint
    assert pickle.loads(pickle.dumps(t)) == t
    assert isinstance(t, Vocabulary)


# ---------------------------------------------------------------- encode
def test_encode_example_token_order():
    t = Tokenizer(num_classes=4, num_bins=11, max_objects=3)
    seq = t.encode(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), torch.tensor([2]))
    c = t.coord_offset
    assert seq.dtype == torch.int64
    assert seq.tolist() == [t.bos_id, c + 2, c + 1, c + 4, c + 3, t.class_offset + 2, t.eos_id]  # ymin,xmin,ymax,xmax,cls


def test_encode_empty_and_input_forms():
    t = tok4()
    assert t.encode(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)).tolist() == [1, 2]
    assert t.encode([], []).tolist() == [1, 2]
    a = t.encode([[0.1, 0.2, 0.3, 0.4]], [1])
    b = t.encode(torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64), torch.tensor([1.0]))
    assert torch.equal(a, b)


def test_encode_clips_out_of_range_coordinates():
    t = tok4()
    seq = t.encode(torch.tensor([[-0.2, -0.1, 1.3, 1.0]]), [0])
    assert t.token_to_bin(seq[1:5]).tolist() == [0, 0, 99, 99]


def test_encode_noise_label_allowed():
    t = tok4()
    seq = t.encode([[0.1, 0.1, 0.2, 0.2]], [4])
    assert seq[5].item() == t.noise_class_id


@pytest.mark.parametrize("boxes,labels,match", [
    (torch.rand(2, 5), [0, 1], "shape"),
    (torch.rand(4), [0], "shape"),
    (torch.rand(2, 2, 4), [0, 1], "shape"),
    (torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 2), [0], "one label per box"),
    (torch.tensor([[0.1, 0.2, 0.3, 0.4]]), [[0]], "one label per box"),
    (torch.tensor([[0.1, float("nan"), 0.3, 0.4]]), [0], "NaN"),
    (torch.tensor([[0.1, 0.2, 0.3, 0.4]]), [5], "labels must lie"),
    (torch.tensor([[0.1, 0.2, 0.3, 0.4]]), [-1], "labels must lie"),
    (torch.tensor([[0.1, 0.2, 0.3, 0.4]]), [0.5], "whole numbers"),
    (torch.tensor([[0.1, 0.2, 0.3, 0.4]]), [float("nan")], "whole numbers"),
    (torch.tensor([[0.1, 0.2, 0.3, 0.4]]), torch.tensor([True]), "integers"),
    (torch.tensor([[0.5, 0.2, 0.3, 0.4]]), [0], "xmin <= xmax"),
    (torch.tensor([[0.1, 0.5, 0.3, 0.4]]), [0], "ymin <= ymax"),
])
def test_encode_rejects_bad_input(boxes, labels, match):
    with pytest.raises(ValueError, match=match):
        tok4().encode(boxes, labels)


def test_encode_truncates_with_warning():
    t = tok4(max_objects=3)
    boxes = torch.tensor([[0.1 * i, 0.1, 0.1 * i + 0.05, 0.2] for i in range(5)])
    with pytest.warns(UserWarning, match="max_objects=3"):
        seq = t.encode(boxes, torch.arange(5) % 4)
    assert len(seq) == t.max_seq_len
    b, l = t.decode(seq)
    assert l.tolist() == [0, 1, 2]  # the first three are kept
    assert torch.allclose(b, boxes[:3], atol=max_quantization_error(100) + 1e-6)


def test_encode_at_limit_does_not_warn():
    t = tok4(max_objects=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.encode(torch.tensor([[0.1, 0.1, 0.2, 0.2]] * 2), [0, 1])


# ---------------------------------------------------------------- round-trip law
@st.composite
def objects(draw, max_objects, num_classes):
    n = draw(st.integers(0, max_objects))
    coords = draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=4 * n, max_size=4 * n))
    b = torch.tensor(coords, dtype=torch.float32).reshape(n, 2, 2)
    lo, hi = b.min(dim=1).values, b.max(dim=1).values            # ensure xmin<=xmax, ymin<=ymax
    boxes = torch.cat([lo, hi], dim=1)
    labels = torch.tensor(draw(st.lists(st.integers(0, num_classes), min_size=n, max_size=n)), dtype=torch.long)
    return boxes, labels


@settings(max_examples=150, deadline=None)
@given(data=st.data(), num_bins=st.integers(2, 2000), max_objects=st.integers(1, 12), num_classes=st.integers(1, 30))
def test_encode_decode_round_trip(data, num_bins, max_objects, num_classes):
    t = Tokenizer(num_classes, num_bins, max_objects)
    boxes, labels = data.draw(objects(max_objects, num_classes))
    seq = t.encode(boxes, labels)
    n = len(labels)
    assert seq.shape == (2 + 5 * n,) and seq[0] == t.bos_id and seq[-1] == t.eos_id
    assert bool(t.is_coord(seq[1:-1].reshape(n, 5)[:, :4]).all()) and bool(t.is_class(seq[1:-1].reshape(n, 5)[:, 4]).all())
    b, l = t.decode(seq)
    assert torch.equal(l, labels)
    assert b.shape == (n, 4) and b.dtype == torch.float32
    assert (b - boxes).abs().max().item() <= max_quantization_error(num_bins) + 1e-6 if n else True
    assert torch.equal(t.encode(b, l), seq)  # decoded boxes are fixed points


# ---------------------------------------------------------------- decode
def test_decode_skips_bos_stops_at_eos_and_drops_bad_groups():
    t = Tokenizer(num_classes=4, num_bins=11, max_objects=5)
    c, k = t.coord_offset, t.class_offset
    good = [c + 2, c + 1, c + 4, c + 3, k + 1]
    bad = [c + 2, k + 0, c + 4, c + 3, k + 1]          # class token in the xmin slot
    no_class = [c + 2, c + 1, c + 4, c + 3, c + 3]     # coordinate in the class slot
    swapped = [c + 4, c + 3, c + 2, c + 1, k + 2]      # ymin > ymax and xmin > xmax
    seq = [1, 1] + good + bad + no_class + swapped + [2] + good + [0, 0]
    b, l = t.decode(torch.tensor(seq))
    assert l.tolist() == [1, 2]
    assert torch.allclose(b, torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 2))
    assert t.decode(seq[2:])[1].tolist() == [1, 2]      # no BOS is fine too
    b2, l2 = t.decode(good + good[:3])                   # no EOS, trailing partial group dropped
    assert l2.tolist() == [1]
    b3, l3 = t.decode([1] + good + [0] * 5 + good)        # PAD inside the body: that group is dropped
    assert l3.tolist() == [1, 1]


def test_decode_empty_and_trivial():
    t = tok4()
    for seq in ([], [1], [1, 2], [2, 3, 3], [0, 0, 0, 0, 0], [1, 1, 1]):
        b, l = t.decode(torch.tensor(seq, dtype=torch.long))
        assert b.shape == (0, 4) and l.shape == (0,) and l.dtype == torch.int64 and b.dtype == torch.float32


def test_decode_drop_noise():
    t = tok4()
    seq = t.encode(torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4]]), [4, 2])
    assert t.decode(seq)[1].tolist() == [4, 2]
    b, l = t.decode(seq, drop_noise=True)
    assert l.tolist() == [2] and b.shape == (1, 4)


def test_decode_rejects_oov_and_bad_shapes():
    t = tok4()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        t.decode(torch.tensor([1, t.vocab_size, 2]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        t.decode(torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"shape \[L\]"):
        t.decode(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        t.decode(torch.tensor([1.0, 2.0]))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), num_bins=st.integers(2, 300), num_classes=st.integers(1, 10))
def test_decode_is_total_on_in_vocab_sequences(data, num_bins, num_classes):
    t = Tokenizer(num_classes, num_bins, max_objects=10)
    # mix fully random ids with "almost valid" sequences so both paths are exercised
    coord = st.integers(t.coord_offset, t.vocab_size - 1)
    cls = st.integers(t.class_offset, t.noise_class_id)
    anything = st.integers(0, t.vocab_size - 1)
    group = st.tuples(coord, coord, coord, coord, cls).map(list)
    mostly_valid = st.lists(st.one_of(group, group, group, st.lists(anything, min_size=1, max_size=6)), max_size=12)
    seq = data.draw(st.one_of(st.lists(anything, max_size=60), mostly_valid.map(lambda gs: sum(gs, []))))
    if data.draw(st.booleans()):
        seq = [t.bos_id] + seq
    boxes, labels = t.decode(torch.tensor(seq, dtype=torch.long))
    assert boxes.shape == (len(labels), 4) and boxes.dtype == torch.float32 and labels.dtype == torch.int64
    assert bool(((boxes >= 0) & (boxes <= 1)).all())
    assert bool((boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all())
    assert bool(((labels >= 0) & (labels <= num_classes)).all())
    assert len(labels) <= len(seq) // 5


# ---------------------------------------------------------------- batches
def test_pad_sequences():
    out = pad_sequences([torch.tensor([1, 5, 2]), torch.tensor([1, 2]), torch.tensor([], dtype=torch.long)], pad_id=0)
    assert out.dtype == torch.int64 and out.tolist() == [[1, 5, 2], [1, 2, 0], [0, 0, 0]]
    assert pad_sequences([[1, 2]], pad_id=9, length=4).tolist() == [[1, 2, 9, 9]]
    assert pad_sequences([], pad_id=0).shape == (0, 0)
    with pytest.raises(ValueError, match="shorter"):
        pad_sequences([[1, 2, 3]], pad_id=0, length=2)
    with pytest.raises(ValueError, match="1-D"):
        pad_sequences([torch.ones(2, 2, dtype=torch.long)], pad_id=0)


def test_encode_batch_and_decode_batch():
    t = tok4()
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.8]])
    labels = torch.tensor([0, 3])
    batch = t.encode_batch([(boxes, labels), {"boxes": boxes[:1], "labels": labels[:1]}, (torch.zeros(0, 4), [])])
    assert batch.shape == (3, 12) and batch.dtype == torch.int64
    assert torch.equal(batch[0], t.encode(boxes, labels))
    assert batch[1, 7:].tolist() == [t.pad_id] * 5 and batch[2, :2].tolist() == [t.bos_id, t.eos_id]
    decoded = t.decode_batch(batch)
    assert [d[1].tolist() for d in decoded] == [[0, 3], [0], []]
    assert t.encode_batch([(boxes, labels)], length=t.max_seq_len).shape == (1, t.max_seq_len)


def test_show_tokens_draws_one_cell_per_token():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = tok4()
    seq = t.encode(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.8]]), [0, 4])
    seq = torch.cat([seq, torch.zeros(3, dtype=torch.long)])
    for wrap in (5, None):
        fig, ax = plt.subplots()
        show_tokens(ax, seq, t, ["a", "b", "c", "d"], wrap=wrap)
        assert len(ax.patches) == len(seq)
        texts = [x.get_text() for x in ax.texts]
        assert any("noise" in s for s in texts) and any(s.startswith("ymin") for s in texts)
        plt.close(fig)
    assert set(TOKEN_COLORS) == {"special", "pad", "coord", "class", "noise"} and len(SLOT_NAMES) == 5


def test_show_tokens_legend_names_only_the_kinds_drawn():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = tok4()
    fig, ax = plt.subplots()
    show_tokens(ax, t.encode(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), [1]), t, ["a", "b", "c", "d"])
    assert [x.get_text() for x in ax.get_legend().get_texts()] == ["special", "coord", "class"]
    plt.close(fig)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(0, 5), st.integers(0, 2**31 - 1))
def test_object_tokens_of_a_batch_are_each_rows_encoding(rows, objects, seed):
    """The one writer of the layout: a padded batch [B, N, 4] gives, row by row, encode's objects."""
    tok = Tokenizer(num_classes=3, num_bins=50, max_objects=8)
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(rows, objects, 2, 2, generator=g).sort(dim=2).values
    boxes = corners.reshape(rows, objects, 4)        # (x1, y1), (x2, y2) with x1 <= x2 and y1 <= y2
    labels = torch.randint(0, 4, (rows, objects), generator=g)
    batch = tok.object_tokens(boxes, labels)
    assert batch.shape == (rows, objects, 5)
    for b in range(rows):
        assert torch.equal(batch[b].reshape(-1), tok.encode(boxes[b], labels[b])[1:-1])


def test_split_objects_and_boxes_from_bins_read_what_the_model_wrote():
    tok = Tokenizer(num_classes=2, num_bins=10, max_objects=4)
    c, k = tok.coord_offset, tok.class_offset
    good, bad = [c + 7, c + 1, c + 2, c + 5, k + 1], [c + 1, k, c + 2, c + 3, k]   # ymin > ymax; a class in a coord slot
    groups, ok = tok.split_objects(torch.tensor(good + bad + [tok.eos_id] + good))
    assert groups.shape == (2, 5) and ok.tolist() == [True, False]      # stops at EOS
    assert tok.split_objects(torch.tensor(good[:3]))[0].shape == (0, 5)  # a partial group is not an object
    box = tok.boxes_from_bins(groups[0, :4] - c)
    assert torch.allclose(box, torch.tensor([1, 2, 5, 7]) / 9)         # xyxy, corners sorted


def test_encoding_half_is_the_tokenizers_encode():
    "Tokenizer is TokenizerEncoding plus the decoding half; both encode alike."
    t, e = tok4(), TokenizerEncoding(num_classes=4, num_bins=100, max_objects=8)
    assert isinstance(t, TokenizerEncoding) and not hasattr(e, "decode")
    boxes, labels = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.7]]), torch.tensor([0, 3])
    assert torch.equal(t.encode(boxes, labels), e.encode(boxes, labels))
    assert e == t  # same layout, same ints
