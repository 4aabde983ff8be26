# Stage: teacher pseudo labels per shard, then end-to-end pre-training of each segmentation model.


rule label_shard:
    input:
        shard=shard_table,
        store=f"{RESULTS}/explain/{{shard}}.zarr",
        zoo=zoo_files(),
    output:
        f"{RESULTS}/labels/{{shard}}.parquet",
    params:
        policy=config["labels"]["policy"],
        top_k=config["labels"]["top_k"],
        min_conf=config["labels"]["min_conf"],
        threshold=config["labels"]["decile_threshold"],
        device=config["device"],
    threads: config["threads"]
    resources:
        **job_resources(config, "labels", cpus=config["threads"], gpus=1),
        runtime=explain_minutes(config) // 5 + 10,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/labels/{{shard}}.log",
    shell:
        "python -m pssl label --shard {input.shard} --store {input.store} --zoo {input.zoo} --out {output}"
        " --policy {params.policy} --top-k {params.top_k} --min-conf {params.min_conf}"
        " --decile-threshold {params.threshold} --device {params.device} --threads {threads} > {log} 2>&1"


rule pretrain:
    input:
        stores=explain_stores,
        labels=label_tables,
        init=backbone_init,
    output:
        f"{RESULTS}/pretrain/{{model}}/final.pt",
    params:
        launcher=PRETRAIN_LAYOUT.launcher(),
        world=PRETRAIN_LAYOUT.world,
        head=lambda wc: PRETRAIN[wc.model]["head"],
        backbone=lambda wc: PRETRAIN[wc.model]["backbone"],
        init=lambda wc, input: f"--backbone-init {input.init}" if input.init else "",
        out_dir=lambda wc: f"{RESULTS}/pretrain/{wc.model}",
        train=train_flags(config["pretrain"], config["seed"]),
        crop=config["pretrain"]["crop"],
        w_bg=config["pretrain"]["w_bg"],
        pad_label=config["pretrain"]["pad_label"],
        threshold=config["labels"]["decile_threshold"],
        ignore=" ".join(map(str, config["labels"]["ignore_deciles"])),
        device=config["device"],
    threads: PRETRAIN_LAYOUT.threads_per_rank
    resources:
        **job_resources(config, "pretrain", layout=PRETRAIN_LAYOUT),
        runtime=pretrain_runtime,
        requeue_margin_min=config["cluster"]["requeue_margin_min"],
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/pretrain/{{model}}.log",
    shell:
        "{params.launcher} -m pssl pretrain --stores {input.stores} --labels {input.labels}"
        " --out-dir {params.out_dir} --head {params.head} --backbone {params.backbone} {params.init}"
        " --crop {params.crop} --w-bg {params.w_bg} --pad-label {params.pad_label}"
        " --decile-threshold {params.threshold}"
        " --ignore-deciles {params.ignore} {params.train} --device {params.device} --threads {threads}"
        " --expect-world {params.world} --requeue-margin-min {resources.requeue_margin_min}"
        " > {log} 2>&1"


rule stage_labels:
    input:
        label_tables,


rule stage_pretrain:
    input:
        pretrained_models,
