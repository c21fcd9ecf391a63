"""Chapter 06: teacher forcing, token weights, weighted cross-entropy, nano learns."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from p2s_lib.loss import teacher_forcing, token_weights, weighted_cross_entropy
from p2s_lib.model import Pix2Seq
from p2s_lib.tokenizer import Tokenizer

TOK = Tokenizer(num_classes=4, num_bins=16, max_objects=5)   # coords start at 8


def test_teacher_forcing():
    seq = torch.tensor([[1, 10, 11, 12, 13, 3, 2], [1, 2, 0, 0, 0, 0, 0]])
    inp, tgt = teacher_forcing(seq)
    assert torch.equal(inp, seq[:, :-1]) and torch.equal(tgt, seq[:, 1:])
    with pytest.raises(ValueError, match="L >= 2"):
        teacher_forcing(torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        teacher_forcing(torch.tensor([1, 2, 3]))


def test_token_weights_by_hand():
    # targets: y x y x class EOS PAD ; second row: y x y x noise-class EOS PAD with noise coords masked
    tgt = torch.tensor([[10, 11, 12, 13, 3, 2, 0],
                        [10, 11, 12, 13, TOK.noise_class_id, 2, 0]])
    w = token_weights(tgt, TOK)
    assert torch.equal(w[0], torch.tensor([1, 1, 1, 1, 1, 0.1, 0.1]))
    mask = torch.zeros_like(tgt, dtype=torch.bool)
    mask[1, :4] = True
    w = token_weights(tgt, TOK, eos_weight=0.25, noise_coord_mask=mask)
    assert torch.equal(w, torch.tensor([[1, 1, 1, 1, 1, 0.25, 0.25], [0, 0, 0, 0, 1, 0.25, 0.25]]))
    assert w.dtype == torch.float32


def test_token_weights_errors():
    tgt = torch.tensor([[10, 2]])
    with pytest.raises(ValueError, match="noise_coord_mask must be bool of shape"):
        token_weights(tgt, TOK, noise_coord_mask=torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="noise_coord_mask must be bool"):
        token_weights(tgt, TOK, noise_coord_mask=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="eos_weight must be >= 0"):
        token_weights(tgt, TOK, eos_weight=-1)


def test_weighted_ce_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]]])
    target = torch.tensor([[0, 2, 0]])
    weights = torch.tensor([[1.0, 0.1, 0.0]])
    ce = [math.log(1 + 2 * math.exp(-2)), math.log(3), None]
    expected = (1.0 * ce[0] + 0.1 * ce[1]) / 1.1   # the third token has weight 0: ignored
    assert abs(weighted_cross_entropy(logits, target, weights).item() - expected) < 1e-6


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 6), st.integers(0, 1000))
def test_weighted_ce_properties(b, t, seed):
    g = torch.Generator().manual_seed(seed)
    logits, target = torch.randn(b, t, 7, generator=g), torch.randint(0, 7, (b, t), generator=g)
    ones = torch.ones(b, t)
    # all weights 1 -> plain mean cross-entropy; scaling all weights changes nothing
    plain = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    assert torch.allclose(weighted_cross_entropy(logits, target, ones), plain, atol=1e-5)
    w = torch.rand(b, t, generator=g) + 0.01
    assert torch.allclose(weighted_cross_entropy(logits, target, w), weighted_cross_entropy(logits, target, 3 * w), atol=1e-5)


def test_weighted_ce_zero_weights_and_errors():
    logits = torch.randn(1, 2, 5, requires_grad=True)
    loss = weighted_cross_entropy(logits, torch.tensor([[1, 2]]), torch.zeros(1, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match="shape mismatch"):
        weighted_cross_entropy(torch.randn(1, 3, 5), torch.tensor([[1, 2]]), torch.ones(1, 2))


def test_weighted_ce_bf16_logits():
    logits = torch.randn(2, 3, 9).bfloat16()
    loss = weighted_cross_entropy(logits, torch.randint(0, 9, (2, 3)), torch.ones(2, 3))
    assert loss.dtype == torch.float32


def test_nano_overfits_two_images():
    """The positive control: nano must memorize a 2-image batch within a bounded number of steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread avoids waiting on a busy second core
    try:
        torch.manual_seed(0)
        model = Pix2Seq.from_preset("nano", num_classes=4, dropout=0.0)
        tok = model.tokenizer
        g = torch.Generator().manual_seed(0)
        images = torch.rand(2, 3, 128, 128, generator=g)
        items = []
        for _ in range(2):
            xy = torch.rand(3, 2, generator=g) * 0.6
            items.append((torch.cat([xy, xy + 0.1 + 0.3 * torch.rand(3, 2, generator=g)], 1),
                          torch.randint(0, 4, (3,), generator=g)))
        inp, tgt = teacher_forcing(tok.encode_batch(items))
        w = token_weights(tgt, tok)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        first = None
        for step in range(150):
            loss = weighted_cross_entropy(model(images, inp), tgt, w)
            first = first if first is not None else loss.item()
            if loss.item() < 0.05:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert abs(first - math.log(tok.vocab_size)) < 0.5   # starts near a uniform guess
    assert loss.item() < 0.05, f"loss {loss.item():.3f} after {step} steps"
