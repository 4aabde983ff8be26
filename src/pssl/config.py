"""Checks across config keys that a JSON schema cannot express; the schema handles types and ranges."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from pssl.errors import InputError


class ConfigError(InputError):
    """A config key that is wrong or contradicts another; the message names the key."""


def _describe(err) -> str:
    """One line naming the offending key (dotted path) and, for an unknown key, the nearest valid one."""
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        unknown = re.findall(r"'([^']+)'", err.message.split("(")[-1])
        hints = []
        for key in unknown:
            near = difflib.get_close_matches(key, allowed, n=1)
            full = f"{path}.{key}" if path else key
            hints.append(f"unknown config key {full!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        return "; ".join(hints) + f"; allowed here: {', '.join(allowed)}"
    if err.validator == "required":
        return f"config{' key ' + path if path else ''}: {err.message}"
    return f"config key {path}: {err.message}"


def config_schema(path: str | Path) -> dict:
    """The config schema: the YAML file's structure (data roots, models, datasets, experiments, cluster) with
    every stage setting's entry generated from its dataclass (pssl.settings.CONFIG_SECTIONS)."""
    import yaml

    from pssl.settings import CONFIG_SECTIONS, section_schema
    schema = yaml.safe_load(Path(path).read_text())
    for dotted, section in CONFIG_SECTIONS.items():
        node = schema
        for part in dotted.split("."):
            node = node["additionalProperties"] if part == "*" else node["properties"][part]
        properties, generated = node.setdefault("properties", {}), section_schema(section)
        twice = sorted(set(properties) & set(generated))
        if twice:
            raise ValueError(f"{path}: {dotted}.{twice[0]} is a setting of pssl.settings; remove it from the schema")
        properties.update(generated)
    return schema


def fill_and_validate(config: dict, schema: dict) -> None:
    """Fill every absent key that has a default (in place, nested sections included), then validate; raise a
    one-line ConfigError naming the key of the first error."""
    import copy

    import jsonschema
    from jsonschema import validators
    base = jsonschema.Draft202012Validator

    def properties_with_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    validator = validators.extend(base, {"properties": properties_with_defaults})(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(_describe(error))


def complete_config(config: dict, schema_path: str | Path) -> dict:
    """`config` (in place) with every default filled and the built-in pre-training variants (controls,
    PseudoSeg's fusion; an entry of the same name changes one), validated against the schema."""
    from pssl.settings import BUILTIN_VARIANTS
    fill_and_validate(config, config_schema(schema_path))
    own = config["pretrain_variants"]
    # a config's entry of a built-in's name changes it (fused: {fusion_prior: d9} stays fused)
    config["pretrain_variants"] = {**{name: {**builtin, **(own.get(name) or {})} for name, builtin in
                                      BUILTIN_VARIANTS.items()}, **{n: v for n, v in own.items()
                                                                    if n not in BUILTIN_VARIANTS}}
    return config


def validate_config(config: dict, schema_path: str | Path) -> None:
    """complete_config, then the checks across keys."""
    complete_config(config, schema_path)
    check_config(config)


# ---- layers: defaults < config files < --config -----------------------------------------------------------

def merge(into: dict, layer: dict, sources: dict | None = None, name: str = "", prefix: tuple[str, ...] = ()
          ) -> dict:
    """Snakemake's merge of config files: mappings merged key by key, anything else replaced. `sources`
    (key path -> layer name) records `name` for every value the layer sets."""
    for key, value in layer.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value, sources, name, path)
            continue
        into[key] = value
        if sources is not None:
            for stale in [k for k in sources if k[:len(path)] == path]:
                del sources[stale]
            sources.update({(*path, *leaf): name for leaf in leaves(value)} if isinstance(value, dict) and value
                           else {path: name})
    return into


def default_source(path: tuple[str, ...]) -> str:
    """Where a key's default is written: its settings dataclass, or the schema (structure, cluster)."""
    from pssl.settings import BUILTIN_VARIANTS, CONFIG_SECTIONS
    if path[0] == "pretrain_variants" and len(path) > 1 and path[1] in BUILTIN_VARIANTS:
        return "built-in: pssl.settings.BUILTIN_VARIANTS"
    for pattern, section in CONFIG_SECTIONS.items():
        head = pattern.split(".")
        if len(path) == len(head) + 1 and all(h in ("*", p) for h, p in zip(head, path)):
            for part in section.parts:
                if path[-1] in {f.name for f in part.fields()}:
                    own = f" ({pattern}'s)" if path[-1] in part.defaults else ""
                    return f"default: pssl.settings.{part.cls.__name__}{own}"
    return "default: workflow/schemas/config.schema.yaml"


