"""Chapter 05b: presets, the Pix2Seq model, config round trip, attention maps."""
import copy
import io
import json
import urllib.error

import pytest
import torch
import torchvision

from p2s_lib.box_prior import BoxPriorDecoder
from p2s_lib.decoder import Decoder
from p2s_lib.model import (PRESETS, CheckpointError, Pix2Seq, build_decoder, count_parameters, cross_attention_maps,
                           input_slot_names, load_model, part_arguments, preset_arguments, save_model,
                           show_cross_attention)
from p2s_lib.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def nano() -> Pix2Seq:
    torch.manual_seed(0)
    return Pix2Seq.from_preset("nano", num_classes=4).eval()


def test_presets_have_the_same_fields():
    assert set(PRESETS) == {"nano", "small", "r50"}
    assert len({frozenset(p) for p in PRESETS.values()}) == 1
    # the paper's trunks start from ImageNet (as every port does); the tiny CPU trunk has no such weights
    assert {name: p["pretrained"] for name, p in PRESETS.items()} == {"nano": False, "small": True, "r50": True}


def test_nano_matches_the_cpu_prototype(nano):
    tok = nano.tokenizer
    assert (tok.num_bins, tok.max_objects, nano.image_size) == (64, 10, 128)
    assert len(nano.encoder.layers) == 0 and len(nano.decoder.layers) == 3 and nano.decoder.d_model == 192
    assert nano.decoder.layers[0].self_attn.num_heads == 4
    assert nano.decoder.layers[0].mlp[0].out_features == 2 * 192  # a departure: the prototype's MLP was 4x
    assert 1.5e6 < count_parameters(nano) < 1.9e6  # narrow tiny trunk and MLP (the prototype had 3.0M)
    assert isinstance(nano.encoder.proj_norm, torch.nn.Identity)  # the preset's departures (ch. 05b)
    assert nano.config["encoder"]["memory_norm"] is False and nano.config["decoder"]["linear_init"] == "torch"
    assert nano.decoder.box_prior == (tok.coord_offset, tok.num_bins)  # the class step's box prior (ch. 05a)
    assert nano.decoder.partial_box_prior and nano.config["decoder"]["partial_box_prior"] is True  # ch. 05a, section 3
    assert getattr(Pix2Seq.from_preset("small", 20, pretrained=False).decoder, "box_prior", None) is None


def test_config_without_partial_box_prior_still_loads(nano):
    """Checkpoints written before the coordinate steps' prior have no such config key or gain."""
    config = {**nano.config, "decoder": {k: v for k, v in nano.config["decoder"].items() if k != "partial_box_prior"}}
    old = Pix2Seq.from_config(config)
    assert old.decoder.partial_box_prior is False and old.decoder.partial_box_prior_gain is None
    old.load_state_dict({k: v for k, v in nano.state_dict().items() if k != "decoder.partial_box_prior_gain"})


def test_box_prior_on_a_non_square_grid(nano):
    images = torch.rand(2, 3, 128, 96)                                   # an 8 x 6 grid
    tokens = torch.tensor([[1, 10, 10, 40, 30, 3], [1, 12, 14, 50, 60, 4]])
    with torch.no_grad():
        full = nano(images, tokens)
        memory = nano.encode(images)
        cache = nano.decoder.new_cache(memory, nano.encoder.grid_size(128, 96))
        steps = torch.cat([nano.decoder(tokens[:, i:i + 1], cache=cache) for i in range(6)], dim=1)
    assert torch.allclose(steps, full, atol=1e-5)


def test_forward_shapes(nano):
    tok = nano.tokenizer
    images = torch.rand(2, 3, 128, 128)
    tokens = torch.randint(0, tok.vocab_size, (2, tok.max_seq_len - 1))
    with torch.no_grad():
        logits = nano(images, tokens)
        memory = nano.encode(images)
    assert logits.shape == (2, tok.max_seq_len - 1, tok.vocab_size)
    assert memory.shape == (2, 64, 192)


def test_r50_parameter_count_against_the_official_readme():
    model = Pix2Seq.from_preset("r50", num_classes=80, pretrained=False)  # COCO; nothing downloaded
    n = count_parameters(model)
    # google-research/pix2seq README: 36.6M (36,587,768 from its code); ours lacks exactly its encoder->decoder
    # block (592,384), 3000 - 1084 vocabulary ids x 257, and 512 - 502 decoder positions x 256 (ch. 05b, section 3)
    assert n == 36_587_768 - 592_384 - (3000 - 1084) * 257 - (512 - 502) * 256, n
    assert model.tokenizer.num_bins == 1000 and model.tokenizer.max_objects == 100 and model.image_size == 640
    assert len(model.encoder.layers) == 6 and len(model.decoder.layers) == 6


