# PSSL pipeline. Thin by design: configuration, validation, the stage rule files, and `rule all`.
# Each stage lives in workflow/rules/<stage>.smk and calls one `pssl` CLI command.
from snakemake.utils import min_version

from pssl.config import validate_config

min_version("9.0")


configfile: "config.yaml"


# snakemake.utils.validate against the schema, then cross-key checks; errors name the offending key.
validate_config(config, workflow.source_path("workflow/schemas/config.schema.yaml"))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"


rule all:
    default_target: True
    input:
        final_outputs,