def strict_yaml(text: str, name: str):
    """YAML as safe_load reads it, except that a key given twice in one mapping is an error (safe_load keeps
    the last silently)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            twice = sorted({k for k in keys if keys.count(k) > 1}, key=str)
            if twice:
                raise ConfigError(f"config file {name}: key {twice[0]!r} is given twice in one mapping "
                                  f"(line {node.start_mark.line + 1})")
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=StrictLoader)


def check_config_files(paths: list[str]) -> None:
    """Raise ConfigError for a key given twice in one mapping of any of the config files (Snakemake's own
    reading keeps the last silently)."""
    for path in paths:
        strict_yaml(Path(path).read_text(), str(path))


def workflow_dir() -> Path:
    """The checkout holding the Snakefile and the schema this package belongs to (an editable install), else
    the working directory."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "workflow/schemas/config.schema.yaml").is_file() else Path.cwd()


def load_config(configfiles: list[str], overrides: list[str], basedir: str | Path | None = None,
                check: bool = True) -> tuple[dict, dict[tuple[str, ...], str]]:
    """(the effective config, key path -> the layer that set it) as the Snakefile builds it: config.yaml when
    no file is given, else the files in order, the --config key=value values read by Snakemake's own parser
    and typed as the Snakefile types them, then the defaults. check=False: the schema only, not the checks
    across keys (a preset read before its data roots are known)."""
    from snakemake.cli import parse_config
    basedir = workflow_dir() if basedir is None else basedir
    layers = [(path, strict_yaml(Path(path).read_text(), path) or {})
              for path in configfiles or [str(Path(basedir) / "config.yaml")]]
    layers.append(("--config", typed_cli_config(parse_config(overrides))))
    config: dict = {}
    sources: dict[tuple[str, ...], str] = {}
    for name, layer in layers:
        merge(config, layer, sources, name)
    schema = Path(basedir) / "workflow/schemas/config.schema.yaml"
    validate_config(config, schema) if check else complete_config(config, schema)
    return config, {k: sources.get(k) or default_source(k) for k in leaves(config)}