def test_small_preset_runs():
    model = Pix2Seq.from_preset("small", num_classes=20, pretrained=False).eval()
    assert len(model.encoder.layers) == 2 and len(model.decoder.layers) == 4
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 96, 96), torch.tensor([[1, 5, 30]]))
    assert logits.shape == (1, 3, model.tokenizer.vocab_size)


def test_overrides():
    m = Pix2Seq.from_preset("nano", num_classes=3, num_bins=100, max_objects=4, image_size=96, dropout=0.0,
                            decoder_layers=1)
    assert m.tokenizer == Tokenizer(num_classes=3, num_bins=100, max_objects=4)
    assert m.decoder.token_emb.num_embeddings == m.tokenizer.vocab_size
    assert m.decoder.pos_emb.num_embeddings == m.tokenizer.max_seq_len == 22
    assert m.image_size == 96 and len(m.decoder.layers) == 1 and m.decoder.drop.p == 0.0


def test_sincos_init_applied_by_preset():
    on = Pix2Seq.from_preset("nano", num_classes=4)
    off = Pix2Seq.from_preset("nano", num_classes=4, sincos_init=False)
    def neighbour_sim(m):
        e = m.decoder.token_emb.weight[m.tokenizer.coord_offset:].detach()
        return torch.nn.functional.cosine_similarity(e[:-1], e[1:]).mean().item()
    assert neighbour_sim(on) > 0.8 and abs(neighbour_sim(off)) < 0.2


