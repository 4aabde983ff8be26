"""Stage settings: a config section becomes flags, the CLI parses them back into the same settings."""

import argparse
import dataclasses
import shlex

import pytest

from conftest import REPO, SCHEMA, TINY, full_config
from pssl.cli import build_parser
from pssl.errors import InputError
from pssl.settings import (
    FINETUNE_DEFAULTS,
    DemoSettings,
    ExplainSettings,
    FinetuneSettings,
    IndexSettings,
    LabelSettings,
    PretrainSettings,
    SanitySettings,
    TrainSettings,
    ZooSettings,
    add_settings_flags,
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
    config = full_config(CONFIGS[name])
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


def test_the_per_class_layers_settings_are_fine_tunings_alone():
    """Stated in a fine-tune command when set (and parsed back, a number too); at their defaults left out of
    every command and identity, so the jobs and checkpoints written before they existed stay valid; never flags
    of the pre-training commands."""
    from pssl.settings import output_identity
    demo = full_config(CONFIGS["demo"])
    geometry, train = finetune_settings(demo, "camvid", "pspnet_resnet10t")
    assert train.classifier_lr_mult == 10 and "--classifier-lr-mult 10" in settings_flags(geometry, train)
    std = dataclasses.replace(train, classifier_init_std=0.01)
    assert parsed("finetune", settings_flags(geometry, std), FinetuneSettings, TrainSettings) == (geometry, std)
    assert output_identity(std)["classifier_init_std"] == 0.01
    for settings in (pretrain_settings(demo), finetune_settings(full_config(CONFIGS["paper"]), "camvid",
                                                                 "pspnet_resnet50d")):
        assert "--classifier" not in settings_flags(*settings)
        assert not {"classifier_lr_mult", "classifier_init_std"} & set(output_identity(settings[1]))
    for command in ("pretrain", "pretrain-mdp", "pretrain-ms3"):
        actions = build_parser()._subparsers._group_actions[0].choices[command]._actions
        assert not {"classifier_lr_mult", "classifier_init_std"} & {a.dest for a in actions}, command
    # a command default for such a setting would be lost when the workflow leaves its flag out
    with pytest.raises(ValueError, match="classifier_lr_mult"):
        add_settings_flags(argparse.ArgumentParser(), TrainSettings, defaults={"classifier_lr_mult": 2.0})


def test_settings_carry_the_config_values():
    tiny = full_config(TINY)
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
        expected = tuple(cls() for cls in classes)
        if command == "finetune":  # fine-tuning's own optimisation defaults
            expected = (expected[0], dataclasses.replace(expected[1], **FINETUNE_DEFAULTS))
        assert parsed(command, "", *classes) == expected
    sub = build_parser()._subparsers._group_actions[0].choices["explain"]
    helps = {a.dest: a.help for a in sub._actions}
    assert "(default: %(default)s)" in helps["n_samples"] and helps["device"]
    assert sub.format_help().count("default: 50") == 1


def test_a_missing_setting_is_named():
    tiny = full_config(TINY)
    del tiny["explain"]["noise_level"]
    with pytest.raises(InputError, match="ExplainSettings: the config gives no noise_level"):
        explain_settings(tiny)


def test_bad_boolean_flag_is_refused():
    with pytest.raises(SystemExit):
        parsed("explain", "--keep-model-deciles maybe", ExplainSettings)


# ---- one place per setting: the schema's entries are generated from the dataclasses ---------------------------

# Settings fields a config does not hold in their own class's section, and where their value comes from.
SET_ELSEWHERE = {
    ("DemoSettings", "seed"): "seed", ("ZooSettings", "seed"): "seed", ("ExplainSettings", "seed"): "seed",
    ("TrainSettings", "seed"): "seed (pre-training) and finetune.seeds",
    ("LabelSettings", "num_workers"): "explain.num_workers",
    ("StudentSettings", "data"): "the init's suffix (+st, +dup)",
}


def test_every_stage_setting_has_a_place_in_the_config():
    """Every field of every settings class is a key of some config section (pssl.settings.CONFIG_SECTIONS),
    or comes from the one other key SET_ELSEWHERE names."""
    import dataclasses

    from pssl import settings
    placed = {(part.cls.__name__, f.name) for section in settings.CONFIG_SECTIONS.values() for part in section.parts
              for f in part.fields()}
    classes = [c for c in vars(settings).values() if isinstance(c, type) and c.__name__.endswith("Settings")
               and dataclasses.is_dataclass(c) and c is not settings.MultiDatasetSettings]  # MDP's and MS3's base
    assert len(classes) == 15
    unplaced = {(c.__name__, f.name) for c in classes for f in dataclasses.fields(c)} - placed
    assert unplaced == set(SET_ELSEWHERE)


def test_the_schema_entry_of_a_setting_is_generated_from_its_field():
    from pssl.config import config_schema
    schema = config_schema(SCHEMA)
    entry = schema["properties"]["explain"]["properties"]["n_samples"]
    assert entry == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50,
                     "description": "SmoothGrad noisy samples per image"}
    finetune = schema["properties"]["finetune"]["properties"]
    assert finetune["schedule"] == {"enum": ["step", "poly", "cosine"], "default": "poly",  # the section's own
                                    "description": TrainSettings.__dataclass_fields__["schedule"].metadata["help"]}
    assert finetune["lr_search"]["properties"]["max_values"]["minimum"] == 3
    dataset = finetune["datasets"]["additionalProperties"]["properties"]
    assert dataset["window"]["type"] == ["integer", "null"] and "default" not in dataset["epochs"]
    variant = schema["properties"]["pretrain_variants"]["additionalProperties"]["properties"]
    assert "default" not in variant["w_bg"] and variant["ignore_deciles"]["items"] == {"type": "integer",
                                                                                       "minimum": 0, "maximum": 9}


