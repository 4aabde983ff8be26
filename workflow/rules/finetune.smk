# Stage: fine-tuning fan-out (dataset x model x init x lr), best lr per cell.


localrules:
    select_lr,


rule finetune:
    input:
        init=finetune_init,
        data=demo_data_if_enabled,
    output:
        metrics=f"{RESULTS}/finetune/{{dataset}}/{{model}}/{{init}}/lr{{lr}}/metrics.json",
        weights=f"{RESULTS}/finetune/{{dataset}}/{{model}}/{{init}}/lr{{lr}}/final.pt",
    params:
        launcher=FINETUNE_LAYOUT.launcher(),
        world=FINETUNE_LAYOUT.world,
        root=lambda wc: dataset_root(wc.dataset),
        head=lambda wc: PRETRAIN[wc.model]["head"],
        backbone=lambda wc: PRETRAIN[wc.model]["backbone"],
        out_dir=lambda wc, output: os.path.dirname(output.metrics),
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
        f"{LOGS}/finetune/{{dataset}}/{{model}}/{{init}}/lr{{lr}}.log",
    benchmark:
        benchmark("finetune")
    shell:
        "{params.launcher} -m pssl finetune --dataset {wildcards.dataset} --root {params.root}"
        " --head {params.head} --backbone {params.backbone} --init {wildcards.init} --init-from {input.init}"
        " --out-dir {params.out_dir} {params.settings} --device {params.device} --threads {threads}"
        " --expect-world {params.world} --requeue-margin-min {resources.requeue_margin_min} > {log} 2>&1"


rule select_lr:
    input:
        lambda wc: expand(f"{RESULTS}/finetune/{wc.dataset}/{wc.model}/{wc.init}/lr{{lr}}/metrics.json", lr=LRS),
    output:
        f"{RESULTS}/finetune/{{dataset}}/{{model}}/{{init}}/metrics.json",
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/finetune/{{dataset}}/{{model}}/{{init}}/select_lr.log",
    shell:
        "python -m pssl select-lr --runs {input} --out {output} > {log} 2>&1"


if config["demo"]["enabled"]:  # hidden object masks exist for synthetic data only

    rule eval_pretrain:
        input:
            models=pretrained_models,
            stores=explain_stores,
            index=f"{RESULTS}/index.parquet",
            demo=demo_data_if_enabled,
        output:
            f"{RESULTS}/report/pretrain_quality.csv",
        params:
            masks=f"{DEMO_ROOT}/imagenet/masks",
            device=config["device"],
        resources:
            **CPU_JOB,
        conda:
            CONDA_ENV
        log:
            f"{LOGS}/eval_pretrain.log",
        shell:
            "python -m pssl eval-pretrain --models {input.models} --stores {input.stores} --index {input.index}"
            " --masks {params.masks} --out {output} --device {params.device} > {log} 2>&1"


rule stage_finetune:
    input:
        finetune_results,


rule report:
    input:
        cells=finetune_results,
        stores=explain_stores,
        quality=quality_tables,
    output:
        # snakemake --report shows the HTML tables inline; categories are listed in this order
        html=report(f"{RESULTS}/report/table3.html", caption="../report/table3.rst", category="1. Table 3"),
        table=report(f"{RESULTS}/report/table3.csv", caption="../report/table3.rst", category="1. Table 3"),
        markdown=f"{RESULTS}/report/table3.md",
        gains=report(f"{RESULTS}/report/table3_gains.png", caption="../report/gains.rst", category="1. Table 3"),
        gains_svg=f"{RESULTS}/report/table3_gains.svg",
        gallery=report(f"{RESULTS}/report/pseudo_label_gallery.png", caption="../report/gallery.rst",
                       category="2. Pseudo labels"),
        gallery_pdf=f"{RESULTS}/report/pseudo_label_gallery.pdf",
        index=f"{RESULTS}/report/index.html",
        quality=[report(html, caption="../report/quality.rst", category="3. Quality (demo)")
                 for html in quality_pages()],
    params:
        titles=json.dumps(MODEL_TITLES),
        out=lambda wc, output: os.path.dirname(output.table),
    resources:
        **CPU_JOB,
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/report.log",
    shell:
        "python -m pssl report --cells {input.cells} --out {params.out} --titles {params.titles:q}"
        " --stores {input.stores} --quality {input.quality} > {log} 2>&1"


rule stage_report:
    input:
        REPORT_FILES,
