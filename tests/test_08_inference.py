"""Tests for p2s_lib.inference (chapter 08): filtering, KV-cached generation, EOS modes, post-processing."""
import math
from pathlib import Path

import numpy as np

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2s_lib.inference import (allowed_tokens, amp_dtype, compiled_decoder_step, generate, hash_uniform, postprocess,
                               predict, refine_bin, sample_tokens, top_k_top_p_filter)
from p2s_lib.augment import one_thread
from p2s_lib.model import Pix2Seq, load_model
from p2s_lib.synthetic import _render_image

ASSETS = Path(__file__).resolve().parents[1] / "notebooks" / "assets"

NUM_CLASSES = 4


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Decoding is many tiny ops: on a busy 2-core machine one thread is faster and steadier."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Pix2Seq.from_preset("nano", num_classes=NUM_CLASSES)
    return m.eval()


@pytest.fixture(scope="module")
def images(model):
    return torch.rand(3, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))


def output_bias(model) -> torch.nn.Parameter:
    return model.decoder.out_bias


# ---------------------------------------------------------------- top-k / top-p filter
logit_vectors = st.integers(2, 40).flatmap(
    lambda v: st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=v, max_size=v))


@settings(max_examples=150, deadline=None)
@given(logit_vectors, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_with_mass_p(values, p):
    logits = torch.tensor(values)
    out = top_k_top_p_filter(logits, top_p=p)
    kept = torch.isfinite(out)
    probs = logits.softmax(-1)
    assert logits[kept].max() == logits.max()                      # a top token is always kept
    assert torch.equal(out[kept], logits[kept])                    # kept logits untouched
    assert probs[kept].sum() >= p - 1e-5                           # the nucleus holds mass >= p
    if kept.sum() > 1:                                             # ... and is the smallest such set
        assert probs[kept].sum() - probs[kept].min() < p + 1e-5
    if (~kept).any():                                              # kept = the most likely tokens
        assert logits[kept].min() >= logits[~kept].max()


@settings(max_examples=100, deadline=None)
@given(logit_vectors, st.integers(0, 50), st.floats(0.01, 1.0))
def test_top_k_limit_and_combination(values, k, p):
    logits = torch.tensor(values)
    out_k = top_k_top_p_filter(logits, top_k=k)
    kept = torch.isfinite(out_k)
    assert kept.sum() == (min(k, len(values)) if k > 0 else len(values))
    assert logits[kept].max() == logits.max()
    both = torch.isfinite(top_k_top_p_filter(logits, top_k=k, top_p=p))
    assert both.any() and not (both & ~kept).any()                 # top-p only removes more


def test_filter_identity_batched_and_errors():
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top_k_top_p_filter(logits), logits)
    assert torch.equal(top_k_top_p_filter(logits, top_k=0, top_p=1.0), logits)
    out = top_k_top_p_filter(logits, top_k=3)
    assert out.shape == logits.shape and torch.isfinite(out).sum(-1).eq(3).all()
    with pytest.raises(ValueError, match="top_p"):
        top_k_top_p_filter(logits, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        top_k_top_p_filter(logits, top_k=-1)


def test_filter_never_revives_masked_tokens():
    logits = torch.tensor([[2.0, -math.inf, 1.0, -math.inf, 0.5]] * 2)
    for k, p in [(0, 1.0), (0, 0.99), (4, 1.0), (5, 0.999), (1, 0.5)]:
        out = top_k_top_p_filter(logits, top_k=k, top_p=p)
        assert torch.isinf(out[:, [1, 3]]).all() and torch.isfinite(out[:, 0]).all()
        assert torch.isfinite(out.softmax(-1)).all()                    # still a distribution


def test_filter_worked_example():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = lambda p: torch.isfinite(top_k_top_p_filter(probs.log(), top_p=p)).tolist()
    assert kept(0.4) == [True, False, False, False]
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.9) == [True, True, True, False]