def test_adding_a_setting_is_one_edit(monkeypatch):
    """A new field of a settings class is validated (type, range, choices), defaulted and named in errors with
    no other file touched: the schema's entry is generated."""
    import dataclasses

    from pssl import settings
    from pssl.config import ConfigError, validate_config

    @dataclasses.dataclass(frozen=True)
    class Extended(ExplainSettings):
        smoothing: float = settings.setting(0.5, "a new setting", ge=0, le=1)

    sections = dict(settings.CONFIG_SECTIONS, explain=settings.Section((settings.Fields(Extended, exclude=("seed",)),)))
    monkeypatch.setattr(settings, "CONFIG_SECTIONS", sections)
    config = full_config(REPO / "config.yaml")
    del config["explain"]["smoothing"]
    validate_config(config, SCHEMA)
    assert config["explain"]["smoothing"] == 0.5
    config["explain"]["smoothing"] = 2
    with pytest.raises(ConfigError, match="explain.smoothing: 2 is greater than the maximum of 1"):
        validate_config(config, SCHEMA)


def test_a_setting_written_in_the_schema_too_is_refused(tmp_path):
    import yaml

    from pssl.config import config_schema
    schema = yaml.safe_load(SCHEMA.read_text())
    schema["properties"]["explain"]["properties"] = {"n_samples": {"type": "integer"}}
    copy = tmp_path / "schema.yaml"
    copy.write_text(yaml.safe_dump(schema))
    with pytest.raises(ValueError, match="explain.n_samples is a setting of pssl.settings"):
        config_schema(copy)


def test_a_variants_unknown_setting_is_refused_with_the_nearest_name():
    from pssl.config import ConfigError, validate_config
    config = full_config(REPO / "config.yaml")
    config["pretrain_variants"]["x"] = {"w_bgg": 1.0}
    with pytest.raises(ConfigError, match=r"unknown config key 'pretrain_variants.x.w_bgg' \(did you mean 'w_bg'"):
        validate_config(config, SCHEMA)


# ---- config files hold only what differs from the defaults ------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_shipped_config_gives_no_key_twice(name):
    from pssl.config import ConfigError, strict_yaml
    strict_yaml(CONFIGS[name].read_text(), name)
    with pytest.raises(ConfigError, match="key 'figure3' is given twice in one mapping"):
        strict_yaml(CONFIGS[name].read_text() + "\nfigure3: {model: x, dataset: y}\n", name)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_shipped_config_states_no_default(name):
    """Leaving out any key a shipped config states would change its value: the file holds differences only."""
    import copy

    import yaml

    from pssl.config import ConfigError, config_schema, fill_and_validate, leaves
    raw, schema = yaml.safe_load(CONFIGS[name].read_text()), config_schema(SCHEMA)
    defaults = []
    for path in leaves(raw):
        if path[0] in ("experiments", "pretrain_variants"):
            continue  # entries the config names; they have no defaults
        without = copy.deepcopy(raw)
        node = without
        for part in path[:-1]:
            node = node[part]
        value = node.pop(path[-1])
        try:
            fill_and_validate(without, schema)
        except ConfigError:
            continue  # required
        node = without
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node == value:
            defaults.append(".".join(path))
    assert defaults == []


