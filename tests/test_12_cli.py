"""Chapter 12: the command line (train, evaluate, predict, demo), its exit codes and its bad-input messages."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2s_lib.cli import main
from p2s_lib.data import SYNTHETIC_CLASSES, VOCDataset
from p2s_lib.model import load_model


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> dict:
    """One epoch of nano on the tiny set, made once for the predict and COCO tests."""
    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "--data-root", str(synthetic_root), "--classes", "synthetic", "--image-size", "64",
                 "--epochs", "1", "--batch-size", "4", "--eval-images", "2", "--out", str(out)]) == 0
    return {"root": synthetic_root, "checkpoint": out / "best.pt"}


def test_cli_train_evaluate_predict(synthetic_root, tmp_path, capsys, eager_compile):
    """--compile must reach the compiled decoder step (under conftest's eager backend)."""
    from p2s_lib import inference
    compiled = eager_compile
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(synthetic_root), "--classes", "infer", "--preset", "nano",
                 "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
                 "--eval-images", "4", "--val-set", "val", "--max-objects", "7", "--out", str(out)]) == 0
    assert load_model(out / "best.pt")[0].tokenizer.max_objects == 7       # --max-objects overrides the preset
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(synthetic_root),
                 "--image-set", "test", "--max-images", "4", "--out", str(tmp_path / "eval0")]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed[printed.rindex("{\n"):])
    assert {"map", "map_50", "voc_map_50"} <= set(metrics)
    assert (metrics["refine_window"], metrics["top_p"], metrics["labels_per_object"]) == (2, 0.4, 4)  # the cpu recipe's
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(synthetic_root),
                 "--image-set", "test", "--max-images", "4", "--refine-window", "0", "--labels-per-object", "1",
                 "--out", str(tmp_path / "eval")]) == 0                   # as the paper decodes
    coco = json.loads((tmp_path / "eval" / "predictions_coco.json").read_text())
    assert isinstance(coco, list)
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(synthetic_root),
                 "--image-set", "test", "--max-images", "4", "--refine-window", "0", "--labels-per-object", "1",
                 "--compile", "--out", str(tmp_path / "eval_compiled")]) == 0  # the compiled decoder step
    assert compiled == [inference._decoder_step]                        # compiled once, the decoder step
    from_compiled = json.loads((tmp_path / "eval_compiled" / "predictions_coco.json").read_text())
    assert [(d["image_id"], d["category_id"], d["bbox"]) for d in from_compiled] == \
        [(d["image_id"], d["category_id"], d["bbox"]) for d in coco]       # the same draws, the same boxes
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(synthetic_root),
                 "--image-set", "test", "--max-images", "4", "--labels-per-object", "2", "--refine-window", "0",
                 "--out", str(tmp_path / "eval2")]) == 0                  # same draws, two labels per object
    coco2 = json.loads((tmp_path / "eval2" / "predictions_coco.json").read_text())
    assert len(coco2) == 2 * len(coco)
    assert {json.dumps(d, sort_keys=True) for d in coco} <= {json.dumps(d, sort_keys=True) for d in coco2}
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(synthetic_root),
                 "--image-set", "test", "--max-images", "4", "--refine-window", "2",
                 "--out", str(tmp_path / "eval3")]) == 0                  # same draws, sub-bin coordinates
    coco3 = json.loads((tmp_path / "eval3" / "predictions_coco.json").read_text())
    assert len(coco3) >= len(coco) and all(0 <= d["score"] <= 1 for d in coco3)
    assert [d["bbox"] for d in coco3] != [d["bbox"] for d in coco]       # the edges moved below the bin size
    images = synthetic_root / "VOCdevkit" / "VOC2007" / "JPEGImages"
    first = sorted(images.iterdir())[0]
    assert main(["predict", "--checkpoint", str(out / "best.pt"), str(first), "--out", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / f"{first.stem}.png").exists()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["image"] == str(first) and isinstance(line["detections"], list)


def test_predict_draws_every_readable_image_and_names_each_unreadable_one(trained, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted((trained["root"] / "VOCdevkit" / "VOC2007" / "JPEGImages").iterdir())[:3]
    for k, src in enumerate(sources):
        (folder / f"{k}_{src.name}").write_bytes(src.read_bytes())
    (folder / "1_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")   # sorts between the good ones
    (folder / "notes.txt").write_text("not an image, not even tried")
    code = main(["predict", "--checkpoint", str(trained["checkpoint"]), str(folder), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 1                                                        # some inputs were skipped
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == sorted(f"{k}_{s.stem}.png" for k, s in
                                                                               enumerate(sources))
    assert "1_broken.jpg: not a readable image" in captured.err and "1 of 4 images could not be read" in captured.err
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 3
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["predict", "--checkpoint", str(trained["checkpoint"]), str(empty)]) == 2
    assert "no images" in capsys.readouterr().err


def test_evaluate_and_demo_take_no_progress_as_train_does(trained, tmp_path, capsys):
    from p2s_lib.cli import build_parser
    parser = build_parser()
    for argv in (["train"], ["evaluate", "--checkpoint", "x"], ["demo"]):
        assert getattr(parser.parse_args(argv), "progress", True) and parser.parse_args([*argv, "--no-progress"]).progress is False
    evaluate = ["evaluate", "--checkpoint", str(trained["checkpoint"]), "--data-root", str(trained["root"]),
                "--image-set", "test", "--max-images", "2", "--out", str(tmp_path / "eval")]
    assert main(evaluate) == 0 and "evaluate:" in capsys.readouterr().err       # a tqdm bar by default
    assert main([*evaluate, "--no-progress"]) == 0 and "evaluate:" not in capsys.readouterr().err


def test_coco_json_data_trains_evaluates_and_predicts(trained, tmp_path, capsys):
    from p2s_lib.coco import voc_to_coco
    images = trained["root"] / "VOCdevkit" / "VOC2007" / "JPEGImages"
    for split in ("train", "val"):
        voc_to_coco(VOCDataset(trained["root"], "2007", split, classes=SYNTHETIC_CLASSES), tmp_path / f"{split}.json")
    out = tmp_path / "coco_run"
    assert main(["train", "--data-root", str(images), "--train-set", str(tmp_path / "train.json"),
                 "--val-set", str(tmp_path / "val.json"), "--image-size", "64", "--epochs", "1", "--batch-size", "4",
                 "--eval-images", "2", "--out", str(out)]) == 0
    assert load_model(out / "best.pt")[1]["class_names"] == list(SYNTHETIC_CLASSES)   # infer: category id order
    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--data-root", str(images),
                 "--image-set", str(tmp_path / "val.json"), "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["images"] == 2
    assert main(["predict", "--checkpoint", str(out / "best.pt"), str(tmp_path / "val.json"), "--data-root",
                 str(images), "--out", str(tmp_path / "pics")]) == 0
    assert len(list((tmp_path / "pics").glob("*.png"))) == 2
    capsys.readouterr()
    assert main(["train", "--data-root", str(images), "--train-set", str(tmp_path / "train.json"), "--epochs", "1"]) == 2
    assert "give both --train-set and --val-set" in capsys.readouterr().err


def test_bad_arguments_and_corrupt_checkpoint_give_clear_errors(synthetic_root, trained, tmp_path, capsys):
    assert main(["train", "--data-root", str(synthetic_root), "--preset", "huge"]) == 2
    assert "--preset must be one of" in capsys.readouterr().err
    assert main(["train", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "download_voc.py" in capsys.readouterr().err
    assert main(["train", "--data-root", str(synthetic_root), "--max-objects", "0"]) == 2
    assert "--max-objects must be >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--data-root", str(synthetic_root), "--transpose", "1.5"]) == 2
    assert "--transpose is a probability, got 1.5" in capsys.readouterr().err
    for k in ("0", "5"):                                                # the synthetic set has 4 classes
        assert main(["train", "--data-root", str(synthetic_root), "--classes", "synthetic",
                     "--labels-per-object", k]) == 2
        assert f"--labels-per-object must be in [1, 4] (the classes), got {k}" in capsys.readouterr().err
    assert main(["train", "--data-root", str(synthetic_root), "--refine-window", "-1"]) == 2
    assert "--refine-window must be >= 0 bins, got -1" in capsys.readouterr().err
    assert main(["train", "--data-root", str(synthetic_root), "--decay-frac", "0"]) == 2
    assert "--decay-frac must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert main(["train", "--data-root", str(synthetic_root), "--color-jitter", "-0.1"]) == 2
    assert "--color-jitter must be >= 0, got -0.1" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(bad), "--data-root", str(synthetic_root)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(bad), str(tmp_path)]) == 2
    assert main(["evaluate", "--checkpoint", str(trained["checkpoint"]), "--data-root", str(synthetic_root),
                 "--max-images", "0"]) == 2
    assert "--max-images must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "three"])
    assert main(["train", "--data-root", str(synthetic_root), "--resume", str(tmp_path / "missing.pt")]) == 2


def test_an_empty_split_file_stops_train_at_once_naming_it(synthetic_root, tmp_path, capsys):
    import shutil
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    (root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "none.txt").write_text("")
    assert main(["train", "--data-root", str(root), "--train-set", "none", "--val-set", "val"]) == 2
    err = capsys.readouterr().err
    assert "none.txt: the training set lists no images" in err and len(err.splitlines()) == 1


def test_demo_trains_scores_and_draws(synthetic_root, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--minutes", "0.1", "--data-root", str(synthetic_root), "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "train:" not in captured.err                                 # --no-progress reaches the trainer
    printed = captured.out
    summary = json.loads(printed[printed.rindex("{\n"):])
    assert {"test_map_50", "test_map"} <= set(summary) and summary["test_map_50"] >= summary["test_map"]
    assert (out / "predictions.png").stat().st_size > 0 and (out / "curves.png").exists()


def test_demo_under_torchrun_trains_and_reports_once(synthetic_root, tmp_path):
    out = tmp_path / "demo_ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "p2s_lib",
           "demo", "--minutes", "0.1", "--data-root", str(synthetic_root), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"test_map_50"') == 1                   # rank 0 alone reports
    summary = json.loads(done.stdout[done.stdout.rindex("{\n"):])
    assert "test_map_50" in summary and (out / "predictions.png").stat().st_size > 0
    assert (out / "last.pt").exists() and (out / "log.csv").exists()   # training under torchrun, written by rank 0


def test_first_label_keeps_each_objects_likeliest_class():
    import torch
    from p2s_lib.cli import first_label
    from p2s_lib.inference import postprocess
    from p2s_lib.tokenizer import Tokenizer
    tok = Tokenizer(num_classes=3, num_bins=16, max_objects=2)
    tokens = tok.encode(torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.8]]), torch.tensor([0, 2]))[None]
    probs = torch.tensor([[[0.2, 0.5, 0.3], [0.1, 0.3, 0.6]]])
    one, three = (postprocess(tokens[:, 1:], probs, tok, None, k)[0] for k in (1, 3))
    assert all(torch.equal(first_label(three, 3)[key], one[key]) for key in one)


