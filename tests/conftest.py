"""Shared pytest fixtures."""
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic VOC dataset (24 images, 96 px, seed 0, year 2007), made once per test session.

    Returns ROOT, so `VOCDataset(synthetic_root, "2007", "train", classes=SYNTHETIC_CLASSES)` works.
    Splits: train 20, val 2, trainval 22, test 2. Treat it as read-only."""
    from p2s_lib.data import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("synthetic"), year="2007", num_images=24,
                              image_size=96, seed=0)


@pytest.fixture
def eager_compile(monkeypatch) -> list:
    """`torch.compile` with the eager backend standing in for inductor (whose CPU code generation takes most of a
    minute): dynamo's graph capture runs for real. Returns the functions compiled; the decoder step's cached
    compiled copy is reset so a test sees its own. tests/test_08_inference.py checks inductor itself."""
    import torch
    from p2s_lib import inference
    compiled, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or real_compile(fn, **{**kw, "backend": "eager"}))
    monkeypatch.setattr(inference, "_COMPILED_STEP", None)
    return compiled
