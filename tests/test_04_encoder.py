"""Chapter 04: sin-cos positions, CNN trunks, the image encoder."""
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings, strategies as st

from p2s_lib.encoder import (BACKBONES, ImageEncoder, TinyCNN, build_backbone, imagenet_weights_file, sincos_1d,
                             sincos_2d_position_embedding)


def test_sincos_1d_values():
    e = sincos_1d(torch.arange(3), 4, temperature=100.0)
    assert e.shape == (3, 4)
    # frequencies 1 and 1/10; first half sines, second half cosines
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0],
                             [0.841471, 0.099833, 0.540302, 0.995004],
                             [0.909297, 0.198669, -0.416147, 0.980067]])
    assert torch.allclose(e, expected, atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        sincos_1d(torch.arange(3), 5)


def test_sincos_2d_layout():
    h, w, d = 3, 5, 16
    pe = sincos_2d_position_embedding(h, w, d)
    assert pe.shape == (h * w, d)
    grid = pe.view(h, w, d)
    # first half codes the row only, second half the column only (row-major order)
    assert torch.allclose(grid[:, :1, : d // 2].expand(h, w, d // 2), grid[..., : d // 2])
    assert torch.allclose(grid[:1, :, d // 2:].expand(h, w, d // 2), grid[..., d // 2:])
    assert torch.allclose(grid[2, 4, : d // 2], sincos_1d(torch.tensor([2]), d // 2)[0])
    # all positions distinct; closer cells more similar
    sim = F.normalize(pe, dim=1) @ F.normalize(pe, dim=1).T
    assert (sim - torch.eye(h * w)).max() < 0.9999
    assert sim[0, 1] > sim[0, 4]
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_position_embedding(2, 2, 6)
    with pytest.raises(ValueError, match="at least 1"):
        sincos_2d_position_embedding(0, 2, 8)


def test_tiny_cnn_shapes():
    net = TinyCNN()
    assert net.stride == 16 and net.out_channels == 128
    assert net(torch.rand(2, 3, 128, 128)).shape == (2, 128, 8, 8)


@pytest.mark.parametrize("name,channels,stride", [("resnet18", 512, 32), ("resnet50", 2048, 32), ("tiny", 128, 16)])
def test_build_backbone(name, channels, stride):
    net, c = build_backbone(name)
    assert c == channels and net.stride == stride
    # no pooling/classifier left: spatial output
    assert net.eval()(torch.rand(1, 3, 64, 96)).shape == (1, channels, 64 // stride, 96 // stride)


def test_build_backbone_bad_input():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="no pretrained"):
        build_backbone("tiny", pretrained=True)
    assert set(BACKBONES) == {"resnet50", "resnet18", "tiny"}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache of the test's own, and every download refused (as offline)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    return tmp_path


def test_pretrained_loads_from_the_hub_cache(torch_home):
    """A weights file in $TORCH_HOME/hub/checkpoints is used, without any download."""
    path = imagenet_weights_file("resnet18")
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    reference = torchvision.models.resnet18()
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    trunk, channels = build_backbone("resnet18", pretrained=True)
    assert channels == 512 and torch.equal(trunk[0].weight, reference.conv1.weight)
    assert torch.equal(trunk[7][1].conv2.weight, reference.layer4[1].conv2.weight)
    encoder = ImageEncoder("resnet18", pretrained=True, num_layers=0)
    assert torch.equal(encoder.backbone[0].weight, reference.conv1.weight)


def test_pretrained_offline_names_the_file_and_folder(torch_home):
    with pytest.raises(RuntimeError) as info:
        build_backbone("resnet50", pretrained=True)
    msg = str(info.value)
    assert "resnet50-11ad3fa6.pth" in msg and str(torch_home / "hub" / "checkpoints") in msg
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in msg and "--no-pretrained" in msg
    assert "URLError" in msg  # why the download failed


def test_pretrained_downloads_a_missing_file(torch_home, monkeypatch):
    """Without the file, the weights API fetches it (here faked)."""
    reference, seen = torchvision.models.resnet18(), []
    def fake_download(url, *args, **kwargs):
        seen.append(url)
        return reference.state_dict()
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    trunk, _ = build_backbone("resnet18", pretrained=True)
    assert seen == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    assert torch.equal(trunk[0].weight, reference.conv1.weight)


def test_position_codes_are_a_buffer_for_the_cached_size():
    enc = ImageEncoder("tiny", d_model=32, num_layers=0, dropout=0.0).eval()
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        computed = enc(images)
        enc.cache_positions(64, 96)
        assert enc.positions_grid == (4, 6) and enc.positions.shape == (24, 32)
        assert "positions" not in enc.state_dict()  # not stored in checkpoints
        assert torch.equal(enc(images), computed)
        assert enc(torch.rand(1, 3, 32, 32)).shape == (1, 4, 32)  # another size still works


def test_encoder_shapes_and_layers():
    enc = ImageEncoder("tiny", d_model=64, num_layers=2, num_heads=4, dim_feedforward=128).eval()
    assert len(enc.layers) == 2 and enc.layers[0].norm_first and enc.layers[0].self_attn.batch_first
    assert enc(torch.rand(2, 3, 128, 96)).shape == (2, 8 * 6, 64)
    enc0 = ImageEncoder("tiny", d_model=64, num_layers=0)
    assert len(enc0.layers) == 0 and enc0.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 16, 64)


def test_memory_norm_is_optional():
    torch.manual_seed(0)
    normed = ImageEncoder("tiny", d_model=32, num_layers=0, dropout=0.0).eval()
    plain = ImageEncoder("tiny", d_model=32, num_layers=0, dropout=0.0, memory_norm=False).eval()
    plain.load_state_dict({k: v for k, v in normed.state_dict().items() if not k.startswith("proj_norm")})
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        pos = sincos_2d_position_embedding(4, 4, 32)
        content = normed.proj(normed.features(images)).flatten(2).transpose(1, 2)
        assert torch.allclose(plain(images), content + pos, atol=1e-5)          # no LayerNorm
        assert torch.allclose(normed(images), F.layer_norm(content, (32,)) + pos, atol=1e-5)
    assert not any(k.startswith("proj_norm") for k in plain.state_dict())


def test_encoder_projection_is_linear_1x1():
    enc = ImageEncoder("resnet18", d_model=256, num_layers=0)
    assert isinstance(enc.proj, torch.nn.Conv2d) and enc.proj.kernel_size == (1, 1)
    assert enc.proj.in_channels == 512 and enc.proj.out_channels == 256


def test_encoder_normalizes_inside():
    enc = ImageEncoder("tiny", d_model=32, num_layers=0).eval()
    assert "mean" not in enc.state_dict()  # buffers, not checkpoint state
    mean_image = enc.mean.expand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(enc.features(mean_image), enc.backbone(torch.zeros(1, 3, 32, 32)))


def test_encoder_adds_positions():
    enc = ImageEncoder("tiny", d_model=32, num_layers=0, dropout=0.0).eval()
    with torch.no_grad():
        mem = enc(torch.full((1, 3, 128, 128), 0.5))[0]
    # a constant image gives the same features at interior cells; the memory still differs by position
    assert not torch.allclose(mem[9], mem[10], atol=1e-3)


@settings(max_examples=8, deadline=None)
@given(st.integers(17, 140), st.integers(17, 140))
def test_grid_size_matches_output(h, w):
    enc = ImageEncoder("tiny", d_model=32, num_layers=0).eval()
    gh, gw = enc.grid_size(h, w)
    with torch.no_grad():
        assert enc(torch.rand(1, 3, h, w)).shape == (1, gh * gw, 32)


def test_encoder_bad_input():
    with pytest.raises(ValueError, match="divisible by 4"):
        ImageEncoder("tiny", d_model=30)
    enc = ImageEncoder("tiny", d_model=32, num_layers=0)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        enc(torch.rand(3, 32, 32))
