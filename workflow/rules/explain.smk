# Stage: classifier zoo and the SmoothGrad ensemble explain stores.


localrules:
    fill_weights_cache,


rule fill_weights_cache:
    # Runs where snakemake runs (a login node with network): compute nodes load weights offline.
    output:
        touch(f"{RESULTS}/zoo/.weights_cached"),
    params:
        archs=" ".join(f"--arch {spec['arch']}" for spec in ZOO.values()),
        cache=f"--cache-dir {config['zoo']['cache_dir']}" if config["zoo"]["cache_dir"] else "",
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/fill_weights_cache.log",
    shell:
        "python -m pssl zoo-fetch {params.archs} {params.cache} > {log} 2>&1"


rule zoo_model:
    input:
        index=f"{RESULTS}/index.parquet",
        cache=[f"{RESULTS}/zoo/.weights_cached"] if config["zoo"]["source"] == "timm" else [],
    output:
        f"{RESULTS}/zoo/{{classifier}}.pt",
    params:
        spec=lambda wc: json.dumps(ZOO[wc.classifier]),
        source=config["zoo"]["source"],
        cache=f"--cache-dir {config['zoo']['cache_dir']}" if config["zoo"]["cache_dir"] else "",
        # the from-scratch training's settings; pretrained weights (timm) have none
        settings=settings_flags(zoo_settings(config)) if config["zoo"]["source"] == "train" else "",
        device=config["device"],
    threads: config["threads"]
    resources:
        **job_resources(config, "zoo", cpus=config["threads"], gpus=zoo_gpus(config)),
        runtime=runtime("zoo_model"),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/zoo/{{classifier}}.log",
    benchmark:
        benchmark("zoo_model")
    shell:
        "python -m pssl gpu-slots {resources.gpu_slots} --"
        " python -m pssl zoo --spec {params.spec:q} --source {params.source} --index {input.index}"
        " --out {output} {params.cache} {params.settings} --device {params.device} --threads {threads} > {log} 2>&1"


rule explain_shard:
    input:
        shard=shard_table,
        zoo=zoo_files(),
    output:
        directory(f"{RESULTS}/explain/{{shard}}.zarr"),
    params:
        settings=settings_flags(explain_settings(config)),
        device=config["device"],
    threads: config["threads"]
    resources:
        **job_resources(config, "explain", cpus=explain_cpus(config), gpus=1),
        runtime=runtime("explain_shard"),
        # a resource, not a param: changing it must not rerun finished jobs
        requeue_margin_min=config["cluster"]["requeue_margin_min"],
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/explain/{{shard}}.log",
    benchmark:
        benchmark("explain_shard")
    shell:
        "python -m pssl gpu-slots {resources.gpu_slots} --"
        " python -m pssl explain --shard {input.shard} --zoo {input.zoo} --out {output}"
        " {params.settings} --device {params.device} --threads {threads}"
        " --requeue-margin-min {resources.requeue_margin_min} > {log} 2>&1"


if config["demo"]["enabled"]:  # hidden object masks exist for synthetic data only

    rule eval_explain:
        input:
            stores=explain_stores,
            index=f"{RESULTS}/index.parquet",
            demo=demo_data_if_enabled,
        output:
            f"{RESULTS}/report/explain_quality.csv",
        params:
            masks=DEMO_MASKS,
        resources:
            **CPU_JOB,
        conda:
            CONDA_ENV
        log:
            f"{LOGS}/eval_explain.log",
        shell:
            "python -m pssl eval-explain --stores {input.stores} --index {input.index} --masks {params.masks}"
            " --out {output} > {log} 2>&1"


rule stage_zoo:
    input:
        zoo_files(),


rule stage_explain:
    input:
        explain_stores,
