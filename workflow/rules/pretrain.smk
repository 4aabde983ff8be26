# Stage: teacher pseudo labels per shard, then end-to-end pre-training of each segmentation model: the main
# pre-training (Table 3) and each pre-training variant an experiment uses.


rule label_shard:
    input:
        shard=shard_table,
        store=f"{RESULTS}/explain/{{shard}}.zarr",
        zoo=zoo_files(),
    output:
        f"{RESULTS}/labels/{{shard}}.parquet",
    params:
        settings=settings_flags(label_settings(config)),
        device=config["device"],
    threads: config["threads"]
    resources:
        **job_resources(config, "labels", cpus=explain_cpus(config), gpus=1),
        runtime=runtime("label_shard"),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/labels/{{shard}}.log",
    benchmark:
        benchmark("label_shard")
    shell:
        "python -m pssl gpu-slots {resources.gpu_slots} --"
        " python -m pssl label --shard {input.shard} --store {input.store} --zoo {input.zoo} --out {output}"
        " {params.settings} --device {params.device} --threads {threads} > {log} 2>&1"


rule pretrain:
    input:
        stores=explain_stores,
        labels=label_tables,
        init=backbone_init,
        continued=continued_state,
    output:
        model=pretrained("{model}", "{variant}"),
        state=pretrained_state("{model}", "{variant}"),
    params:
        launcher=PRETRAIN_LAYOUT.launcher(),
        world=PRETRAIN_LAYOUT.world,
        head=lambda wc: PRETRAIN[wc.model]["head"],
        backbone=lambda wc: PRETRAIN[wc.model]["backbone"],
        init=lambda wc, input: f"--backbone-init {input.init}" if input.init else "",
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        settings=lambda wc: settings_flags(*pretrain_settings(config, wc.variant)),
        masks=masks_flag,
        continued=lambda wc, input: f"--continue-state {input.continued}" if input.continued else "",
        device=config["device"],
    threads: PRETRAIN_LAYOUT.threads_per_rank
    resources:
        **job_resources(config, "pretrain", layout=PRETRAIN_LAYOUT),
        runtime=runtime("pretrain"),
        requeue_margin_min=config["cluster"]["requeue_margin_min"],
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/{PRETRAINED}.log",
    benchmark:
        benchmark("pretrain")
    shell:
        "python -m pssl gpu-slots {resources.gpu_slots} --"
        " {params.launcher} -m pssl pretrain --stores {input.stores} --labels {input.labels}"
        " --out-dir {params.out_dir} --head {params.head} --backbone {params.backbone} {params.init} {params.masks}"
        " {params.continued} {params.settings} --device {params.device} --threads {threads}"
        " --expect-world {params.world} --requeue-margin-min {resources.requeue_margin_min} > {log} 2>&1"


rule stage_labels:
    input:
        label_tables,


rule stage_pretrain:
    input:
        pretrained_models,