# ---------------------------------------------------------------- slot masks
def test_allowed_tokens_slots(model):
    tok = model.tokenizer
    ids = torch.arange(tok.vocab_size)
    n = 3
    for delayed in (True, False):
        for t in range(5 * n + 1):
            a = allowed_tokens(tok, t, n, delayed_eos=delayed)
            assert not a[tok.pad_id] and not a[tok.bos_id]
            assert a[tok.eos_id] == (not delayed and t % 5 == 0)
            if t % 5 == 4:
                assert torch.equal(a, tok.is_class(ids))
            elif t < 5 * n or delayed:
                assert torch.equal(a & (ids != tok.eos_id), tok.is_coord(ids))
            else:
                assert a.sum() == 1
            free = allowed_tokens(tok, t, n, delayed_eos=delayed, slot_mask=False)
            assert free.sum() == tok.vocab_size - 2 - int(delayed)
    with pytest.raises(ValueError, match="step"):
        allowed_tokens(tok, 5 * n + 1, n)


# ---------------------------------------------------------------- generation
def test_generate_is_deterministic_under_a_seed(model, images):
    run = lambda seed: generate(model, images, top_p=1.0, generator=torch.Generator().manual_seed(seed))
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["class_probs"], b["class_probs"])
    assert not torch.equal(a["tokens"], c["tokens"])


def test_slot_mask_enforces_the_grammar(model, images):
    tok = model.tokenizer
    out = generate(model, images, temperature=3.0, top_p=1.0, generator=torch.Generator().manual_seed(2))
    tokens = out["tokens"]
    objs = tokens[:, :-1].reshape(len(images), -1, 5)
    assert tok.is_coord(objs[..., :4]).all() and tok.is_class(objs[..., 4]).all()
    free = generate(model, images, temperature=3.0, top_p=1.0, slot_mask=False,
                    generator=torch.Generator().manual_seed(2))["tokens"]
    assert not (tok.is_coord(free[:, :-1].reshape(len(images), -1, 5)[..., :4]).all())   # hot sampling breaks it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generate_on_cuda_with_bf16_autocast(model, images):
    cuda_model = Pix2Seq.from_config(model.config).cuda()
    cuda_model.load_state_dict(model.state_dict())
    g = torch.Generator(device="cuda").manual_seed(0)
    out = generate(cuda_model, images.cuda(), generator=g)
    assert out["tokens"].shape == (3, 5 * model.tokenizer.max_objects + 1) and out["tokens"].is_cuda
    assert out["class_probs"].dtype == torch.float32
    cached = generate(cuda_model, images.cuda(), greedy=True, autocast=False)["tokens"]
    assert torch.equal(cached, generate(cuda_model, images.cuda(), greedy=True, autocast=False, use_cache=False)["tokens"])
    preds = predict(cuda_model, images.cuda(), [(64, 64)] * 3, generator=g)
    assert all(((p["boxes"] >= 0) & (p["boxes"] <= 64)).all() for p in preds)


# ---------------------------------------------------------------- per-image sampling, autocast, compile
def test_hash_uniform_is_uniform_and_distinct():
    u = hash_uniform(torch.arange(200_000))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.005
    counts = torch.histc(u, bins=10, min=0, max=1)
    assert (counts - 20_000).abs().max() < 600                          # ~4 standard deviations
    assert torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].abs() < 0.01  # neighbouring keys look independent


@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6).filter(lambda p: sum(p) > 0.1),
       st.integers(0, 2 ** 40), st.integers(0, 500))
@settings(max_examples=30, deadline=None)
def test_sample_tokens_only_draws_possible_tokens_and_ignores_the_batch(p, seed, step):
    probs = torch.tensor(p)[None].repeat(3, 1)
    seeds = torch.tensor([seed, seed + 1, seed + 2])
    drawn = sample_tokens(probs, seeds, step)
    assert (probs[0][drawn] > 0).all()
    assert drawn[1] == sample_tokens(probs[:1], seeds[1:2], step)[0]


def test_sample_tokens_follows_the_distribution():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    drawn = sample_tokens(p[None].repeat(40_000, 1), torch.arange(40_000), step=7)
    freq = torch.bincount(drawn, minlength=4) / 40_000
    assert (freq - p).abs().max() < 0.01


