# Stage: fine-tuning fan-out (dataset x model x init x seed x lr), each cell's lr search and best lr per seed;
# Table 3, Figure 4, the experiments' tables, and the report.


localrules:
    lr_search,
    select_lr,
    experiment_table,
    table3,


rule finetune:
    input:
        init=finetune_init,
        data=demo_data_if_enabled,
    output:
        metrics=f"{RESULTS}/{FINETUNE_RUN}/metrics.json",
        weights=f"{RESULTS}/{FINETUNE_RUN}/final.pt",
    wildcard_constraints:
        init=one_of(BASE_INITS),
    params:
        launcher=FINETUNE_LAYOUT.launcher(),
        world=FINETUNE_LAYOUT.world,
        root=lambda wc: dataset_root(wc.dataset),
        head=lambda wc: PRETRAIN[wc.model]["head"],
        backbone=lambda wc: PRETRAIN[wc.model]["backbone"],
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
        init_kind=lambda wc: "imagenet" if wc.init == "imagenet" else "pssl",
        transfer=lambda wc: init_transfer(wc.init)[1],
        command="finetune",
        student="",  # rule self_train's pseudo labels and student settings
        settings=finetune_flags,
        device=config["device"],
    threads: FINETUNE_LAYOUT.threads_per_rank
    resources:
        **job_resources(config, "finetune", layout=FINETUNE_LAYOUT),
        runtime=runtime("finetune"),
        requeue_margin_min=config["cluster"]["requeue_margin_min"],
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/{FINETUNE_RUN}.log",
    benchmark:
        benchmark("finetune")
    shell:
        "python -m pssl gpu-slots {resources.gpu_slots} --"
        " {params.launcher} -m pssl {params.command} --dataset {wildcards.dataset} --root {params.root}"
        " --head {params.head} --backbone {params.backbone} --init {params.init_kind} --init-from {input.init}"
        " --transfer {params.transfer}{params.student}"
        " --out-dir {params.out_dir} {params.settings} --device {params.device} --threads {threads}"
        " --expect-world {params.world} --requeue-margin-min {resources.requeue_margin_min} > {log} 2>&1"


# finetune.lr_search peak: one round of a cell's search per checkpoint job; each round's decision adds the next
# round's runs to the DAG (a dry run shows the first round of every cell: the rest follows from its results).
checkpoint lr_search:
    input:
        round_runs,
    output:
        f"{RESULTS}/{LR_SEARCH_ROUND}.json",
    params:
        ladder=" ".join(map(str, FINETUNE["lr_grid"])),
        start=start_lr,
        margin=LR_SEARCH.margin,
        max_values=LR_SEARCH.max_values,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/{LR_SEARCH_ROUND}.log",
    shell:
        "python -m pssl lr-search-round --runs {input} --ladder {params.ladder} --start {params.start}"
        " --margin {params.margin} --max-values {params.max_values} --out {output} > {log} 2>&1"


rule select_lr:
    input:
        lambda wc: cell_runs(wc, searched_lrs(wc)),
    output:
        f"{RESULTS}/{FINETUNE_CELL}/metrics.json",
    params:
        start=start_lr,
        cell=lambda wc: f"dataset={wc.dataset} model={wc.model} init={wc.init} seed={wc.seed}",
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/{FINETUNE_CELL}/select_lr.log",
    shell:
        "python -m pssl select-lr --runs {input} --start {params.start} --cell {params.cell} --out {output}"
        " > {log} 2>&1"


if config["demo"]["enabled"]:  # hidden object masks exist for synthetic data only

    rule eval_pretrain:
        input:
            models=table3_pretrained,
            stores=explain_stores,
            index=f"{RESULTS}/index.parquet",
            demo=demo_data_if_enabled,
        output:
            table=f"{RESULTS}/report/pretrain_quality.csv",
            figure=[FUSED_FIGURE] if fused_in_table3() else [],
        params:
            masks=DEMO_MASKS,
            figure=lambda wc, output: f"--fused-figure {output.figure}" if output.figure else "",
            device=config["device"],
        resources:
            **CPU_JOB,
        conda:
            CONDA_ENV
        log:
            f"{LOGS}/eval_pretrain.log",
        shell:
            "python -m pssl eval-pretrain --models {input.models} --stores {input.stores} --index {input.index}"
            " --masks {params.masks} --out {output.table} {params.figure} --device {params.device} > {log} 2>&1"


rule stage_finetune:
    input:
        finetune_results,


rule eval_classify:
    input:
        model=finetune_init,
        index=f"{RESULTS}/index.parquet",
        data=demo_data_if_enabled,
    output:
        f"{RESULTS}/classify/{{model}}/{{init}}.json",
    params:
        root=lambda wc: imagenet_val_root(),
        settings=settings_flags(classify_settings(config)),
        device=config["device"],
    threads: config["threads"]
    resources:
        **job_resources(config, "labels", cpus=config["threads"], gpus=1),
        runtime=60,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/classify/{{model}}/{{init}}.log",
    shell:
        "python -m pssl gpu-slots {resources.gpu_slots} --"
        " python -m pssl eval-classify --model {input.model} --index {input.index} --root {params.root}"
        " {params.settings} --out {output} --device {params.device} --threads {threads}"
        " > {log} 2>&1"