def test_the_paper_preset_is_the_papers_choices():
    """87 values, about a third of the former complete file's 244: 48 of them the variants and experiments of
    Tables 1, 2 and 4, the D8 ablation and MDP's and MS3's; the rest the zoo, the models, the datasets'
    protocols and GPUs, the data loaders and MS3's class vectors."""
    import yaml

    from pssl.config import leaves
    paper = yaml.safe_load((REPO / "presets/paper.yaml").read_text())
    assert len(leaves(paper)) <= 87
    assert sum(path[0] in ("experiments", "pretrain_variants") for path in leaves(paper)) == 48


def test_a_variant_like_another_takes_its_overrides_under_its_own():
    from pssl.config import ConfigError, validate_config
    from pssl.settings import pretrain_variant
    config = full_config(REPO / "config.yaml")
    config["pretrain_variants"].update(short={"images": 24, "epochs": 1}, low={"like": "short", "w_bg": 0.01},
                                       lower={"like": "low", "epochs": 3})
    validate_config(config, SCHEMA)
    assert pretrain_variant(config, "lower") == {"epochs": 3, "w_bg": 0.01, "images": 24}
    assert list(pretrain_variant(config, "low")) == ["w_bg", "images", "epochs"]  # its own first (row labels)
    assert pretrain_settings(config, "lower")[1].epochs == 3 and pretrain_settings(config, "low")[1].epochs == 1
    config["pretrain_variants"]["short"]["like"] = "lower"
    with pytest.raises(ConfigError, match="pretrain_variants.short.like: .*short -> lower -> low -> short"):
        validate_config(config, SCHEMA)
    config["pretrain_variants"]["short"]["like"] = "nope"
    with pytest.raises(ConfigError, match="no pre-training variant 'nope'"):
        validate_config(config, SCHEMA)


def test_pssl_config_says_where_each_value_comes_from(capsys):
    from pssl.cli import main
    main(["config", "--configfile", str(TINY), "--config", "explain={n_samples: 3}"])
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["explain.n_samples"].endswith("# --config") and ": 3 " in lines["explain.n_samples"]
    assert lines["explain.image_size"].endswith(f"# {TINY}")
    assert lines["explain.output"].endswith("# default: pssl.settings.ExplainSettings")
    assert lines["finetune.schedule"].endswith("# default: pssl.settings.TrainSettings (finetune's)")
    assert lines["cluster.runtime_scale"].endswith("# default: workflow/schemas/config.schema.yaml")
    assert lines["pretrain_variants.oracle.label_source"].endswith("# built-in: pssl.settings.BUILTIN_VARIANTS")


def test_a_configs_entry_of_a_built_in_variants_name_changes_it():
    from pssl.config import validate_config
    config = full_config(REPO / "config.yaml")
    config["pretrain_variants"]["fused"] = {"fusion_prior": "d9"}
    validate_config(config, SCHEMA)
    fused = pretrain_settings(config, "fused")[0]
    assert (fused.label_mode, fused.fusion_prior) == ("fused", "d9")
    assert full_config(REPO / "config.yaml")["pretrain_variants"]["oracle"] == {"label_source": "oracle"}


def test_a_models_overrides_cannot_change_the_split_the_table_reports():
    from pssl.config import ConfigError, validate_config
    config = full_config(REPO / "config.yaml")
    config["finetune"]["datasets"]["voc_aug"]["per_model"] = {"pspnet_resnet10t": {"eval_split": "test"}}
    with pytest.raises(ConfigError, match="per_model.pspnet_resnet10t.eval_split"):
        validate_config(config, SCHEMA)


def test_the_source_of_a_value_is_the_last_layer_that_set_it(tmp_path):
    from pssl.config import load_config
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("pretrain_variants: {w05: {w_bg: 0.5}}\nexplain: {n_samples: 3}\n")
    b.write_text("pretrain_variants: {}\nexplain: {n_samples: 5}\n")
    config, sources = load_config([str(REPO / "config.yaml"), str(a), str(b)], [], REPO)
    assert config["pretrain_variants"]["w05"] == {"w_bg": 0.5}
    assert sources[("pretrain_variants", "w05", "w_bg")] == str(a)  # an empty mapping changes nothing
    assert sources[("explain", "n_samples")] == str(b)


def test_a_key_given_twice_in_a_config_file_stops_the_workflow(tmp_path):
    from pssl.config import ConfigError, check_config_files
    twice = tmp_path / "twice.yaml"
    twice.write_text("explain: {n_samples: 3}\nexplain: {n_samples: 5}\n")
    with pytest.raises(ConfigError, match="key 'explain' is given twice"):
        check_config_files([str(REPO / "config.yaml"), str(twice)])