def test_seeded_generation_does_not_depend_on_the_batch(model, images):
    seeds = torch.tensor([11, 12, 13])
    together = generate(model, images, seeds=seeds)["tokens"]
    for i in range(3):
        assert torch.equal(generate(model, images[i:i + 1], seeds=seeds[i:i + 1])["tokens"][0], together[i])
    assert not torch.equal(generate(model, images, seeds=seeds + 100)["tokens"], together)
    with pytest.raises(ValueError, match="one int64 per image"):
        generate(model, images, seeds=torch.arange(2))


def test_amp_dtype_choices():
    cpu = torch.device("cpu")
    assert amp_dtype(cpu) is None and amp_dtype(cpu, False) is None and amp_dtype(cpu, True) == torch.bfloat16


def test_generate_under_cpu_bf16_autocast():
    """The mixed-precision path (bf16 cache buffers, float logits) runs on a CPU, not only on a GPU.

    A trained model on real synthetic images: an untrained one has near-ties everywhere, and which way
    bf16 rounding flips them depends on the CPU's kernels."""
    model, extra = load_model(ASSETS / "nano_synthetic.pt")
    rng = np.random.default_rng(5)
    pictures = [_render_image(rng, model.image_size, model.image_size, extra["class_names"], 6, (0.09, 0.38), 0.0, 0.0)[0]
                for _ in range(3)]
    images = torch.stack([torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p in pictures])
    out = generate(model.eval(), images, greedy=True, autocast=True, refine_window=1)
    assert out["class_probs"].dtype == torch.float32 and out["coord_bins"].dtype == torch.float32
    full = generate(model, images, greedy=True)["tokens"]
    assert (out["tokens"] == full).float().mean() > 0.8  # bf16 rounding may flip a near tie


