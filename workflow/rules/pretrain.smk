# Stage: teacher pseudo labels per shard, then end-to-end pre-training of each segmentation model: the main
# pre-training (Table 3) and each pre-training variant an experiment uses; and the multi-dataset pre-trainings
# on labelled downstream sets (MDP: init mdp, MS3: init ms3, from the class vectors of embed_classes), with what
# they learnt of their classes (MDP's prototypes, MS3's multi-label mapping).


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


# Where Snakemake runs (the login node): text_source clip may need the network to fetch CLIP's weights.
localrules:
    embed_classes,


MS3_SETTINGS = multi_dataset_settings(config, MS3)[0]


rule embed_classes:
    input:
        table=config["ms3"]["text_table"] or [],  # a table's edits rerun it
    output:
        table=CLASS_EMBEDDINGS,
        nearest=f"{RESULTS}/report/class_embeddings_nearest.csv",
    params:
        datasets=" ".join(MS3_SETTINGS.datasets),
        merge=str(MS3_SETTINGS.merge_names).lower(),
        source=MS3_SETTINGS.text_source,
        table=lambda wc, input: f"--table {input.table}" if input.table else "",
        cache=f"{RESULTS}/ms3/text_model",
    resources:
        **CPU_JOB,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/ms3/embed_classes.log",
    shell:
        "python -m pssl embed-classes --datasets {params.datasets} --merge-names {params.merge}"
        " --source {params.source} {params.table} --cache {params.cache} --out {output.table}"
        " --nearest {output.nearest} > {log} 2>&1"


rule pretrain_multi:
    input:
        init=multi_backbone_init,
        class_embeddings=class_embeddings,
        data=demo_data_if_enabled,
    output:
        model=f"{RESULTS}/{MULTI_PRETRAINED}/final.pt",
        state=f"{RESULTS}/{MULTI_PRETRAINED}/state.pt",
    params:
        launcher=PRETRAIN_LAYOUT.launcher(),
        world=PRETRAIN_LAYOUT.world,
        roots=multi_roots,
        head=lambda wc: PRETRAIN[wc.model]["head"],
        backbone=lambda wc: PRETRAIN[wc.model]["backbone"],
        init=lambda wc, input: f"--backbone-init {input.init}" if input.init else "",
        embeddings=lambda wc, input: f"--class-embeddings {input.class_embeddings}" if input.class_embeddings else "",
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        settings=lambda wc: settings_flags(*multi_dataset_settings(config, wc.method)),
        device=config["device"],
    threads: PRETRAIN_LAYOUT.threads_per_rank
    resources:
        **job_resources(config, "pretrain", layout=PRETRAIN_LAYOUT),
        runtime=runtime("pretrain_multi"),
        requeue_margin_min=config["cluster"]["requeue_margin_min"],
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/{MULTI_PRETRAINED}.log",
    benchmark:
        benchmark("pretrain_multi")
    shell:
        "python -m pssl gpu-slots {resources.gpu_slots} --"
        " {params.launcher} -m pssl pretrain-{wildcards.method} --roots {params.roots} --out-dir {params.out_dir}"
        " --head {params.head} --backbone {params.backbone} {params.init} {params.embeddings} {params.settings}"
        " --device {params.device} --threads {threads} --expect-world {params.world}"
        " --requeue-margin-min {resources.requeue_margin_min} > {log} 2>&1"


rule mdp_prototypes:
    input:
        multi_pretrained(MDP, "{model}"),
    output:
        figure=report(f"{RESULTS}/report/mdp_prototypes_{{model}}.png", caption="../report/mdp_prototypes.rst",
                      category="4. Multi-dataset pre-training"),
        table=f"{RESULTS}/report/mdp_prototypes_{{model}}.csv",
    resources:
        **CPU_JOB,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/report/mdp_prototypes_{{model}}.log",
    shell:
        "python -m pssl mdp-prototypes --model {input} --out {output.table} --figure {output.figure} > {log} 2>&1"


rule ms3_mapping:
    input:
        multi_pretrained(MS3, "{model}"),
    output:
        figure=report(f"{RESULTS}/report/ms3_mapping_{{model}}.png", caption="../report/ms3_mapping.rst",
                      category="4. Multi-dataset pre-training"),
        table=f"{RESULTS}/report/ms3_mapping_{{model}}.csv",
    resources:
        **CPU_JOB,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/report/ms3_mapping_{{model}}.log",
    shell:
        "python -m pssl ms3-mapping --model {input} --out {output.table} --figure {output.figure} > {log} 2>&1"


rule stage_labels:
    input:
        label_tables,


rule stage_pretrain:
    input:
        pretrained_models,