rule experiment_table:
    input:
        cells=experiment_cells,
        classify=experiment_classify,
    output:
        f"{RESULTS}/report/experiments/{{experiment}}.csv",
        f"{RESULTS}/report/experiments/{{experiment}}.md",
        f"{RESULTS}/report/experiments/{{experiment}}.html",
        f"{RESULTS}/report/experiments/{{experiment}}_runs.csv",
    params:
        title=lambda wc: EXPERIMENTS[wc.experiment]["title"],
        variants=lambda wc: experiment_variants(wc.experiment),
        datasets=lambda wc: EXPERIMENTS[wc.experiment]["datasets"],
        imagenet=lambda wc: str(EXPERIMENTS[wc.experiment]["imagenet"]).lower(),
        out_dir=lambda wc, output: os.path.dirname(output[0]),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/experiments/{{experiment}}.log",
    shell:
        "python -m pssl experiment-table --name {wildcards.experiment} --title {params.title:q}"
        " --cells {input.cells} --classify {input.classify} --variants {params.variants:q}"
        " --datasets {params.datasets} --imagenet {params.imagenet} --out-dir {params.out_dir} > {log} 2>&1"


# One target per experiment (snakemake table1), running only what its table needs.
for _name in EXPERIMENTS:

    rule:
        name:
            _name
        input:
            experiment_table(_name),
            [class_figure(m, EXPERIMENTS[_name]["model"]) for m in MULTI_DATASET if m in EXPERIMENTS[_name]["variants"]],


rule table3:
    input:
        finetune_results,
    output:
        # snakemake --report shows the HTML tables inline; categories are listed in this order
        html=report(f"{RESULTS}/report/table3.html", caption="../report/table3.rst", category="1. Table 3"),
        table=report(f"{RESULTS}/report/table3.csv", caption="../report/table3.rst", category="1. Table 3"),
        markdown=f"{RESULTS}/report/table3.md",
        runs=f"{RESULTS}/report/finetune_cells.csv",
        gains=report(f"{RESULTS}/report/table3_gains.png", caption="../report/gains.rst", category="1. Table 3"),
        gains_svg=f"{RESULTS}/report/table3_gains.svg",
        figure4=report(f"{RESULTS}/report/figure4.png", caption="../report/figure4.rst", category="1. Table 3"),
        figure4_svg=f"{RESULTS}/report/figure4.svg",
        lr_curves=f"{RESULTS}/report/figure4.csv",
    params:
        titles=json.dumps(MODEL_TITLES),
        out=lambda wc, output: os.path.dirname(output.table),
    resources:
        **CPU_JOB,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/table3.log",
    shell:
        "python -m pssl table3 --cells {input} --out {params.out} --titles {params.titles:q} > {log} 2>&1"


rule figure3:
    input:
        model=lambda wc: pretrained(config["figure3"]["model"]),
        index=f"{RESULTS}/index.parquet",
        data=demo_data_if_enabled,
    output:
        png=report(f"{RESULTS}/report/figure3.png", caption="../report/figure3.rst", category="2. Pseudo labels"),
        pdf=f"{RESULTS}/report/figure3.pdf",
    params:
        dataset=config["figure3"]["dataset"],
        root=lambda wc: dataset_root(config["figure3"]["dataset"]),
        images=config["figure3"]["images"],
        contains=f"--contains {config['figure3']['contains']}" if config["figure3"]["contains"] else "",
        device=config["device"],
    threads: config["threads"]
    resources:
        **CPU_JOB,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/figure3.log",
    shell:
        "python -m pssl figure3 --model {input.model} --dataset {params.dataset} --root {params.root}"
        " --index {input.index} --images {params.images} {params.contains} --out {output.png}"
        " --device {params.device}"
        " --threads {threads} > {log} 2>&1"


rule report:
    input:
        table3=rules.table3.output,
        figure3=rules.figure3.output.png,
        stores=explain_stores,
        quality=quality_tables,
        experiments=report_experiments,
        sanity=sanity_tables,
        classes=MULTI_FIGURES,
    output:
        gallery=report(f"{RESULTS}/report/pseudo_label_gallery.png", caption="../report/gallery.rst",
                       category="2. Pseudo labels"),
        gallery_pdf=f"{RESULTS}/report/pseudo_label_gallery.pdf",
        markdown=f"{RESULTS}/report/report.md",
        index=f"{RESULTS}/report/index.html",
        quality=[report(html, caption="../report/quality.rst", category="3. Quality (demo)")
                 for html in quality_pages()],
    params:
        out=lambda wc, output: os.path.dirname(output.index),
    resources:
        **CPU_JOB,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/report.log",
    shell:
        "python -m pssl report --out {params.out} --stores {input.stores} --quality {input.quality}"
        " --figure3 {input.figure3} --sanity {input.sanity}"
        " --experiments {input.experiments} --class-figures {input.classes} > {log} 2>&1"


rule stage_report:
    input:
        REPORT_FILES,