def fake_imagenet_cache(home: Path, monkeypatch) -> "torch.Tensor":
    """A torch hub cache of our own making at `home`, holding ResNet-18 "ImageNet" weights (random ones,
    under the real file name); every download is refused, as offline. Returns the file's conv1 weight."""
    import urllib.error
    import torch
    import torchvision
    from p2s_lib.encoder import imagenet_weights_file
    monkeypatch.setenv("TORCH_HOME", str(home))
    def offline(*a, **k):
        raise urllib.error.URLError("offline")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    path = imagenet_weights_file("resnet18")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    return state["conv1.weight"]


def small_train_args(root: Path, out: Path) -> list[str]:
    return ["train", "--data-root", str(root), "--classes", "synthetic", "--preset", "small", "--image-size", "64",
            "--max-objects", "4", "--epochs", "1", "--stop-after-steps", "1", "--batch-size", "2", "--num-workers", "0",
            "--eval-images", "2", "--val-set", "val", "--out", str(out)]


def test_pretrained_flags(synthetic_root, tmp_path, monkeypatch, capsys):
    """small starts from the cached ImageNet trunk by default; --no-pretrained from random weights;
    with an empty cache offline, --pretrained stops at once with the file and the folder named."""
    import torch
    from p2s_lib.recipes import make_config
    from p2s_lib.train import Trainer
    conv1 = fake_imagenet_cache(tmp_path / "home", monkeypatch)
    given = dict(data_root=str(synthetic_root), classes="synthetic", preset="small", image_size=64, epochs=1, batch_size=2,
                 val_set="val", out=str(tmp_path / "py"))
    assert torch.equal(Trainer(make_config(**given)).model.encoder.backbone[0].weight.cpu(), conv1)
    assert not torch.equal(Trainer(make_config(**given, pretrained=False)).model.encoder.backbone[0].weight.cpu(), conv1)

    assert main(small_train_args(synthetic_root, tmp_path / "on") + ["--pretrained"]) == 0
    info = load_model(tmp_path / "on" / "last.pt")[1]
    assert info["train_config"]["pretrained"] is True and "command line" in info["train_config"]["sources"]["pretrained"]
    assert main(small_train_args(synthetic_root, tmp_path / "off") + ["--no-pretrained"]) == 0
    assert load_model(tmp_path / "off" / "last.pt")[1]["train_config"]["pretrained"] is False
    capsys.readouterr()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert main(small_train_args(synthetic_root, tmp_path / "offline") + ["--pretrained"]) == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth" in err and str(tmp_path / "empty" / "hub" / "checkpoints") in err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "on" / "last.pt"), "--data-root", str(synthetic_root),
                 "--image-set", "val", "--out", str(tmp_path / "eval")]) == 0  # a checkpoint never fetches weights


def test_field_help_reads_each_fields_trailing_comment_and_train_help_shows_it(capsys):
    from dataclasses import dataclass
    from p2s_lib.cli import FLAGS, field_help
    from p2s_lib.config import TrainConfig

    @dataclass
    class Example:
        plain: int = 1                # a count, 50% of it
        url: str = "http://a#b"       # kept whole
        bare: float = 0.5
        # a comment on its own line belongs to no field
    assert field_help(Example) == {"plain": "a count, 50%% of it", "url": "kept whole"}
    assert {f.name for f in FLAGS} <= field_help(TrainConfig).keys()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--progress, --no-progress a tqdm bar over the training steps" in out


def test_every_commands_help_is_formatted_100_columns_wide(capsys):
    for command in ("train", "evaluate", "predict", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        widths = [len(line) for line in capsys.readouterr().out.splitlines()]
        assert 80 < max(widths) <= 100, (command, max(widths))
