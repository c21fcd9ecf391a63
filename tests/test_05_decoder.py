"""Chapter 05: causal mask, cacheable attention, the decoder and its key/value cache, sin-cos init."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from p2s_lib.decoder import Decoder, DecoderLayer, KVCache, MultiHeadAttention, causal_mask, init_sincos_


def small_decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    args = dict(vocab_size=50, max_len=40, d_model=32, num_layers=2, num_heads=4, dim_feedforward=64, dropout=0.1)
    return Decoder(**{**args, **kw}).eval()


def test_causal_mask():
    assert torch.equal(causal_mask(3, 3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    # two new queries after three cached keys: positions 3 and 4
    assert torch.equal(causal_mask(2, 5), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))
    with pytest.raises(ValueError, match="more queries than keys"):
        causal_mask(4, 3)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch_reference(causal):
    torch.manual_seed(0)
    d, h = 32, 4
    ours = MultiHeadAttention(d, h).eval()
    ref = nn.MultiheadAttention(d, h, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.kv_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.kv_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(2, 7, d)
    k, v = ours.project_kv(x)
    mask = ~causal_mask(7, 7) if causal else None  # torch: True = NOT allowed
    expected, expected_w = ref(x, x, x, attn_mask=mask, average_attn_weights=False)
    fast, none = ours(x, k, v, causal=causal)
    slow, w = ours(x, k, v, causal=causal, return_attention=True)
    assert none is None
    assert torch.allclose(fast, expected, atol=1e-5) and torch.allclose(slow, expected, atol=1e-5)
    assert torch.allclose(w, expected_w, atol=1e-6)


def test_attention_bad_heads():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(30, 4)


def test_attention_takes_at_most_one_of_causal_bias_mask():
    mha = MultiHeadAttention(32, 4)
    k, v = mha.project_kv(torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match="bias"):
        mha(torch.randn(1, 3, 32), k, v, causal=True, bias=torch.zeros(1, 1, 3, 3))


def test_kv_cache_is_preallocated_and_written_by_index():
    mha = MultiHeadAttention(16, 2)
    cache = KVCache([mha.project_kv(torch.randn(3, 5, 16))], max_len=8)
    assert cache.batch_size == 3 and cache.length == 0 and int(cache.position) == 0
    k1, v1 = mha.project_kv(torch.randn(3, 2, 16))
    K, V = cache.append(0, k1, v1, torch.arange(2))
    assert K.shape == (3, 2, 8, 8) and torch.equal(K[:, :, :2], k1) and torch.equal(V[:, :, :2], v1)
    assert not K[:, :, 2:].any()
    k2, v2 = mha.project_kv(torch.randn(3, 1, 16))
    K2, _ = cache.append(0, k2, v2, torch.tensor([2]))
    assert K2.data_ptr() == K.data_ptr()  # the same buffer: no shape ever changes
    assert torch.equal(K2[:, :, 2:3], k2) and torch.equal(K2[:, :, :2], k1)
    assert cache.key_mask(torch.tensor([2])).tolist() == [[True] * 3 + [False] * 5]


def test_decoder_layer_shapes():
    layer = DecoderLayer(32, 4, 64, 0.0).eval()
    mem = torch.randn(2, 9, 32)
    y, (ws, wc) = layer(torch.randn(2, 5, 32), layer.cross_attn.project_kv(mem), return_attention=True)
    assert y.shape == (2, 5, 32) and ws.shape == (2, 4, 5, 5) and wc.shape == (2, 4, 5, 9)


def test_decoder_shapes_and_tied_output():
    dec = small_decoder()
    tokens, mem = torch.randint(0, 50, (3, 12)), torch.randn(3, 7, 32)
    logits = dec(tokens, mem)
    assert logits.shape == (3, 12, 50)
    # output layer = token embedding (transposed) + separate bias; no other output matrix
    names = [n for n, _ in dec.named_parameters()]
    assert "out_bias" in names and not any("head" in n or "lm" in n for n in names)
    dec.out_bias.data.normal_()
    final = []
    dec.norm.register_forward_hook(lambda module, args, out: final.append(out))
    with torch.no_grad():
        logits = dec(tokens, mem)
    assert torch.allclose(logits, final[0] @ dec.token_emb.weight.T + dec.out_bias, atol=1e-5)
    # an id that never enters the decoder still gets a gradient: through the output layer, the shared matrix
    unseen = torch.randint(0, 49, (3, 12))
    dec.train()
    dec(unseen, mem).logsumexp(-1).sum().backward()
    assert dec.token_emb.weight.grad[49].abs().sum() > 0


def test_decoder_is_causal():
    dec = small_decoder()
    tokens, mem = torch.randint(0, 50, (2, 15)), torch.randn(2, 7, 32)
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 50
    with torch.no_grad():
        a, b = dec(tokens, mem), dec(changed, mem)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-4)


CHUNKINGS = [[1] * 40, [3] * 13 + [1], [7, 1, 8, 2, 8, 6, 8], [40]]


def cache_equals_full_pass(dec: Decoder, chunks: list[int]) -> None:
    """Feeding a sequence in pieces through the cache gives the logits of one full teacher-forced pass."""
    g = torch.Generator().manual_seed(len(chunks))
    tokens = torch.randint(8, dec.token_emb.num_embeddings, (2, 40), generator=g)
    tokens[:, 0] = 1
    mem = torch.randn(2, 16, 32, generator=g)
    with torch.no_grad():
        full = dec(tokens, mem)
        cache, pieces, start = dec.new_cache(mem), [], 0
        for n in chunks:
            pieces.append(dec(tokens[:, start:start + n], cache=cache))
            start += n
    assert cache.length == 40
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5), (torch.cat(pieces, 1) - full).abs().max()


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_the_cache_in_any_chunking_equals_the_full_pass(chunks):
    cache_equals_full_pass(small_decoder(), chunks)


def test_cross_kv_computed_once_per_image():
    dec = small_decoder()
    calls = []
    dec.layers[0].cross_attn.kv_proj.register_forward_hook(lambda *a: calls.append(1))
    mem = torch.randn(1, 7, 32)
    with torch.no_grad():
        cache = dec.new_cache(mem)
        for i in range(5):
            dec(torch.tensor([[i]]), cache=cache)
    assert len(calls) == 1


def test_return_attention():
    dec = small_decoder()
    tokens, mem = torch.randint(0, 50, (2, 6)), torch.randn(2, 7, 32)
    with torch.no_grad():
        logits, attn = dec(tokens, mem, return_attention=True)
        assert torch.allclose(logits, dec(tokens, mem), atol=1e-5)
    assert len(attn["self"]) == len(attn["cross"]) == 2
    assert attn["self"][1].shape == (2, 4, 6, 6) and attn["cross"][0].shape == (2, 4, 6, 7)
    assert torch.allclose(attn["cross"][0].sum(-1), torch.ones(2, 4, 6), atol=1e-5)
    assert (attn["self"][0][..., 0, 1:] == 0).all()  # first token sees only itself


def test_decoder_errors():
    dec = small_decoder(max_len=10)
    mem = torch.randn(1, 3, 32)
    with pytest.raises(ValueError, match="exceeds max_len 10"):
        dec(torch.zeros(1, 11, dtype=torch.long), mem)
    cache = dec.new_cache(mem)
    dec(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceeds max_len"):
        dec(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cache holds 1 sequences, tokens have 2"):
        dec(torch.zeros(2, 1, dtype=torch.long), cache=dec.new_cache(mem))
    with pytest.raises(ValueError, match="memory is required"):
        dec(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens \[B, T\]"):
        dec(torch.zeros(4, dtype=torch.long), mem)


def test_init_sincos():
    dec = Decoder(vocab_size=10 + 64, max_len=52, d_model=64, num_layers=1, num_heads=4, dim_feedforward=32)
    other = dec.token_emb.weight[:10].clone()
    dec.init_sincos_(coord_offset=10, num_bins=64)
    assert torch.equal(dec.token_emb.weight[:10], other)  # non-coordinate tokens untouched
    bins = F.normalize(dec.token_emb.weight[10:].detach(), dim=1)
    sim = bins @ bins.T
    assert sim[20, 21] > 0.9 and sim[20, 60] < 0.3        # neighbours similar, far bins not
    assert sim[20, 21] > sim[20, 23] > sim[20, 30]
    assert abs(dec.token_emb.weight[10:].std().item() - 0.02) < 0.003
    pos = F.normalize(dec.pos_emb.weight.detach(), dim=1)
    assert (pos[10] @ pos[11]) > 0.9 and (pos[10] @ pos[11]) > (pos[10] @ pos[40])
    with pytest.raises(ValueError, match="outside vocabulary"):
        dec.init_sincos_(coord_offset=20, num_bins=64)


def test_init_sincos_is_the_method():
    a, b = small_decoder(vocab_size=72), small_decoder(vocab_size=72)
    assert a.init_sincos_(8, 64) is a and Decoder.init_sincos_ is init_sincos_
    init_sincos_(b, 8, 64)
    assert torch.equal(a.token_emb.weight, b.token_emb.weight) and torch.equal(a.pos_emb.weight, b.pos_emb.weight)


def test_linear_init_choices():
    gpt, torch_init = small_decoder(), small_decoder(linear_init="torch")
    for dec, expected in ((gpt, 0.02), (torch_init, 1 / (3 * 32) ** 0.5)):  # Kaiming-uniform: 1/sqrt(3 fan_in)
        w = dec.layers[0].cross_attn.q_proj.weight
        assert abs(w.std().item() - expected) < 0.15 * expected
        assert abs(dec.token_emb.weight.std().item() - 0.02) < 0.003  # embeddings: N(0, 0.02) either way
    assert torch.count_nonzero(torch_init.layers[0].mlp[0].bias) > 0  # PyTorch's default biases are not zero
    with pytest.raises(ValueError, match="linear_init"):
        small_decoder(linear_init="xavier")


def test_plain_decoder_accepts_and_ignores_grid():
    """Every decoder is called alike (chapter 08 passes the memory's grid); the paper's ignores it."""
    dec = small_decoder()
    tokens, mem = torch.randint(0, 50, (2, 6)), torch.randn(2, 6, 32)
    with torch.no_grad():
        full = dec(tokens, mem)
        assert torch.equal(dec(tokens, mem, grid=(2, 3)), full)
        cache = dec.new_cache(mem, (2, 3))
        assert type(cache) is KVCache and not hasattr(cache, "tokens")
        steps = torch.cat([dec.step(tokens[:, i:i + 1], cache) for i in range(6)], dim=1)
    assert torch.allclose(steps, full, atol=1e-5) and int(cache.position) == 6
