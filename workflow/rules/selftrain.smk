# Stage: self-training (Zhu et al.). Each teacher cell (a fine-tuned dataset x model x init x seed) labels its
# dataset's unlabelled pool in parts; a student from the same init trains on the real set + the pseudo-labelled
# pool (init <init>+st), or, as the control, on the real set duplicated (<init>+dup); select_lr and Table 3
# treat students as cells. Off while self_training.datasets is empty.


rule teacher_labels:
    input:
        selected=lambda wc: f"{cell_dir(wc)}/metrics.json",
        runs=lambda wc: cell_runs(wc, searched_lrs(wc)),
        weights=lambda wc: expand(f"{cell_dir(wc)}/lr{{lr}}/final.pt", lr=searched_lrs(wc)),
        data=demo_data_if_enabled,
    output:
        table=f"{RESULTS}/{PSEUDO_PART}/pseudo.parquet",
        centroids=f"{RESULTS}/{PSEUDO_PART}/centroids.parquet",
    wildcard_constraints:
        init=one_of(BASE_INITS),
    params:
        pool=lambda wc: pool_paths(wc.dataset),
        parts=len(POOL_PARTS),
        images=SELF_TRAINING["pool_images"],
        seed=config["seed"],
        out_dir=lambda wc, output: os.path.dirname(output.table),
        settings=teacher_flags,
        device=config["device"],
    threads: config["threads"]
    resources:
        **job_resources(config, "labels", cpus=config["threads"], gpus=1),
        runtime=runtime("teacher_labels"),
        requeue_margin_min=config["cluster"]["requeue_margin_min"],
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/{PSEUDO_PART}.log",
    benchmark:
        benchmark("teacher_labels")
    shell:
        "python -m pssl gpu-slots {resources.gpu_slots} --"
        " python -m pssl teacher-labels --selected {input.selected} --runs {input.runs} --dataset {wildcards.dataset}"
        " --pool {params.pool} --out-dir {params.out_dir} --part {wildcards.part} --parts {params.parts}"
        " --images {params.images} --seed {params.seed} {params.settings} --device {params.device}"
        " --threads {threads} --requeue-margin-min {resources.requeue_margin_min} > {log} 2>&1"


use rule finetune as self_train with:
    input:
        init=finetune_init,
        pseudo=lambda wc: teacher_tables(wc) if wc.data == "st" else [],
        data=demo_data_if_enabled,
    output:
        metrics=f"{RESULTS}/{STUDENT_RUN}/metrics.json",
        weights=f"{RESULTS}/{STUDENT_RUN}/final.pt",
    params:
        command="self-train",
        student=lambda wc, input: f" --pseudo {' '.join(input.pseudo)} "
        + settings_flags(student_settings(config, STUDENT_DATA[wc.data])),
    resources:  # a `with:` section replaces the rule's whole section
        **job_resources(config, "finetune", layout=FINETUNE_LAYOUT),
        runtime=runtime("self_train"),
        requeue_margin_min=config["cluster"]["requeue_margin_min"],
    log:
        f"{LOGS}/{STUDENT_RUN}.log",
    benchmark:
        benchmark("self_train")


if config["demo"]["enabled"]:  # the pools' hidden truth exists for synthetic data only

    rule selftrain_quality:
        input:
            tables=selftrain_tables,
            teachers=teacher_cells,
            demo=demo_data_if_enabled,
        output:
            table=f"{RESULTS}/report/selftrain_quality.csv",
            figure=f"{RESULTS}/report/selftrain_labels.png",
        params:
            truth=[f"{d}={DEMO_ROOT}/{DEMO_TRUTH}/{d}" for d in SELF_TRAINING["datasets"]],
        resources:
            **CPU_JOB,
        conda:
            CONDA_ENV
        log:
            f"{LOGS}/selftrain_quality.log",
        shell:
            "python -m pssl pseudo-quality --tables {input.tables} --truth {params.truth} --teachers {input.teachers}"
            " --out {output.table} --figure {output.figure} > {log} 2>&1"