def test_compiled_decoding_gives_the_eager_tokens_and_compiles_once(images):
    """Real inductor code generation, on a one-layer nano decoder: its compile time grows with the layers."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    model = Pix2Seq.from_preset("nano", num_classes=NUM_CLASSES, decoder_layers=1).eval()
    torch._dynamo.reset()
    counters.clear()
    eager = generate(model, images, max_objects=4, greedy=True)
    compiled = generate(model, images, max_objects=4, greedy=True, compile=True)
    assert torch.equal(compiled["tokens"], eager["tokens"])
    torch.testing.assert_close(compiled["class_probs"], eager["class_probs"], atol=1e-5, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == 1  # one graph for all 21 steps: no recompilation per step
    assert compiled_decoder_step() is compiled_decoder_step()


def uncached_greedy(model, images, n_obj, slot_mask=True):
    """Reference: re-run the full model (encoder included) on the whole prefix at every step."""
    tok = model.tokenizer
    seq = torch.full((images.size(0), 1), tok.bos_id)
    with torch.no_grad():
        for t in range(5 * n_obj + 1):
            logits = model(images, seq)[:, -1]
            logits[:, ~allowed_tokens(tok, t, n_obj, True, slot_mask)] = -math.inf
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    return seq[:, 1:]


@pytest.mark.parametrize("slot_mask", [True, False])
def test_cached_equals_uncached_greedy(model, images, slot_mask):
    n = min(4, model.tokenizer.max_objects)
    ref = uncached_greedy(model, images, n, slot_mask)
    cached = generate(model, images, max_objects=n, greedy=True, slot_mask=slot_mask)
    no_cache = generate(model, images, max_objects=n, greedy=True, slot_mask=slot_mask, use_cache=False)
    assert torch.equal(cached["tokens"], ref)
    assert torch.equal(no_cache["tokens"], ref)
    torch.testing.assert_close(cached["class_probs"], no_cache["class_probs"], atol=1e-5, rtol=1e-4)


def test_class_probs_come_from_the_class_step(model, images):
    out = generate(model, images, generator=torch.Generator().manual_seed(0))
    tok, tokens = model.tokenizer, out["tokens"]
    bos = torch.full((tokens.size(0), 1), tok.bos_id)
    with torch.no_grad():
        logits = model(images, torch.cat([bos, tokens[:, :-1]], 1))   # logits[:, i] predict tokens[:, i]
    n = out["class_probs"].size(1)
    expected = logits[:, 4:5 * n:5].softmax(-1)[..., tok.class_offset: tok.class_offset + NUM_CLASSES]
    torch.testing.assert_close(out["class_probs"], expected, atol=1e-5, rtol=1e-4)
    preds = postprocess(tokens, out["class_probs"], tok)
    for b, pred in enumerate(preds):   # every score is the max real-class prob of some object's class step
        table = out["class_probs"][b].max(-1).values
        assert all(torch.isclose(table, s).any() for s in pred["scores"])


def test_delayed_eos_never_stops(model, images):
    tok = model.tokenizer
    bias = output_bias(model)
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias[tok.eos_id] += 1e4                                    # the model now wants EOS everywhere
        for slot_mask in (True, False):
            out = generate(model, images, max_objects=3, slot_mask=slot_mask,
                           generator=torch.Generator().manual_seed(0))
            assert out["tokens"].shape == (3, 5 * 3 + 1)
            assert not (out["tokens"] == tok.eos_id).any()
            assert not (out["tokens"] == tok.pad_id).any() and not (out["tokens"] == tok.bos_id).any()
            stopped = generate(model, images, max_objects=3, slot_mask=slot_mask, delayed_eos=False)
            assert stopped["tokens"].shape == (3, 1) and (stopped["tokens"] == tok.eos_id).all()
            assert stopped["class_probs"].eq(0).all()
            assert all(len(p["boxes"]) == 0 for p in
                       postprocess(stopped["tokens"], stopped["class_probs"], tok))
    finally:
        with torch.no_grad():
            bias.copy_(saved)


class EOSAtStep(torch.nn.Module):
    """Wraps a decoder: image b is forced to emit EOS at generation step ends[b] (cached decoding)."""

    def __init__(self, decoder, ends, eos_id):
        super().__init__()
        self.decoder, self.ends, self.eos_id, self.count = decoder, ends, eos_id, 0

    def new_cache(self, memory, grid=None):
        self.count = 0
        return self.decoder.new_cache(memory, grid)

    def step(self, tokens, cache):
        logits = self.decoder.step(tokens, cache).clone()
        for b, end in enumerate(self.ends):  # EOS exactly at `end`, never before (whatever the weights say)
            logits[b, -1, self.eos_id] = 1e4 if end == self.count else -1e4
        self.count += 1
        return logits


def test_eos_mode_stops_early_and_pads(model, images):
    tok = model.tokenizer
    ends = [5, 10, 0]                                                  # object boundaries
    real = model.decoder
    model.decoder = EOSAtStep(real, ends, tok.eos_id)
    try:
        out = generate(model, images, delayed_eos=False, generator=torch.Generator().manual_seed(0))
    finally:
        model.decoder = real
    tokens = out["tokens"]
    assert tokens.shape == (3, max(ends) + 1)                          # stopped once all had ended
    for b, end in enumerate(ends):
        assert tokens[b, end] == tok.eos_id and not (tokens[b, :end] == tok.eos_id).any()
        assert (tokens[b, end + 1:] == tok.pad_id).all()
        assert (out["class_probs"][b, end // 5:] == 0).all() and (out["class_probs"][b, :end // 5] > 0).all()
    preds = postprocess(tokens, out["class_probs"], tok)
    assert [len(p["boxes"]) <= end // 5 for p, end in zip(preds, ends)] == [True] * 3


def test_generate_restores_training_mode_and_validates(model, images):
    model.train()
    generate(model, images[:1], max_objects=1, greedy=True)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="max_objects"):
        generate(model, images, max_objects=model.tokenizer.max_objects + 1)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, images, temperature=0.0)


# ---------------------------------------------------------------- sub-bin coordinates
@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 80), st.integers(0, 4))
def test_refine_bin_stays_in_its_window(seed, num_bins, window):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, num_bins, generator=g) * 3
    chosen = torch.randint(0, num_bins, (5,), generator=g)
    refined = refine_bin(logits, chosen, window, torch.arange(num_bins))
    low, high = (chosen - window).clamp(min=0), (chosen + window).clamp(max=num_bins - 1)
    assert ((refined >= low - 1e-4) & (refined <= high + 1e-4)).all()
    if window == 0:
        torch.testing.assert_close(refined, chosen.float())


def test_refine_bin_by_hand():
    bins = torch.arange(10)
    flat = torch.zeros(2, 10)
    torch.testing.assert_close(refine_bin(flat, torch.tensor([4, 0]), 2, bins), torch.tensor([4.0, 1.0]))  # edge: 0,1,2
    leaning = torch.full((1, 10), -30.0)
    leaning[0, 4], leaning[0, 5] = math.log(3), 0.0                     # 3:1 between bins 4 and 5
    torch.testing.assert_close(refine_bin(leaning, torch.tensor([4]), 1, bins), torch.tensor([4.25]))


def test_refine_window_keeps_the_tokens_and_moves_coordinates_by_at_most_the_window(model, images):
    tok = model.tokenizer
    plain = generate(model, images, generator=torch.Generator().manual_seed(3))
    refined = generate(model, images, generator=torch.Generator().manual_seed(3), refine_window=2)
    assert torch.equal(plain["tokens"], refined["tokens"]) and "coord_bins" not in plain
    coord = torch.arange(plain["tokens"].size(1)) % 5 < 4
    coord[-1] = False                                                  # the final EOS slot
    token_bins = (plain["tokens"] - tok.coord_offset).float()
    assert ((refined["coord_bins"] - token_bins)[:, coord].abs() <= 2 + 1e-4).all()
    exact = postprocess(plain["tokens"], plain["class_probs"], tok, coord_bins=token_bins.clamp(min=0))
    for a, b in zip(exact, postprocess(plain["tokens"], plain["class_probs"], tok)):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
    for a, b in zip(predict(model, images, None, generator=torch.Generator().manual_seed(3), refine_window=2),
                    postprocess(refined["tokens"], refined["class_probs"], tok, coord_bins=refined["coord_bins"])):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))
    with pytest.raises(ValueError, match="refine_window must be >= 0 bins, got -1"):
        generate(model, images, refine_window=-1)


# ---------------------------------------------------------------- post-processing
def test_postprocess_recovers_encoded_boxes(model):
    tok = model.tokenizer
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.3, 0.0, 0.9, 0.4]])
    seq = tok.encode(boxes, torch.tensor([1, 3]))[1:]                  # drop BOS, keep EOS
    probs = torch.zeros(1, tok.max_objects, NUM_CLASSES)
    probs[0, 0] = torch.tensor([0.1, 0.6, 0.2, 0.1])
    probs[0, 1] = torch.tensor([0.05, 0.05, 0.1, 0.3])                 # noise took the rest of the mass
    (pred,) = postprocess(seq[None], probs, tok)
    half_bin = 0.5 / (tok.num_bins - 1)
    torch.testing.assert_close(pred["boxes"], boxes, atol=half_bin + 1e-6, rtol=0)
    assert pred["labels"].tolist() == [1, 3]
    torch.testing.assert_close(pred["scores"], torch.tensor([0.6, 0.3]))
    (pix,) = postprocess(seq[None], probs, tok, orig_sizes=[(50, 100)])   # H=50, W=100: letterboxed
    torch.testing.assert_close(pix["boxes"], (pred["boxes"] * 100).clamp(max=torch.tensor([100., 50.]).repeat(2)))
    # no EOS: still detected; a class token in a coordinate slot: that object is dropped
    (no_eos,) = postprocess(seq[None, :-1], probs, tok)
    assert torch.equal(no_eos["boxes"], pred["boxes"])
    bad = seq.clone()
    bad[5 + 2] = tok.class_token(torch.tensor(0))
    (dropped,) = postprocess(bad[None], probs, tok)
    assert dropped["labels"].tolist() == [1]
    flat = seq.clone()
    flat[0] = flat[2]                                                  # ymin == ymax: degenerate
    assert postprocess(flat[None], probs, tok)[0]["labels"].tolist() == [3]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_postprocess_never_crashes_and_stays_in_the_image(model, data):
    tok = model.tokenizer
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    B, L = data.draw(st.integers(1, 3)), data.draw(st.integers(0, 5 * tok.max_objects + 1))
    n_obj = data.draw(st.integers(0, tok.max_objects))
    tokens = torch.randint(0, tok.vocab_size, (B, L), generator=g)
    if data.draw(st.booleans()):                                       # mostly well-formed objects
        coords = torch.randint(tok.coord_offset, tok.vocab_size, (B, L), generator=g)
        classes = torch.randint(tok.class_offset, tok.noise_class_id + 1, (B, L), generator=g)
        slot = torch.arange(L) % 5 == 4
        tokens = torch.where(slot, classes, coords)
    probs = torch.rand(B, n_obj, NUM_CLASSES, generator=g) / NUM_CLASSES
    sizes = [(data.draw(st.integers(1, 500)), data.draw(st.integers(1, 500))) for _ in range(B)]
    preds = postprocess(tokens, probs, tok, orig_sizes=sizes)
    assert len(preds) == B
    for b, (pred, (H, W)) in enumerate(zip(preds, sizes)):
        n = len(pred["boxes"])
        assert pred["boxes"].shape == (n, 4) and pred["scores"].shape == (n,) == pred["labels"].shape
        assert n <= min(L // 5, n_obj)
        boxes = pred["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= W).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= H).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert ((pred["labels"] >= 0) & (pred["labels"] < NUM_CLASSES)).all()
        table = probs[b].max(-1).values
        assert all(torch.isclose(table, s).any() for s in pred["scores"])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, NUM_CLASSES))
def test_labels_per_object_adds_the_next_likeliest_classes(model, seed, k):
    """k labels per object: the one-label output is the first of each group of k; each object's k
    detections share its box, hold k different labels, and their scores fall as the label rank rises."""
    tok = model.tokenizer
    g = torch.Generator().manual_seed(seed)
    n = tok.max_objects
    coords = torch.randint(tok.coord_offset, tok.vocab_size, (2, 5 * n), generator=g)
    classes = torch.randint(tok.class_offset, tok.noise_class_id + 1, (2, 5 * n), generator=g)
    tokens = torch.where(torch.arange(5 * n) % 5 == 4, classes, coords)
    probs = torch.rand(2, n, NUM_CLASSES, generator=g) / NUM_CLASSES
    for one, many in zip(postprocess(tokens, probs, tok), postprocess(tokens, probs, tok, labels_per_object=k)):
        m = len(one["labels"])
        assert len(many["labels"]) == k * m
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(many[key][0::k], one[key])
        assert torch.equal(many["boxes"], one["boxes"].repeat_interleave(k, dim=0))
        labels, scores = many["labels"].view(m, k), many["scores"].view(m, k)
        assert all(len(set(row.tolist())) == k for row in labels)
        assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_labels_per_object_is_checked(model):
    tok = model.tokenizer
    tokens = torch.full((1, 5), tok.coord_offset)
    probs = torch.rand(1, 1, NUM_CLASSES)
    for bad in (0, NUM_CLASSES + 1):
        with pytest.raises(ValueError, match=f"labels_per_object must be in \\[1, {NUM_CLASSES}\\].*{bad}"):
            postprocess(tokens, probs, tok, labels_per_object=bad)


def test_predict_boxes_inside_original_images(model, images):
    sizes = torch.tensor([[model.image_size, model.image_size // 2], [40, 90], [333, 120]])
    preds = predict(model, images, sizes, slot_mask=False, top_p=1.0, generator=torch.Generator().manual_seed(0))
    assert len(preds) == 3
    for pred, (H, W) in zip(preds, sizes.tolist()):
        boxes = pred["boxes"]
        assert ((boxes >= 0).all() and (boxes[:, 0::2] <= W).all() and (boxes[:, 1::2] <= H).all())
        assert ((pred["scores"] > 0) & (pred["scores"] <= 1)).all()
    with pytest.raises(ValueError, match="orig_sizes"):
        predict(model, images, sizes[:2])
