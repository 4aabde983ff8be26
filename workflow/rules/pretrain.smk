# Stage: teacher pseudo labels per shard, then end-to-end pre-training of each segmentation model: the main
# pre-training (Table 3) and each pre-training variant an experiment uses; and MDP's pre-training on labelled
# downstream sets (init mdp), with its prototypes' similarity figure.


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


rule pretrain_mdp:
    input:
        init=mdp_backbone_init,
        data=demo_data_if_enabled,
    output:
        model=f"{RESULTS}/{MDP_PRETRAINED}/final.pt",
        state=f"{RESULTS}/{MDP_PRETRAINED}/state.pt",
    params:
        launcher=PRETRAIN_LAYOUT.launcher(),
        world=PRETRAIN_LAYOUT.world,
        roots=mdp_roots,
        head=lambda wc: PRETRAIN[wc.model]["head"],
        backbone=lambda wc: PRETRAIN[wc.model]["backbone"],
        init=lambda wc, input: f"--backbone-init {input.init}" if input.init else "",
        out_dir=lambda wc, output: os.path.dirname(output[0]),
        settings=settings_flags(*mdp_settings(config)),
        device=config["device"],
    threads: PRETRAIN_LAYOUT.threads_per_rank
    resources:
        **job_resources(config, "pretrain", layout=PRETRAIN_LAYOUT),
        runtime=runtime("pretrain_mdp"),
        requeue_margin_min=config["cluster"]["requeue_margin_min"],
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/{MDP_PRETRAINED}.log",
    benchmark:
        benchmark("pretrain_mdp")
    shell:
        "python -m pssl gpu-slots {resources.gpu_slots} --"
        " {params.launcher} -m pssl pretrain-mdp --roots {params.roots} --out-dir {params.out_dir}"
        " --head {params.head} --backbone {params.backbone} {params.init} {params.settings}"
        " --device {params.device} --threads {threads} --expect-world {params.world}"
        " --requeue-margin-min {resources.requeue_margin_min} > {log} 2>&1"


rule mdp_prototypes:
    input:
        mdp_pretrained("{model}"),
    output:
        figure=report(f"{RESULTS}/report/mdp_prototypes_{{model}}.png", caption="../report/mdp_prototypes.rst",
                      category="4. MDP"),
        table=f"{RESULTS}/report/mdp_prototypes_{{model}}.csv",
    resources:
        **CPU_JOB,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/report/mdp_prototypes_{{model}}.log",
    shell:
        "python -m pssl mdp-prototypes --model {input} --out {output.table} --figure {output.figure} > {log} 2>&1"


rule stage_labels:
    input:
        label_tables,


rule stage_pretrain:
    input:
        pretrained_models,
