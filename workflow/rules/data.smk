# Stage: demo data, ImageNet index, shards.


if config["demo"]["enabled"]:  # the demo's data; a real run brings its own

    rule make_demo_data:
        output:
            directory(DEMO_ROOT),
        params:
            settings=settings_flags(demo_settings(config)),
        resources:
            **CPU_JOB,
        conda:
            CONDA_ENV
        log:
            f"{LOGS}/make_demo_data.log",
        shell:
            "python -m pssl demo-data --out {output} {params.settings} > {log} 2>&1"


rule index_images:
    input:
        demo_data_if_enabled,
    output:
        f"{RESULTS}/index.parquet",
    params:
        root=imagenet_root(config),
        unlabelled="" if config["labelled"] else "--unlabelled",
        subset=settings_flags(index_settings(config)),
    resources:
        **CPU_JOB,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/index_images.log",
    shell:
        "python -m pssl index --root {params.root} --out {output} {params.unlabelled} {params.subset} > {log} 2>&1"


checkpoint shard_index:
    input:
        f"{RESULTS}/index.parquet",
    output:
        directory(f"{RESULTS}/shards"),
    params:
        shard_size=config["shard_size"],
    resources:
        **CPU_JOB,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/shard_index.log",
    shell:
        "python -m pssl shard --index {input} --shard-size {params.shard_size} --out {output} > {log} 2>&1"


rule stage_data:
    input:
        demo_data_if_enabled,


rule stage_index:
    input:
        f"{RESULTS}/index.parquet",


rule stage_shards:
    input:
        lambda wc: expand(f"{RESULTS}/shards/{{shard}}.parquet", shard=shard_names()),
