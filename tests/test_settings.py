"""Stage settings: a config section becomes flags, the CLI parses them back into the same settings."""

import shlex

import pytest
import yaml

from conftest import REPO, TINY
from pssl.cli import build_parser
from pssl.errors import InputError
from pssl.settings import (
    DemoSettings,
    ExplainSettings,
    FinetuneSettings,
    IndexSettings,
    LabelSettings,
    PretrainSettings,
    SanitySettings,
    TrainSettings,
    ZooSettings,
    demo_settings,
    explain_settings,
    finetune_settings,
    index_settings,
    label_settings,
    pretrain_settings,
    sanity_settings,
    settings_flags,
    settings_from_args,
    zoo_settings,
)

CONFIGS = {"demo": REPO / "config.yaml", "paper": REPO / "presets/paper.yaml", "pilot": REPO / "presets/pilot.yaml",
           "tiny": TINY}
REQUIRED = {  # each command's arguments that are not settings
    "demo-data": "--out x",
    "index": "--root r --out x",
    "sanity": "--index i --config c --out x",
    "zoo": "--spec r --source train --out x",
    "explain": "--shard s --zoo z --out x",
    "label": "--shard s --store t --zoo z --out x",
    "pretrain": "--stores s --labels l --out-dir x --head pspnet --backbone b",
    "finetune": "--dataset camvid --root r --head pspnet --backbone b --init pssl --init-from i --out-dir x",
}


def parsed(command: str, flags: str, *classes):
    args = build_parser().parse_args([command, *shlex.split(REQUIRED[command]), *shlex.split(flags)])
    return tuple(settings_from_args(cls, args) for cls in classes)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_to_flags_to_cli_round_trip(name):
    """What the rules pass is exactly what the library receives, for every stage of every shipped config."""
    config = yaml.safe_load(CONFIGS[name].read_text())
    stages = [("index", (index_settings(config),)), ("sanity", (sanity_settings(config),)),
              ("zoo", (zoo_settings(config),)), ("explain", (explain_settings(config),)),
              ("label", (label_settings(config),)), ("pretrain", pretrain_settings(config))]
    if config["demo"]["enabled"]:
        stages.append(("demo-data", (demo_settings(config),)))
    for dataset in config["finetune"]["datasets"]:
        for model in config["finetune"]["models"]:
            stages.append(("finetune", finetune_settings(config, dataset, model, lr=0.003)))
    for command, settings in stages:
        assert parsed(command, settings_flags(*settings), *map(type, settings)) == settings, command


def test_settings_carry_the_config_values():
    tiny = yaml.safe_load(TINY.read_text())
    geometry, train = finetune_settings(tiny, "cityscapes", "ocr", lr=0.5)
    assert geometry == FinetuneSettings(crop=32, base_size=48, window=64, eval_split="val", scales=(1.0,),
                                        flip=False)
    assert (train.lr, train.epochs, train.weight_decay, train.batch_size, train.schedule) == (0.5, 1, 1e-4, 2, "poly")
    pretrain, train = pretrain_settings(tiny)
    assert pretrain == PretrainSettings(crop=32, w_bg=0.1, pad_label="ignore", decile_threshold=9, ignore_deciles=())
    assert (train.epochs, train.schedule, train.milestone, train.seed) == (1, "step", 1, 0)
    assert explain_settings(tiny).n_samples == 2 and label_settings(tiny).top_k == 2


def test_cli_defaults_are_the_dataclass_defaults_and_documented():
    """Calling `pssl` by hand gets the settings classes' defaults, and --help shows each with its default."""
    for command, classes in (("demo-data", (DemoSettings,)), ("index", (IndexSettings,)),
                             ("sanity", (SanitySettings,)), ("zoo", (ZooSettings,)),
                             ("explain", (ExplainSettings,)), ("label", (LabelSettings,)),
                             ("pretrain", (PretrainSettings, TrainSettings)),
                             ("finetune", (FinetuneSettings, TrainSettings))):
        assert parsed(command, "", *classes) == tuple(cls() for cls in classes)
    sub = build_parser()._subparsers._group_actions[0].choices["explain"]
    helps = {a.dest: a.help for a in sub._actions}
    assert "(default: %(default)s)" in helps["n_samples"] and helps["device"]
    assert sub.format_help().count("default: 50") == 1


def test_a_missing_setting_is_named():
    tiny = yaml.safe_load(TINY.read_text())
    del tiny["explain"]["noise_level"]
    with pytest.raises(InputError, match="ExplainSettings: the config gives no noise_level"):
        explain_settings(tiny)


def test_bad_boolean_flag_is_refused():
    with pytest.raises(SystemExit):
        parsed("explain", "--keep-model-deciles maybe", ExplainSettings)