def test_config_round_trip(nano):
    cfg = nano.config
    assert json.loads(json.dumps(cfg)) == cfg  # plain data
    buf = io.BytesIO()
    torch.save({"config": cfg, "state_dict": nano.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    rebuilt = Pix2Seq.from_config(ckpt["config"]).eval()
    rebuilt.load_state_dict(ckpt["state_dict"])
    assert rebuilt.config == cfg and rebuilt.tokenizer == nano.tokenizer and rebuilt.image_size == nano.image_size
    images, tokens = torch.rand(1, 3, 128, 128), torch.tensor([[1, 20, 30, 40, 50, 3]])
    with torch.no_grad():
        assert torch.equal(rebuilt(images, tokens), nano(images, tokens))


def test_from_config_does_not_download(monkeypatch, tmp_path):
    def offline(*a, **k):
        raise urllib.error.URLError("offline")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    cfg = copy.deepcopy(Pix2Seq.from_preset("small", num_classes=2, pretrained=False).config)
    cfg["encoder"]["pretrained"] = True  # as saved by a run that started from ImageNet weights
    model = Pix2Seq.from_config(cfg)     # weights will come from the checkpoint: no download
    assert model.config["encoder"]["backbone"] == "resnet18"
    with pytest.raises(RuntimeError, match="--no-pretrained"):
        Pix2Seq.from_config(cfg, pretrained=True)


def test_preset_arguments():
    args = preset_arguments("nano", num_classes=3, num_bins=100, max_objects=4)
    assert set(args) == {"tokenizer", "encoder", "decoder", "image_size", "sincos_init"}
    assert args["tokenizer"] == Tokenizer(num_classes=3, num_bins=100, max_objects=4)
    assert args["encoder"]["backbone"] == "tiny" and args["encoder"]["num_layers"] == 0
    assert args["decoder"]["num_layers"] == 3 and args["decoder"]["box_prior"] == [args["tokenizer"].coord_offset, 100]
    assert preset_arguments("r50", num_classes=3)["decoder"]["box_prior"] is None
    with pytest.raises(ValueError, match=r"unknown preset field\(s\) \['bins'\]"):
        preset_arguments("nano", num_classes=3, bins=10)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_arguments("huge", num_classes=3)


def test_part_arguments():
    tok = Tokenizer(num_classes=2, num_bins=16, max_objects=3)
    enc = dict(backbone="tiny", d_model=64, num_layers=0)
    enc_args, dec_args = part_arguments(tok, enc, dict(num_layers=1))
    assert enc_args["backbone"] == "tiny" and "memory_norm" in enc_args              # defaults filled in
    assert dec_args["d_model"] == 64 and dec_args["num_layers"] == 1
    assert (dec_args["vocab_size"], dec_args["max_len"]) == (tok.vocab_size, tok.max_seq_len)
    assert dec_args["box_prior"] is None and dec_args["partial_box_prior"] is False
    with pytest.raises(ValueError, match="d_model differ"):
        part_arguments(tok, enc, dict(d_model=32))
    with pytest.raises(ValueError, match="comes from the tokenizer"):
        part_arguments(tok, enc, dict(vocab_size=10))


def test_build_decoder():
    tok = Tokenizer(num_classes=2, num_bins=16, max_objects=3)
    _, plain = part_arguments(tok, dict(backbone="tiny", d_model=64), dict(num_layers=1))
    _, prior = part_arguments(tok, dict(backbone="tiny", d_model=64),
                              dict(num_layers=1, box_prior=[tok.coord_offset, tok.num_bins]))
    assert type(build_decoder(plain)) is Decoder
    assert isinstance(build_decoder(prior), BoxPriorDecoder)


def test_constructor():
    tok = Tokenizer(num_classes=2, num_bins=16, max_objects=3)
    m = Pix2Seq(tok, dict(backbone="tiny", d_model=64, num_layers=0),
                dict(num_layers=1, num_heads=4, dim_feedforward=64), image_size=64)
    assert m.decoder.d_model == 64 and m.tokenizer is tok and m.image_size == 64
    assert "vocab_size" not in m.config["decoder"] and m.config["tokenizer"] == tok.to_dict()
    assert {k.split(".")[0] for k in m.state_dict()} == {"encoder", "decoder"}


def test_cross_attention_maps(nano):
    maps = cross_attention_maps(nano, torch.rand(2, 3, 128, 96), torch.tensor([[1, 10, 20], [1, 11, 21]]))
    assert maps.shape == (2, 3, 8, 6)
    assert torch.allclose(maps.sum((-2, -1)), torch.ones(2, 3), atol=1e-5)


def test_input_slot_names_follow_the_grammar():
    tok = Tokenizer(num_classes=2, num_bins=10, max_objects=2)
    seq = tok.encode(torch.tensor([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]), torch.tensor([1, 0]))
    names = input_slot_names(seq[:11], tok, ["cat", "dog"])
    assert names[0] == "BOS"
    assert names[1:6] == ["ymin 2", "xmin 1", "ymax 5", "xmax 4", "class dog"]
    assert names[6:11] == ["ymin 0", "xmin 0", "ymax 9", "xmax 9", "class cat"]


def test_show_cross_attention_uses_one_fixed_scale():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    maps = torch.full((2, 4, 4), 1 / 16)
    maps[1] = 0.0
    maps[1, 0, 0] = 1.0                                   # all weight on one cell: 16x uniform, clipped at vmax
    fig, axs = plt.subplots(1, 2)
    overlay = show_cross_attention(axs, torch.rand(3, 32, 32), maps, ["a", "b"], vmax=8.0)
    assert overlay.get_clim() == (0.0, 8.0)
    flat = axs[0].get_images()[1].get_array()
    assert float(flat.min()) == float(flat.max()) == 1.0   # uniform attention plots as 1 everywhere
    assert [ax.get_title() for ax in axs] == ["a", "b"]
    with pytest.raises(ValueError, match="one map and one title per axis"):
        show_cross_attention(axs, torch.rand(3, 32, 32), maps[:1], ["a"])
    plt.close(fig)


def test_save_and_load_model(nano, tmp_path):
    images, tokens = torch.rand(1, 3, 128, 128), torch.tensor([[1, 20, 30, 40, 50, 3]])
    with torch.no_grad():
        expected = nano(images, tokens)
    path = save_model(nano, tmp_path / "sub" / "nano.pt", class_names=["a", "b", "c", "d"], step=7)
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    model, extra = load_model(path)
    assert extra == {"format": "p2s-checkpoint", "class_names": ["a", "b", "c", "d"], "step": 7}
    with torch.no_grad():
        assert torch.equal(model.eval()(images, tokens), expected)
    half = save_model(nano, tmp_path / "half.pt", half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    model, _ = load_model(half)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(model.eval()(images, tokens), expected, atol=2e-2)


def test_load_model_errors(nano, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_model(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a p2s checkpoint"):
        load_model(tmp_path / "other.pt")
    path = save_model(nano, tmp_path / "nano.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["decoder"]["num_layers"] = 2
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="weights don't match"):
        load_model(tmp_path / "mismatch.pt")
