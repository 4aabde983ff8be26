"""The config schema and cross-key checks reject bad configs, naming the offending key."""

import copy

import pandas as pd
import pytest
import yaml
from pssl.config import ConfigError, check_config, validate_config, zoo_minutes
from pssl.data.imagenet import count_rows, write_table

from conftest import REPO, run_snakemake

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def demo_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_default_and_tiny_and_paper_configs_are_valid():
    for name in ("config.yaml", "tests/configs/tiny.yaml"):
        cfg = yaml.safe_load((REPO / name).read_text())
        validate_config(cfg, SCHEMA)
    paper = {**demo_config(), **yaml.safe_load((REPO / "presets/paper.yaml").read_text())}
    paper.update(imagenet_root="/data/imagenet/train", downstream_root="/data/segmentation")
    validate_config(paper, SCHEMA)


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c.update(shard_size=-1), "shard_size"),                     # out of range
    (lambda c: c.update(shard_sise=10), "did you mean 'shard_size'"),      # misspelled top-level key
    (lambda c: c["demo"].update(num_clases=3), "demo.num_clases"),         # misspelled nested key
    (lambda c: c.update(seed="zero"), "seed"),                             # wrong type
    (lambda c: c["demo"].update(enabled="yes"), "demo.enabled"),           # wrong type, nested
    (lambda c: c["demo"].update(num_classes=1), "num_classes"),            # below minimum
    (lambda c: c.update(results=""), "results"),                           # empty string
    (lambda c: c.pop("shard_size"), "shard_size"),                         # missing required key
])
def test_schema_rejections_name_the_key(mutate, key):
    cfg = copy.deepcopy(demo_config())
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, SCHEMA)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_cross_key_checks():
    cfg = demo_config()
    cfg["demo"].update(min_side=150, max_side=100)
    with pytest.raises(ConfigError, match="demo.min_side"):
        check_config(cfg)
    cfg = demo_config()
    cfg["demo"]["enabled"] = False
    with pytest.raises(ConfigError, match="imagenet_root"):
        check_config(cfg)


@pytest.mark.parametrize("args, key", [
    (["--config", "shard_size=-1"], "shard_size"),
    (["--config", "shard_sise=5"], "shard_sise"),
    (["--configfile", str(REPO / "presets/paper.yaml")], "imagenet_root"),
])
def test_snakemake_rejects_before_any_job(tmp_path, args, key):
    proc = run_snakemake(tmp_path, "-n", *args, check=False)
    assert proc.returncode != 0
    assert key in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_zoo_runtime_follows_the_training_work(tmp_path):
    """SLURM runtime of a zoo job: a fixed 20 min to load timm weights; training grows with images, epochs,
    and runtime_scale (the estimate is floored at 30 min of start-up)."""
    cfg = demo_config()
    frame = pd.DataFrame({"relpath": [f"a/{i}.JPEG" for i in range(50)], "class_idx": [0] * 50})
    write_table(frame, tmp_path / "index.parquet", {})
    assert count_rows(tmp_path / "index.parquet") == 50
    imagenet = 1_281_167
    small, large = zoo_minutes(cfg, 50), zoo_minutes(cfg, imagenet)
    assert 30 < small < large
    cfg["zoo"]["train"]["epochs"] *= 2
    assert zoo_minutes(cfg, imagenet) > large
    cfg["runtime_scale"] = 2.0
    assert zoo_minutes(cfg, imagenet) >= 2 * large
    cfg["zoo"]["source"] = "timm"
    assert zoo_minutes(cfg, imagenet) == 20
