# PSSL pipeline. Thin by design: configuration, validation, the stage rule files, and `rule all`.
# Each stage lives in workflow/rules/<stage>.smk and calls one `pssl` CLI command.
import os
import sys

from snakemake.utils import min_version, update_config

from pssl.config import ConfigError, check_config_files, check_data_roots, typed_cli_config, validate_config

min_version("9.0")


# config.yaml (the demo) is read only when no --configfile is given, so nothing of the demo leaks into a preset
# (Snakemake would deep-merge them). A config file holds what differs from the defaults; several --configfile
# arguments merge in order, for a user who layers files on purpose (a preset, then the cluster's own).
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


# Snakemake reads nested --config values as strings ('{enabled: false}' -> {'enabled': 'false'}): type them
# as YAML would, so the command line means what the same text means in a config file.
update_config(config, typed_cli_config(workflow.config_settings.config))
try:
    # The defaults (pssl.settings, the schema) fill every key the config leaves out, the schema validates, and
    # cross-key checks run; errors name the offending key. `pssl config` prints the result with where each
    # value comes from.
    check_config_files(workflow.overwrite_configfiles or [os.path.join(workflow.basedir, "config.yaml")])
    validate_config(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))
    # The data roots and every configured dataset's documented layout, before any job runs.
    check_data_roots(config)
except ConfigError as error:
    sys.exit(f"ConfigError: {error}")  # one line; a traceback into this file would add nothing


# The landing page of `snakemake --report`.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/selftrain.smk"
include: "workflow/rules/sanity.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
        shard_outputs,
