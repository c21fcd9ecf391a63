"""Chapter 11: recipes resolve, flags override them, the checkpoint stores them and resume keeps them."""
import math
from dataclasses import fields

import pytest

from p2s_lib.cli import main
from p2s_lib.model import load_model
from p2s_lib.recipes import CPU, PAPER, RECIPES, RESULTS, SETTINGS, VOC, Recipe, check_setting_names, make_config, recipe_for
from p2s_lib.config import TrainConfig, validate_config


def test_a_recipe_resolves_and_what_is_given_overrides_it(tmp_path):
    cfg = make_config(data_root=str(tmp_path), classes="a,b", vflip=0.5, transpose=0.5, scale_max=1.5, world_size=1)
    assert cfg.recipe == "cpu" and cfg.preset == "nano"                      # nano runs the cpu recipe
    for name, (value, _) in CPU.settings.items():
        if name not in ("lr", "scale_max"):
            assert getattr(cfg, name) == value, name
    assert cfg.scale_max == 1.5 and cfg.source("scale_max") == "given (argument)"
    assert (cfg.vflip, cfg.transpose, cfg.classes) == (0.5, 0.5, "a,b")     # facts about the data, as stated
    assert cfg.source("scale_min").startswith("recipe cpu: ") and cfg.source("hflip") == "TrainConfig default"
    assert cfg.epochs is None and cfg.max_minutes == 15                    # a budget, no hidden epoch cap
    validate_config(cfg)


def test_the_preset_picks_its_recipe_and_an_unknown_one_is_refused():
    assert recipe_for("nano") == "cpu" and recipe_for("small") == recipe_for("r50") == "paper"
    assert make_config(preset="r50").recipe == "paper" and make_config(recipe="voc").preset == "r50"
    assert make_config(recipe="paper", preset="nano").preset == "nano"        # a flag beats the recipe's preset
    with pytest.raises(ValueError, match="--recipe must be one of \\['cpu', 'paper', 'voc'\\], got 'fast'"):
        make_config(recipe="fast")


def test_a_misspelt_setting_or_a_value_without_its_source_is_refused_naming_it():
    check_setting_names(["lr", "decay_frac"], "fine")                      # valid names pass
    with pytest.raises(ValueError, match=r"recipe 'bad': unknown setting\(s\) \['decay_fraction'\] "
                                         r"\('decay_fraction': did you mean 'decay_frac'\?\)") as refused:
        Recipe("bad", "a typo", {"decay_fraction": (0.35, "nowhere")})
    assert str(refused.value).endswith(", ".join(SETTINGS))               # and every valid name
    assert "recipe" not in SETTINGS and "sources" not in SETTINGS          # not settable
    with pytest.raises(ValueError, match=r"recipe 'bad': lr must be \(value, source\), got 0.001"):
        Recipe("bad", "no source", {"lr": 1e-3})
    with pytest.raises(ValueError, match=r"make_config: unknown setting\(s\) \['learning_rate'\] "
                                         r"\('learning_rate': no close name\)"):
        make_config(learning_rate=1e-3)


def test_every_recipe_value_names_its_source_and_voc_says_it_is_unmeasured():
    names = {f.name for f in fields(TrainConfig)}
    for recipe in RECIPES.values():
        assert recipe.purpose and set(recipe.settings) <= names
        assert all(isinstance(source, str) and len(source) > 5 for _, source in recipe.settings.values())
    assert "NOT YET MEASURED" in VOC.purpose and "last.pt" in VOC.settings["val_set"][1]  # best.pt is picked on test
    assert RESULTS not in CPU.settings["scale_min"][1]                     # a choice, not a measurement
    assert (VOC.settings["train_set"][0], VOC.settings["val_set"][0]) == ("trainval", "test")
    assert VOC.settings["pretrained"][0] is True and VOC.settings["backbone_lr_frac"][0] == 0.1
    cfg = make_config(recipe="voc", world_size=1)
    assert (cfg.preset, cfg.image_size, cfg.year, cfg.pretrained) == ("r50", 640, "2007+2012", True)
    assert cfg.lr == pytest.approx(1e-3) and "Pretrained-Pix2Seq" in cfg.source("lr")


def test_the_lr_follows_the_global_batch_unless_given(monkeypatch):
    """The recipe's lr is for lr_batch images; x sqrt(global batch / lr_batch); WORLD_SIZE counts; --lr wins."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert math.isclose(make_config().lr, 8e-4 * math.sqrt(2))
    assert math.isclose(make_config(batch_size=16).lr, 1.6e-3)
    assert make_config(lr=5e-4).lr == 5e-4
    assert "sqrt(global batch 16 / 8)" in make_config().source("lr")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert math.isclose(make_config(batch_size=2).lr, 4e-4)
    assert math.isclose(make_config(recipe="paper").lr, 3e-4)               # batch 32 at lr_batch 32


def test_the_checkpoint_stores_the_recipe_and_resume_keeps_it(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data-root", str(synthetic_root), "--classes", "synthetic", "--image-size", "64", "--batch-size", "4",
              "--eval-images", "4", "--out", str(out)]
    assert main(["train", "--recipe", "cpu", "--epochs", "1", "--stop-after-steps", "2", *common]) == 0
    printed = capsys.readouterr().out
    assert "p2s run, recipe 'cpu':" in printed and "given (command line)" in printed
    first = load_model(out / "last.pt")[1]["train_config"]
    assert first["recipe"] == "cpu" and first["sources"]["decay_frac"].startswith("recipe cpu")
    assert first["sources"]["epochs"] == "given (command line)"
    assert main(["train", "--resume", "--recipe", "paper", *common]) == 0   # resume: the stored recipe wins
    resumed = load_model(out / "last.pt")[1]
    assert resumed["step"] == 5 and resumed["train_config"]["recipe"] == "cpu"
    assert {k: resumed["train_config"][k] for k in ("lr", "decay_frac", "scale_min", "epochs", "max_minutes")} == \
           {k: first[k] for k in ("lr", "decay_frac", "scale_min", "epochs", "max_minutes")}


def test_a_given_length_is_the_only_length():
    """--max-minutes alone trains for the budget (no epoch cap); --epochs alone has no recipe budget."""
    budget = make_config(recipe="paper", max_minutes=30)
    assert (budget.epochs, budget.max_minutes) == (None, 30) and budget.source("epochs") == "none: max_minutes is given"
    epochs = make_config(epochs=50)                                        # nano: the cpu recipe's 15 minutes go
    assert (epochs.epochs, epochs.max_minutes) == (50, None)
    both = make_config(epochs=50, max_minutes=5)
    assert (both.epochs, both.max_minutes) == (50, 5)
    assert make_config(max_objects=12).spare_slots is None               # a stated length of sequence wins