def leaves(config: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of every value that is not a non-empty mapping."""
    paths = []
    for key, value in config.items():
        path = (*prefix, str(key))
        paths += leaves(value, path) if isinstance(value, dict) and value else [path]
    return paths


def format_config(config: dict, sources: dict[tuple[str, ...], str]) -> str:
    """One line per setting: `key.path: value  # where it came from` (values as JSON)."""
    import json

    def value_of(path: tuple[str, ...]):
        node = config
        for part in path:
            node = node[part]
        return node

    lines = [(f"{'.'.join(k)}: {json.dumps(value_of(k))}", sources[k]) for k in leaves(config)]
    width = min(max(len(text) for text, _ in lines), 70)
    return "".join(f"{text:<{width}}  # {source}\n" for text, source in lines)


def check_config(config: dict) -> None:
    """Raise ConfigError naming the key when keys contradict each other."""
    demo = config["demo"]
    if demo["enabled"] and demo["min_side"] > demo["max_side"]:
        raise ConfigError(f"config key demo.min_side ({demo['min_side']}) exceeds demo.max_side ({demo['max_side']})")
    names = [m if isinstance(m, str) else m["name"] for m in config["zoo"]["models"] + config["zoo"]["init_only"]]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"config key zoo.models: names must be unique, repeated: {', '.join(repeated)}")
    for name, model in config["pretrain"]["models"].items():
        if model["init"] is not None and model["init"] not in names:
            raise ConfigError(f"config key pretrain.models.{name}.init: {model['init']!r} is not a zoo entry "
                              f"(zoo.models or zoo.init_only)")
    if not demo["enabled"] and not config["imagenet_root"]:
        raise ConfigError(
            "config key imagenet_root is required when demo.enabled is false: pass the ImageNet train directory, "
            "e.g. --config imagenet_root=/data/ILSVRC/Data/CLS-LOC/train")
    if not config["labelled"] and config["labels"]["policy"] != "teacher":
        raise ConfigError(f"config key labels.policy: {config['labels']['policy']!r} needs the images' classes, and "
                          f"labelled is false: use policy 'teacher' (the zoo labels each image)")
    if not config["labelled"] and config["zoo"]["source"] == "train":
        raise ConfigError("config key zoo.source: 'train' needs the images' classes, and labelled is false: use "
                          "zoo.source 'timm' (pretrained classifiers label the images)")
    for name in config["finetune"]["models"]:
        if name not in config["pretrain"]["models"]:
            raise ConfigError(f"config key finetune.models: {name!r} is not a key of pretrain.models")
    for dataset, settings in config["finetune"]["datasets"].items():
        for name in settings.get("per_model", {}):
            if name not in config["finetune"]["models"]:
                raise ConfigError(f"config key finetune.datasets.{dataset}.per_model.{name}: not one of "
                                  f"finetune.models ({', '.join(config['finetune']['models'])})")
    check_experiments(config)
    check_self_training(config)
    check_lr_search(config)
    if not demo["enabled"] and not config["downstream_root"]:
        missing = [d for d, v in config["finetune"]["datasets"].items() if not v["root"]]
        if missing:
            raise ConfigError(
                f"config key downstream_root (or finetune.datasets.{missing[0]}.root) is required when demo.enabled "
                f"is false: the directory holding CamVid/, VOCdevkit/, ADEChallengeData2016/, cityscapes/")


def check_experiments(config: dict) -> None:
    """Experiments name models, datasets and variants that exist; run_experiments names experiments."""
    from pssl.settings import MAIN, MULTI_DATASET, pretrain_variant
    for method in MULTI_DATASET:
        if method in config["pretrain_variants"]:
            raise ConfigError(f"config key pretrain_variants.{method}: {method!r} names a multi-dataset pre-training "
                              f"(the {method} section); choose another name")
    for name in config["pretrain_variants"]:
        try:
            pretrain_variant(config, name)
        except InputError as error:
            raise ConfigError(f"config key {error}" if str(error).startswith("pretrain_variants.")
                              else f"config key pretrain_variants.{name}.like: {error}") from None
    check_continuations(config)
    for name, e in config["experiments"].items():
        known = {"model": config["pretrain"]["models"], "datasets": config["finetune"]["datasets"],
                 "variants": [MAIN, *MULTI_DATASET, *config["pretrain_variants"]]}
        for key, values in (("model", [e["model"]]), ("datasets", e["datasets"]), ("variants", e["variants"])):
            for value in values:
                if value not in known[key]:
                    raise ConfigError(f"config key experiments.{name}.{key}: {value!r} is not one of "
                                      f"{', '.join(known[key])}")
        for method in set(e["variants"]) & set(MULTI_DATASET):
            check_init(config, f"experiments.{name}.variants", method)
            if e["classify"]:
                raise ConfigError(f"config key experiments.{name}.classify: {method}'s model has no ImageNet classes "
                                  f"to be scored as a classifier; drop {method} from its variants or classify")
    figure = config["figure3"]
    if figure["model"] not in config["finetune"]["models"] or figure["dataset"] not in config["finetune"]["datasets"]:
        raise ConfigError(f"config key figure3: model {figure['model']!r} must be one of finetune.models and dataset "
                          f"{figure['dataset']!r} one of finetune.datasets")
    from pssl.data.downstream import DATASETS
    classes = DATASETS[figure["dataset"]].classes
    if figure["contains"] is not None and figure["contains"] not in classes:
        raise ConfigError(f"config key figure3.contains: {figure['contains']!r} is not a class of {figure['dataset']} "
                          f"({', '.join(classes)})")
    for name in config["run_experiments"]:
        if name not in config["experiments"]:
            raise ConfigError(f"config key run_experiments: {name!r} is not a key of experiments")
        has_val = config["imagenet_val_root"] or config["demo"]["enabled"]
        if config["experiments"][name].get("classify") and not has_val:
            raise ConfigError(f"config key imagenet_val_root is required: experiment {name} (run_experiments) "
                              f"reports ImageNet val top-1; pass the val directory (<wnid>/ folders, or flat files "
                              f"with LOC_val_solution.csv)")


def check_lr_search(config: dict) -> None:
    """A peak search walks lr_grid as its ladder, from each cell's lr, which must be on it (every model a cell
    can fine-tune: those of finetune and of the experiments)."""
    from pssl.lr_search import check_ladder
    from pssl.settings import finetune_settings
    finetune = config["finetune"]
    if finetune["lr_search"]["mode"] != "peak":
        return
    for dataset in finetune["datasets"]:
        for model in config["pretrain"]["models"]:
            start = finetune_settings(config, dataset, model)[1].lr
            try:
                check_ladder(finetune["lr_grid"], start)
            except ValueError as error:
                raise ConfigError(f"config key finetune.lr_search.mode: peak for {dataset} x {model}: "
                                  f"{str(error).removeprefix('lr search: ')}") from None


def check_continuations(config: dict) -> None:
    """continue_from names main or a variant, and no pre-training continues itself through a chain."""
    from pssl.settings import MAIN, pretrain_settings
    variants = [MAIN, *config["pretrain_variants"]]
    source = {v: pretrain_settings(config, v)[0].continue_from for v in variants}
    for variant in variants:
        chain = [variant]
        while source[chain[-1]] is not None:
            nxt = source[chain[-1]]
            key = "pretrain.continue_from" if chain[-1] == MAIN else f"pretrain_variants.{chain[-1]}.continue_from"
            if nxt not in source:
                raise ConfigError(f"config key {key}: {nxt!r} is not a pre-training ({', '.join(variants)})")
            if nxt in chain:
                raise ConfigError(f"config key {key}: {' -> '.join([*chain, nxt])} continues itself")
            chain.append(nxt)


def check_init(config: dict, key: str, init: str) -> None:
    """pssl-<variant> names a pre-training variant; an oracle variant has masks to learn from; mdp's and ms3's
    datasets are configured downstream datasets (their roots and layouts are checked)."""
    from pssl.settings import MULTI_DATASET, init_transfer, pretrain_variant
    init = init_transfer(init)[0]
    if init in MULTI_DATASET:
        missing = [d for d in config[init]["datasets"] if d not in config["finetune"]["datasets"]]
        if missing:
            raise ConfigError(f"config key {init}.datasets: {', '.join(missing)} not in finetune.datasets ({key} "
                              f"{init!r} pre-trains on their train splits: add them there, where their roots are)")
        if init == "ms3" and config["ms3"]["text_source"] == "table" and not config["ms3"]["text_table"]:
            raise ConfigError("config key ms3.text_table is required: ms3.text_source is table")
        return
    variant = init.removeprefix("pssl-")
    if init.startswith("pssl-") and variant not in config["pretrain_variants"]:
        raise ConfigError(f"config key {key}: {init!r} names no pre-training variant {variant!r} (pretrain_variants: "
                          f"{', '.join(config['pretrain_variants']) or 'none'})")
    overrides = pretrain_variant(config, variant) if init.startswith("pssl-") else {}
    source = overrides.get("label_source", config["pretrain"]["label_source"])
    if source == "oracle" and not (config["imagenet_masks_root"] or config["demo"]["enabled"]):
        raise ConfigError(f"config key imagenet_masks_root is required: {key} {init!r} pre-trains on the true "
                          f"object masks (label_source oracle); pass a folder of <wnid>/<image stem>.png masks "
                          f"(e.g. ImageNet-S)")


def check_self_training(config: dict) -> None:
    """Self-training names configured datasets, models and inits, and every dataset has a pool."""
    from pssl.data.downstream import DATASETS

    for init in config["finetune"]["inits"]:
        check_init(config, "finetune.inits", init)
    st = config["self_training"]
    if not st["datasets"]:
        return
    for key, known in (("datasets", config["finetune"]["datasets"]), ("models", config["finetune"]["models"])):
        for value in st[key]:
            if value not in known:
                raise ConfigError(f"config key self_training.{key}: {value!r} is not one of finetune.{key} "
                                  f"({', '.join(known)})")
    for key in ("models", "inits"):
        if not st[key]:
            raise ConfigError(f"config key self_training.{key}: empty, while self_training.datasets names "
                              f"{', '.join(st['datasets'])}")
    for init in st["inits"]:
        check_init(config, "self_training.inits", init)
    pools = st["pools"] or {}
    extra = sorted(set(pools) - set(st["datasets"]))
    if extra:
        raise ConfigError(f"config key self_training.pools.{extra[0]}: not one of self_training.datasets")
    if not config["demo"]["enabled"]:
        for dataset in st["datasets"]:
            if not pools.get(dataset) and not DATASETS[dataset].pool:
                raise ConfigError(f"config key self_training.pools.{dataset} is required: {DATASETS[dataset].title} "
                                  f"has no unlabelled images of its own; name a folder of images (e.g. a subset of "
                                  f"the indexed ImageNet images)")


def typed_cli_config(cli: dict) -> dict:
    """`--config` values typed as YAML types them: Snakemake parses nested values with YAML's BaseLoader, which
    keeps every scalar a string ({enabled: false} -> {'enabled': 'false'}), and top-level 'true' / 'null' too."""
    import yaml

    def typed(value):
        if isinstance(value, dict):
            return {k: typed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v) for v in value]
        if not isinstance(value, str):
            return value
        for number in (int, float):  # float() also reads 1e-3, which YAML 1.1 would leave a string
            try:
                return number(value)
            except ValueError:
                pass
        try:
            loaded = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return loaded if loaded is None or isinstance(loaded, bool) else value

    return typed(dict(cli))


def check_data_roots(config: dict) -> None:
    """Raise ConfigError naming the path when a data root or a configured dataset's documented layout is
    missing. Only directory listings are read; the demo's own tree is skipped (a rule generates it)."""
    from pssl.data.downstream import missing_paths

    if config["imagenet_root"]:
        root = Path(config["imagenet_root"])
        if not root.is_dir():
            raise ConfigError(f"config key imagenet_root: {root} is not a directory")
        entries = list(os.scandir(root))
        if not entries or (config["labelled"] and not any(e.is_dir() for e in entries)):
            raise ConfigError(f"config key imagenet_root: {root} has no class folders (<wnid>/<image>); "
                              f"for loose unlabelled images set labelled: false")
        folders = sum(e.is_dir() and not e.name.startswith(".") for e in entries)
        wanted = config["imagenet_subset"]["classes"]
        if wanted > folders:
            raise ConfigError(f"config key imagenet_subset.classes: {wanted} classes asked for, {root} has "
                              f"{folders} class folders")
    if config["imagenet_masks_root"] and not Path(config["imagenet_masks_root"]).is_dir():
        raise ConfigError(f"config key imagenet_masks_root: {config['imagenet_masks_root']} is not a directory")
    if config["imagenet_val_root"] and not Path(config["imagenet_val_root"]).is_dir():
        raise ConfigError(f"config key imagenet_val_root: {config['imagenet_val_root']} is not a directory")
    from pssl.data.pool import pool_folders
    pools = config["self_training"]["pools"] or {}
    for dataset in config["self_training"]["datasets"]:
        root = config["finetune"]["datasets"][dataset]["root"] or config["downstream_root"]
        if not (pools.get(dataset) or root):
            continue  # the demo's pool, which a rule generates
        for pool in pool_folders(dataset, root or "", pools.get(dataset)):
            if not pool.is_dir():
                key = f"self_training.pools.{dataset}" if pools.get(dataset) else "downstream_root"
                raise ConfigError(f"config key {key}: the unlabelled pool of {dataset}, {pool}, is not a directory")
    for dataset, settings in config["finetune"]["datasets"].items():
        root = settings["root"] or config["downstream_root"]
        if not root:
            continue  # the demo's downstream sets
        key = f"finetune.datasets.{dataset}.root" if settings["root"] else "downstream_root"
        try:
            missing = missing_paths(dataset, root, ("train", "val", settings["eval_split"]))
        except ValueError as e:
            raise ConfigError(f"config key finetune.datasets.{dataset}.eval_split: {e}") from None
        if missing:
            raise ConfigError(f"config key {key}: {dataset} needs {missing[0]} (missing"
                              + (f", and {len(missing) - 1} more)" if len(missing) > 1 else ")"))


def zoo_specs(config: dict, ensemble_only: bool = False) -> dict[str, dict]:
    """The zoo (ensemble members, then init-only classifiers) as name -> {"name", "arch", "kwargs"}."""
    specs = {}
    entries = config["zoo"]["models"] + ([] if ensemble_only else config["zoo"]["init_only"])
    for entry in entries:
        spec = {"name": entry, "arch": entry, "kwargs": {}} if isinstance(entry, str) else \
            {"kwargs": {}, **entry}
        specs[spec["name"]] = spec
    return specs


def imagenet_root(config: dict) -> str:
    """The ImageNet-layout train directory this config indexes."""
    return config["imagenet_root"] or str(Path(config["demo"]["root"]) / "imagenet" / "train")
